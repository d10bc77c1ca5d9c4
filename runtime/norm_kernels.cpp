#include "runtime/norm_kernels.h"

#include <cmath>
#include <limits>
#include <string_view>

#include "runtime/bind.h"
#include "runtime/plan.h"

namespace fusednorm::detail {

namespace {

PlanRequest request(const char* function, Direction direction, const KernelSettings& s, const Geometry& g,
                    bool affine) {
  return {function, s.norm, direction, g.layout, s.epilogue, affine, DType::float32, g.elements()};
}

// The caller's memory, or scratch where the argument is absent.
float* data_or_scratch(const TensorView* t, BackendContext& backend, int64_t size) {
  return t ? t->data() : backend.scratch(size);
}

// x, y, dy, dx, z, dz as the kernel sees them. BatchNorm's statistics reduce N and S alike, and in NHWC each
// sample's rows follow the previous sample's: the hand-scheduled CPU kernels take the batch as one sample of
// N x S rows, so their float32 chunks of rows span samples and they keep no (channel, sample) sums
// (BatchNorm1d [8192, 1024]: 16 bytes per element of x otherwise; docs/PERFORMANCE.md). Not for the
// autoscheduled kernels, planned for a batch of samples, nor past 2^31 - 1 elements, what one sample may hold.
std::array<Dim, 3> kernel_dims(const Plan& plan, const KernelSettings& s, const Geometry& g) {
  const bool one_sample = s.norm == Norm::batch && g.layout == Layout::nhwc && !g.rows &&
                          plan.backend == Backend::cpu && !plan.tuned &&
                          std::string_view(plan.untuned->schedule) == "hand" &&
                          g.elements() <= std::numeric_limits<int32_t>::max();
  if (!one_sample) return g.dims();
  return {{{g.channels, 1}, {g.count(), g.channels}, {1, g.channels * g.spatial}}};
}

// What every kernel of the norm takes besides its direction's tensors: the epilogue's tensors where given, and
// the norm's scalars (bound by slot: a kernel without them ignores them).
void bind_common(Binder& args, const TensorRefs& t, const KernelSettings& s, std::span<const Dim> dims) {
  args.tensor(Arg::x, t.input->data(), dims);
  if (t.residual) args.tensor(Arg::z, t.residual->data(), dims);
  if (t.grad_residual) args.tensor(Arg::dz, t.grad_residual->data(), dims);
  args.scalar(Arg::eps, static_cast<float>(s.eps));
  args.scalar(Arg::groups, static_cast<int32_t>(s.groups));
}

// weight, and bias (except RMSNorm's): the caller's, or the identity (1, 0) for the one absent.
void bind_affine(Binder& args, BackendContext& backend, const TensorRefs& t, const KernelSettings& s,
                 const Geometry& g) {
  const int64_t size = g.parameters();
  args.vector(Arg::weight, t.weight ? t.weight->data() : backend.filled(size, 1.0f), size);
  if (s.norm != Norm::rms) args.vector(Arg::bias, t.bias ? t.bias->data() : backend.filled(size, 0.0f), size);
}

}  // namespace

void run_forward_training(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                          BackendContext& backend) {
  check_forward_disjoint(function, t, /*commits_running=*/true);
  backend.check(function, Direction::forward_training, t, s, g);
  const bool affine = t.weight || t.bias;
  const Plan& plan = plan_call(request(function, Direction::forward_training, s, g, affine), backend);
  const StatisticsShape stats = statistics_shape(s, g);
  const int64_t channels = g.channels;

  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  args.tensor(Arg::y, t.output->data(), dims);
  if (affine) bind_affine(args, backend, t, s, g);
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
  const Plan& plan = plan_call(request(function, Direction::forward_inference, s, g, affine), backend);
  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  args.tensor(Arg::y, t.output->data(), dims);
  if (affine) bind_affine(args, backend, t, s, g);
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
  const Plan& plan = plan_call(request(function, Direction::backward, s, g, affine), backend);
  const StatisticsShape stats = statistics_shape(s, g);

  const std::array<Dim, 3> dims = kernel_dims(plan, s, g);
  Binder args(backend);
  bind_common(args, t, s, dims);
  args.tensor(Arg::dy, t.grad_output->data(), dims);
  args.tensor(Arg::dx, t.grad_input->data(), dims);
  if (t.output) args.tensor(Arg::y, t.output->data(), dims);
  args.scalar(Arg::training, s.training);
  if (s.training) {
    if (t.save_mean) args.statistics(Arg::mean, t.save_mean->data(), stats.groups, stats.blocks);
    args.statistics(Arg::invstd, t.save_invstd->data(), stats.groups, stats.blocks);
  } else {
    // Evaluation (the batch kernels, on the CPU: the backends' check refuses it elsewhere): the running
    // statistics are the constants the forward normalized with.
    float* invstd = backend.scratch(g.channels);
    for (int64_t c = 0; c < g.channels; c++) {
      invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(t.running_var->data()[c]) + s.eps));
    }
    args.statistics(Arg::mean, t.running_mean->data(), g.channels, 1);
    args.statistics(Arg::invstd, invstd, g.channels, 1);
  }
  if (affine) {
    bind_affine(args, backend, t, s, g);
    const int64_t size = g.parameters();
    args.vector(Arg::grad_weight, data_or_scratch(t.grad_weight, backend, size), size);
    if (s.norm != Norm::rms) args.vector(Arg::grad_bias, data_or_scratch(t.grad_bias, backend, size), size);
  }
  run_plan(plan, args, g.sizes);
}

}  // namespace fusednorm::detail
