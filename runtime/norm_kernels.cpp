#include "runtime/norm_kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string_view>
#include <type_traits>

#include "runtime/bind.h"
#include "runtime/plan.h"

namespace fusednorm::detail {

namespace {

PlanRequest request(const char* function, Direction direction, const KernelSettings& s, const Geometry& g,
                    bool affine, DType dtype) {
  return {function, s.norm, direction, g.layout, s.epilogue, affine, dtype, g.elements()};
}

// 16-bit values widened to float32 into `to`, and float32 rounded (to nearest even) into 16 bits.
template <typename Half>
const float* widened(const Half* from, float* to, int64_t n) {
  for (int64_t i = 0; i < n; i++) to[i] = to_float(from[i]);
  return to;
}
template <typename Half>
void narrowed(const float* from, Half* to, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    if constexpr (std::is_same_v<Half, bfloat16>) to[i] = to_bfloat16(from[i]);
    else to[i] = to_float16(from[i]);
  }
}

// The caller's memory, or scratch where the argument is absent.
float* data_or_scratch(const TensorView* t, BackendContext& backend, int64_t size) {
  return t ? t->data() : backend.scratch(size);
}

// x, y, dy, dx, z, dz as the kernel sees them. BatchNorm's statistics reduce N and S alike, and in NHWC each
// sample's rows follow the previous sample's: where a sample is shorter than the NHWC kernels' float32 chunk of 64
// rows, the hand-scheduled CPU kernels take the batch as one sample of N x S rows, so their chunks span samples and
// they keep no (channel, sample) sums (BatchNorm1d [8192, 1024]: 16 bytes per element of x otherwise;
// docs/PERFORMANCE.md). Longer samples keep the batch: on the ResNet-50 shapes of 14 x 14 and more the same kernel
// took 0.83-0.96x the time with the batch than with one sample in float32, 0.71-0.81x in bfloat16 (paired in one
// process); at 7 x 7 0.99x forward and 1.06x backward, so one sample stays. Not for the autoscheduled kernels,
// planned for a batch of samples, nor past 2^31 - 1 elements, what one sample may hold.
std::array<Dim, 3> kernel_dims(const Plan& plan, const KernelSettings& s, const Geometry& g) {
  const bool one_sample = s.norm == Norm::batch && g.layout == Layout::nhwc && !g.rows &&
                          g.spatial < kNhwcSumChunkRows &&
                          plan.backend == Backend::cpu && !plan.tuned &&
                          std::string_view(plan.untuned->schedule) == "hand" &&
                          g.elements() <= std::numeric_limits<int32_t>::max();
  if (!one_sample) return g.dims();
  return {{{g.channels, 1}, {g.count(), g.channels}, {1, g.channels * g.spatial}}};
}

// x and the tensors like it, in x's dtype (checked), where given.
void bind_like_input(Binder& args, Arg arg, const TensorView* t, std::span<const Dim> dims) {
  if (t) args.tensor(arg, t->data_ptr(), t->dtype(), dims);
}

// A parameter as the kernels take it, float32: the caller's, widened into scratch where it is 16-bit (a few
// thousand values at most, not worth a kernel per parameter dtype), or `identity` where absent.
const float* parameter(const TensorView* t, BackendContext& backend, int64_t size, float identity) {
  if (!t) return backend.filled(size, identity);
  switch (t->dtype()) {
    case DType::float32: return t->data();
    case DType::bfloat16: return widened(t->data<bfloat16>(), backend.scratch(size), size);
    case DType::float16: return widened(t->data<float16>(), backend.scratch(size), size);
  }
  return nullptr;
}

// A parameter gradient's float32 values: the caller's memory where it is float32, else scratch that
// commit_gradient() rounds into the caller's after the kernel.
float* gradient(const TensorView* t, BackendContext& backend, int64_t size) {
  return t && t->dtype() == DType::float32 ? t->data() : backend.scratch(size);
}
void commit_gradient(const TensorView* t, const float* values) {
  if (!t) return;
  switch (t->dtype()) {
    case DType::float32: return;  // written in place
    case DType::bfloat16: return narrowed(values, t->data<bfloat16>(), t->numel());
    case DType::float16: return narrowed(values, t->data<float16>(), t->numel());
  }
}

// What every kernel of the norm takes besides its direction's tensors: the epilogue's tensors where given, and
// the norm's scalars (bound by slot: a kernel without them ignores them).
void bind_common(Binder& args, const TensorRefs& t, const KernelSettings& s, std::span<const Dim> dims) {
  bind_like_input(args, Arg::x, t.input, dims);
  bind_like_input(args, Arg::z, t.residual, dims);
  bind_like_input(args, Arg::dz, t.grad_residual, dims);
  args.scalar(Arg::eps, static_cast<float>(s.eps));
  args.scalar(Arg::groups, static_cast<int32_t>(s.groups));
}

// weight, and bias (except RMSNorm's): the caller's, or the identity (1, 0) for the one absent.
void bind_affine(Binder& args, BackendContext& backend, const TensorRefs& t, const KernelSettings& s,
                 const Geometry& g) {
  const int64_t size = g.parameters();
  args.vector(Arg::weight, parameter(t.weight, backend, size, 1.0f), size);
  if (s.norm != Norm::rms) args.vector(Arg::bias, parameter(t.bias, backend, size, 0.0f), size);
}

}  // namespace

