// A C ABI over fusednorm::cuda (include/fusednorm/cuda.h) for scripts/gpu_bench.py, which loads it with ctypes
// and passes torch tensors' data_ptr() and torch.cuda.current_stream().cuda_stream. Every function returns 0, or
// -1 with the fusednorm::Error message in `error` (NUL-terminated, truncated to error_size).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/cuda.h"

namespace {

using fusednorm::Epilogue;
using fusednorm::Layout;
using fusednorm::TensorView;

int report(const std::exception& e, char* error, int error_size) {
  if (error && error_size > 0) {
    const std::string text = e.what();
    const size_t n = std::min(text.size(), static_cast<size_t>(error_size - 1));
    std::memcpy(error, text.data(), n);
    error[n] = '\0';
  }
  return -1;
}

template <typename F>
int guarded(char* error, int error_size, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    return report(e, error, error_size);
  }
}

std::vector<int64_t> shape_of(const int64_t* shape, int ndim) { return {shape, shape + ndim}; }
TensorView tensor(float* p, const std::vector<int64_t>& shape, int nhwc) {
  return TensorView::with_layout(p, shape, nhwc ? Layout::nhwc : Layout::nchw);
}
std::optional<TensorView> maybe(float* p, const std::vector<int64_t>& shape, int nhwc) {
  if (!p) return std::nullopt;
  return tensor(p, shape, nhwc);
}
std::optional<TensorView> vec(float* p, int64_t n) {
  if (!p) return std::nullopt;
  return TensorView(p, {n});
}
Epilogue epilogue_of(int e) { return e == 1 ? Epilogue::relu : e == 2 ? Epilogue::add_relu : Epilogue::none; }

}  // namespace

extern "C" {

// 1 when the CUDA kernels can run here; otherwise 0 and the reason in `reason`.
int fusednorm_cuda_available(char* reason, int reason_size) {
  std::string why;
  const bool ok = fusednorm::cuda::available(&why);
  if (!ok) report(std::runtime_error(why), reason, reason_size);
  return ok ? 1 : 0;
}

// epilogue: 0 none, 1 relu, 2 add_relu (z given). training 0: evaluation with the running statistics.
int fusednorm_cuda_batch_norm_forward(float* x, float* y, float* z, float* weight, float* bias, float* running_mean,
                                      float* running_var, float* save_mean, float* save_invstd, const int64_t* shape,
                                      int ndim, int nhwc, int epilogue, int training, double eps, double momentum,
                                      void* stream, char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s = shape_of(shape, ndim);
    fusednorm::cuda::batch_norm_forward(
        {.input = tensor(x, s, nhwc),
         .output = tensor(y, s, nhwc),
         .weight = vec(weight, s[1]),
         .bias = vec(bias, s[1]),
         .running_mean = vec(running_mean, s[1]),
         .running_var = vec(running_var, s[1]),
         .save_mean = vec(save_mean, s[1]),
         .save_invstd = vec(save_invstd, s[1]),
         .residual = maybe(z, s, nhwc)},
        {.training = training != 0, .eps = eps, .momentum = momentum, .epilogue = epilogue_of(epilogue)}, stream);
  });
}

int fusednorm_cuda_batch_norm_backward(float* dy, float* x, float* dx, float* weight, float* save_mean,
                                       float* save_invstd, float* grad_weight, float* grad_bias, float* y, float* dz,
                                       const int64_t* shape, int ndim, int nhwc, int epilogue, void* stream,
                                       char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s = shape_of(shape, ndim);
    fusednorm::cuda::batch_norm_backward({.grad_output = tensor(dy, s, nhwc),
                                          .input = tensor(x, s, nhwc),
                                          .grad_input = tensor(dx, s, nhwc),
                                          .weight = vec(weight, s[1]),
                                          .save_mean = vec(save_mean, s[1]),
                                          .save_invstd = vec(save_invstd, s[1]),
                                          .grad_weight = vec(grad_weight, s[1]),
                                          .grad_bias = vec(grad_bias, s[1]),
                                          .output = maybe(y, s, nhwc),
                                          .grad_residual = maybe(dz, s, nhwc)},
                                         {.training = true, .epilogue = epilogue_of(epilogue)}, stream);
  });
}

