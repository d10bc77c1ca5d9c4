// The functional LayerNorm and RMSNorm entry points. The kernels see the input as rows: (D, 1, R) with D the
// elements of normalized_shape and R the product of the leading dimensions (docs/KERNELS.md), so the input must
// be dense row-major; the statistics are (1, R) and the parameters follow the D elements of a row.
#include "fusednorm/layer_norm.h"

#include <cfloat>

#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm {

namespace {

template <typename Tensors>
void forward(const char* function, Norm norm, const Tensors& t, const std::vector<int64_t>& normalized_shape,
             double eps) {
  const detail::CallTensors all = detail::tensors_of(t);
  const detail::Geometry g = detail::check_rows_call(function, all, normalized_shape);
  detail::check_eps(function, eps);
  detail::run_forward_training(function, all, {.norm = norm, .eps = eps}, g);
}

template <typename Tensors>
void backward(const char* function, Norm norm, const Tensors& t, const std::vector<int64_t>& normalized_shape) {
  const detail::CallTensors all = detail::tensors_of(t);
  const detail::Geometry g = detail::check_rows_call(function, all, normalized_shape);
  detail::run_backward(function, all, {.norm = norm}, g);
}

// PyTorch's rms_norm with eps=None: torch.finfo(torch.float32).eps.
double rms_eps(const RMSNormOptions& options) { return options.eps ? *options.eps : double{FLT_EPSILON}; }

}  // namespace

void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& options) {
  forward("layer_norm", Norm::layer, t, options.normalized_shape, options.eps);
}

void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& options) {
  backward("layer_norm", Norm::layer, t, options.normalized_shape);
}

void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& options) {
  forward("rms_norm", Norm::rms, t, options.normalized_shape, rms_eps(options));
}

void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& options) {
  backward("rms_norm", Norm::rms, t, options.normalized_shape);
}

}  // namespace fusednorm