void run_forward_training(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                          BackendContext& backend) {
  check_forward_disjoint(function, t, /*commits_running=*/true);
  backend.check(function, Direction::forward_training, t, s, g);
  const bool affine = t.weight || t.bias;
  const Plan& plan =
      plan_call(request(function, Direction::forward_training, s, g, affine, t.input->dtype()), backend);
  const StatisticsShape stats = statistics_shape(s, g);
  const int64_t channels = g.channels;

  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  bind_like_input(args, Arg::y, t.output, dims);
  if (plan.affine_kernel) bind_affine(args, backend, t, s, g);
  const float* invstd = data_or_scratch(t.save_invstd, backend, stats.count());
  args.statistics(Arg::saved_invstd, invstd, stats.groups, stats.blocks);
  if (s.norm != Norm::rms) {
    args.statistics(Arg::saved_mean, data_or_scratch(t.save_mean, backend, stats.count()), stats.groups,
                    stats.blocks);
  }
  // The running statistics, where the norm has them: the kernel writes the new ones apart (Halide cannot alias an
  // input as an output); they replace the caller's below.
  float* new_running_mean = backend.scratch(channels);
  float* new_running_var = backend.scratch(channels);
  const float* no_running = t.running_mean ? nullptr : backend.filled(channels, 0.0f);
  args.vector(Arg::running_mean, t.running_mean ? t.running_mean->data() : no_running, channels);
  args.vector(Arg::running_var, t.running_var ? t.running_var->data() : no_running, channels);
  args.scalar(Arg::momentum, s.momentum);
  args.scalar(Arg::running_var_correction, s.running_var_correction);
  args.vector(Arg::new_running_mean, new_running_mean, channels);
  args.vector(Arg::new_running_var, new_running_var, channels);
  run_plan(plan, args, g.sizes);

  // The kernel succeeded: only now is the caller's state changed.
  if (t.running_mean) {
    backend.commit(t.running_mean->data(), new_running_mean, channels);
    backend.commit(t.running_var->data(), new_running_var, channels);
  }
}

void run_forward_inference(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                           BackendContext& backend) {
  check_forward_disjoint(function, t, /*commits_running=*/false);
  backend.check(function, Direction::forward_inference, t, s, g);
  const bool affine = t.weight || t.bias;
  const Plan& plan =
      plan_call(request(function, Direction::forward_inference, s, g, affine, t.input->dtype()), backend);
  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  bind_like_input(args, Arg::y, t.output, dims);
  if (plan.affine_kernel) bind_affine(args, backend, t, s, g);
  args.vector(Arg::running_mean, t.running_mean->data(), g.channels);
  args.vector(Arg::running_var, t.running_var->data(), g.channels);
  run_plan(plan, args, g.sizes);
}