int fusednorm_cuda_group_norm_forward(float* x, float* y, float* weight, float* bias, float* save_mean,
                                      float* save_invstd, const int64_t* shape, int ndim, int nhwc, int64_t groups,
                                      double eps, void* stream, char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s = shape_of(shape, ndim);
    fusednorm::cuda::group_norm_forward({.input = tensor(x, s, nhwc),
                                         .output = tensor(y, s, nhwc),
                                         .weight = vec(weight, s[1]),
                                         .bias = vec(bias, s[1]),
                                         .save_mean = vec(save_mean, s[0] * groups),
                                         .save_invstd = vec(save_invstd, s[0] * groups)},
                                        {.num_groups = groups, .eps = eps}, stream);
  });
}

int fusednorm_cuda_group_norm_backward(float* dy, float* x, float* dx, float* weight, float* save_mean,
                                       float* save_invstd, float* grad_weight, float* grad_bias, const int64_t* shape,
                                       int ndim, int nhwc, int64_t groups, void* stream, char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s = shape_of(shape, ndim);
    fusednorm::cuda::group_norm_backward({.grad_output = tensor(dy, s, nhwc),
                                          .input = tensor(x, s, nhwc),
                                          .grad_input = tensor(dx, s, nhwc),
                                          .save_mean = TensorView(save_mean, {s[0] * groups}),
                                          .save_invstd = TensorView(save_invstd, {s[0] * groups}),
                                          .weight = vec(weight, s[1]),
                                          .grad_weight = vec(grad_weight, s[1]),
                                          .grad_bias = vec(grad_bias, s[1])},
                                         {.num_groups = groups}, stream);
  });
}

// rms: 1 for RMSNorm (bias and save_mean ignored). x is (rows, features), row-major.
int fusednorm_cuda_rows_norm_forward(int rms, float* x, float* y, float* weight, float* bias, float* save_mean,
                                     float* save_invstd, int64_t rows, int64_t features, double eps, void* stream,
                                     char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s{rows, features}, normalized{features};
    if (rms) {
      fusednorm::cuda::rms_norm_forward({.input = TensorView(x, s),
                                         .output = TensorView(y, s),
                                         .weight = vec(weight, features),
                                         .save_invstd = vec(save_invstd, rows)},
                                        {.normalized_shape = normalized, .eps = eps}, stream);
    } else {
      fusednorm::cuda::layer_norm_forward({.input = TensorView(x, s),
                                           .output = TensorView(y, s),
                                           .weight = vec(weight, features),
                                           .bias = vec(bias, features),
                                           .save_mean = vec(save_mean, rows),
                                           .save_invstd = vec(save_invstd, rows)},
                                          {.normalized_shape = normalized, .eps = eps}, stream);
    }
  });
}

int fusednorm_cuda_rows_norm_backward(int rms, float* dy, float* x, float* dx, float* weight, float* save_mean,
                                      float* save_invstd, float* grad_weight, float* grad_bias, int64_t rows,
                                      int64_t features, void* stream, char* error, int error_size) {
  return guarded(error, error_size, [&] {
    const std::vector<int64_t> s{rows, features}, normalized{features};
    if (rms) {
      fusednorm::cuda::rms_norm_backward({.grad_output = TensorView(dy, s),
                                          .input = TensorView(x, s),
                                          .grad_input = TensorView(dx, s),
                                          .save_invstd = TensorView(save_invstd, {rows}),
                                          .weight = vec(weight, features),
                                          .grad_weight = vec(grad_weight, features)},
                                         {.normalized_shape = normalized}, stream);
    } else {
      fusednorm::cuda::layer_norm_backward({.grad_output = TensorView(dy, s),
                                            .input = TensorView(x, s),
                                            .grad_input = TensorView(dx, s),
                                            .save_mean = TensorView(save_mean, {rows}),
                                            .save_invstd = TensorView(save_invstd, {rows}),
                                            .weight = vec(weight, features),
                                            .grad_weight = vec(grad_weight, features),
                                            .grad_bias = vec(grad_bias, features)},
                                           {.normalized_shape = normalized}, stream);
    }
  });
}

}  // extern "C"