void run_backward(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                  BackendContext& backend) {
  check_backward_disjoint(function, t);
  backend.check(function, Direction::backward, t, s, g);
  // bias is given only where the backward reads it (SiLU recomputes v = xhat * weight + bias).
  const bool affine = t.weight || t.bias || t.grad_weight || t.grad_bias;
  const Plan& plan = plan_call(request(function, Direction::backward, s, g, affine, t.input->dtype()), backend);
  const StatisticsShape stats = statistics_shape(s, g);

  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  bind_like_input(args, Arg::dy, t.grad_output, dims);
  bind_like_input(args, Arg::dx, t.grad_input, dims);
  bind_like_input(args, Arg::y, t.output, dims);
  args.scalar(Arg::training, s.training);
  if (s.training) {
    if (t.save_mean) args.statistics(Arg::mean, t.save_mean->data(), stats.groups, stats.blocks);
    args.statistics(Arg::invstd, t.save_invstd->data(), stats.groups, stats.blocks);
  } else {
    // Evaluation (the batch kernels): the running statistics are the constants the forward normalized with, invstd
    // from the running variance on the host, through the backend's copies (device memory on CUDA), in pieces of a
    // buffer on the stack (a layer step allocates nothing).
    float* invstd = backend.scratch(g.channels);
    std::array<float, 1024> piece;
    for (int64_t first = 0; first < g.channels; first += static_cast<int64_t>(piece.size())) {
      const int64_t n = std::min(static_cast<int64_t>(piece.size()), g.channels - first);
      const int64_t bytes = n * static_cast<int64_t>(sizeof(float));
      backend.to_host(piece.data(), t.running_var->data() + first, bytes);
      for (int64_t c = 0; c < n; c++) {
        piece[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(piece[c]) + s.eps));
      }
      backend.to_device(invstd + first, piece.data(), bytes);
    }
    args.statistics(Arg::mean, t.running_mean->data(), g.channels, 1);
    args.statistics(Arg::invstd, invstd, g.channels, 1);
  }
  float *grad_weight = nullptr, *grad_bias = nullptr;
  if (plan.affine_kernel) {
    bind_affine(args, backend, t, s, g);
    const int64_t size = g.parameters();
    grad_weight = gradient(t.grad_weight, backend, size);
    args.vector(Arg::grad_weight, grad_weight, size);
    if (s.norm != Norm::rms) {
      grad_bias = gradient(t.grad_bias, backend, size);
      args.vector(Arg::grad_bias, grad_bias, size);
    }
  }
  run_plan(plan, args, g.sizes);
  commit_gradient(t.grad_weight, grad_weight);
  commit_gradient(t.grad_bias, grad_bias);
}

void run_statistics(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                    float* partial, BackendContext& backend) {
  backend.check(function, Direction::statistics, t, s, g);
  KernelSettings plain = s;
  plain.epilogue = Epilogue::none;  // the statistics of x alone
  const Plan& plan = plan_call(request(function, Direction::statistics, plain, g, false, t.input->dtype()), backend);
  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_like_input(args, Arg::x, t.input, dims);
  args.vector(Arg::partial_shift, partial, g.channels);
  args.vector(Arg::partial_mean, partial + g.channels, g.channels);
  args.vector(Arg::partial_var, partial + 2 * g.channels, g.channels);
  run_plan(plan, args, g.sizes);
}

void run_backward_reduce(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                         const float* mean, const float* invstd, float* sum_g_xhat, float* sum_g,
                         BackendContext& backend) {
  backend.check(function, Direction::backward_reduce, t, s, g);
  const Plan& plan =
      plan_call(request(function, Direction::backward_reduce, s, g, true, t.input->dtype()), backend);
  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_like_input(args, Arg::x, t.input, dims);
  bind_like_input(args, Arg::dy, t.grad_output, dims);
  bind_like_input(args, Arg::y, t.output, dims);
  args.statistics(Arg::mean, mean, g.channels, 1);
  args.statistics(Arg::invstd, invstd, g.channels, 1);
  args.vector(Arg::grad_weight, sum_g_xhat, g.channels);
  args.vector(Arg::grad_bias, sum_g, g.channels);
  run_plan(plan, args, g.sizes);
}

void run_backward_elementwise(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                              const float* mean, const float* invstd, const float* h_mean, const float* h_xhat_mean,
                              BackendContext& backend) {
  check_backward_disjoint(function, t);
  backend.check(function, Direction::backward_elementwise, t, s, g);
  const Plan& plan =
      plan_call(request(function, Direction::backward_elementwise, s, g, true, t.input->dtype()), backend);
  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  bind_like_input(args, Arg::dy, t.grad_output, dims);
  bind_like_input(args, Arg::dx, t.grad_input, dims);
  bind_like_input(args, Arg::y, t.output, dims);
  args.statistics(Arg::mean, mean, g.channels, 1);
  args.statistics(Arg::invstd, invstd, g.channels, 1);
  args.statistics(Arg::h_mean, h_mean, g.channels, 1);
  args.statistics(Arg::h_xhat_mean, h_xhat_mean, g.channels, 1);
  bind_affine(args, backend, t, s, g);
  run_plan(plan, args, g.sizes);
}

}  // namespace fusednorm::detail
