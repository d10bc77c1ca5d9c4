#include "runtime/norm_kernels.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "runtime/dispatch.h"
#include "runtime/halide_call.h"

namespace fusednorm::detail {

namespace {

// Memory the kernels need where the caller gave none. Taken from a per-thread pool and given back when the
// Scratch ends (scopes nest): no allocation once the pool has grown to a call's needs.
class Scratch {
 public:
  Scratch() : first_(pool().used) {}
  ~Scratch() { pool().used = first_; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  float* take(int64_t size) {
    Pool& p = pool();
    if (p.used == p.buffers.size()) p.buffers.emplace_back();
    std::vector<float>& buffer = p.buffers[p.used++];
    if (buffer.size() < static_cast<size_t>(size)) buffer.resize(static_cast<size_t>(size));
    return buffer.data();
  }
  float* filled(int64_t size, float value) {
    float* data = take(size);
    std::fill_n(data, size, value);
    return data;
  }
  // The caller's memory, or scratch where the argument is absent.
  float* data_or_take(const std::optional<TensorView>& t, int64_t size) { return t ? t->data() : take(size); }
  const float* data_or_fill(const std::optional<TensorView>& t, int64_t size, float value) {
    return t ? t->data() : filled(size, value);
  }

 private:
  // Buffers [0, used) are in use; moving a vector keeps its data where it is.
  struct Pool {
    std::vector<std::vector<float>> buffers;
    size_t used = 0;
  };
  static Pool& pool() {
    thread_local Pool p;
    return p;
  }
  size_t first_;
};

int64_t elements(const Geometry& g) { return g.batch * g.channels * g.spatial; }

HalideTensor vector_view(const float* data, int64_t size) { return HalideTensor(data, {{size, 1}}); }

// (G, B), G innermost: a dense (B, G) array in row-major terms.
HalideTensor statistics_view(const float* data, int64_t groups, int64_t blocks) {
  return HalideTensor(data, {{groups, 1}, {blocks, groups}});
}

// What every kernel of the norm takes besides its direction's tensors: the epilogue's tensors where given, and
// the norm's scalars (bound by name: a kernel without them ignores them).
void bind_common(KernelArgs& args, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  args.bind("x", g.view(t.input.data()));
  for (auto [name, view] : {std::pair{"z", &t.residual}, {"dz", &t.grad_residual}}) {
    if (*view) args.bind(name, g.view((*view)->data()));
  }
  args.bind_scalar("eps", static_cast<float>(s.eps));
  args.bind_scalar("groups", static_cast<int32_t>(s.groups));
}

// weight, and bias (except RMSNorm's): the caller's, or the identity (1, 0) for the one absent.
void bind_affine(KernelArgs& args, Scratch& scratch, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  const int64_t size = g.parameters();
  args.bind("weight", vector_view(scratch.data_or_fill(t.weight, size, 1.0f), size));
  if (s.norm != Norm::rms) args.bind("bias", vector_view(scratch.data_or_fill(t.bias, size, 0.0f), size));
}

}  // namespace

namespace {
thread_local const DeviceRunner* device_runner = nullptr;
}  // namespace

DeviceRunnerScope::DeviceRunnerScope(const DeviceRunner& runner) : previous_(device_runner) { device_runner = &runner; }
DeviceRunnerScope::~DeviceRunnerScope() { device_runner = previous_; }

void run_forward_training(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  check_forward_disjoint(function, t, /*commits_running=*/true);
  if (device_runner) return device_runner->forward_training(function, t, s, g);  // fusednorm::cuda (cuda.h)
  const bool affine = t.weight || t.bias;
  const KernelVariant& variant =
      select_variant({function, Direction::forward_training, g.layout, affine, s.norm, s.epilogue, elements(g)});
  const StatisticsShape stats = statistics_shape(s, g);
  const int64_t channels = g.channels;

  Scratch scratch;
  KernelArgs args;
  bind_common(args, t, s, g);
  args.bind("y", g.view(t.output->data()));
  if (affine) bind_affine(args, scratch, t, s, g);
  float* invstd = scratch.data_or_take(t.save_invstd, stats.count());
  if (s.norm == Norm::rms) {
    args.bind("saved_statistics", statistics_view(invstd, stats.groups, stats.blocks));
  } else {
    args.bind("saved_statistics.0",
              statistics_view(scratch.data_or_take(t.save_mean, stats.count()), stats.groups, stats.blocks));
    args.bind("saved_statistics.1", statistics_view(invstd, stats.groups, stats.blocks));
  }
  // The running statistics, where the norm has them: the kernel writes the new ones apart (Halide cannot alias an
  // input as an output); they replace the caller's below.
  float* new_running_mean = scratch.take(channels);
  float* new_running_var = scratch.take(channels);
  const float* no_running = t.running_mean ? nullptr : scratch.filled(channels, 0.0f);
  args.bind("running_mean", vector_view(t.running_mean ? t.running_mean->data() : no_running, channels));
  args.bind("running_var", vector_view(t.running_var ? t.running_var->data() : no_running, channels));
  args.bind_scalar("momentum", s.momentum);
  args.bind_scalar("running_var_correction", s.running_var_correction);
  args.bind("running_statistics.0", vector_view(new_running_mean, channels));
  args.bind("running_statistics.1", vector_view(new_running_var, channels));
  call_selected(args, variant, function);

  // The kernel succeeded: only now is the caller's state changed.
  if (t.running_mean) {
    std::copy_n(new_running_mean, channels, t.running_mean->data());
    std::copy_n(new_running_var, channels, t.running_var->data());
  }
}

void run_forward_inference(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  check_forward_disjoint(function, t, /*commits_running=*/false);
  if (device_runner) return device_runner->forward_inference(function, t, s, g);
  const bool affine = t.weight || t.bias;
  const KernelVariant& variant =
      select_variant({function, Direction::forward_inference, g.layout, affine, s.norm, s.epilogue, elements(g)});
  Scratch scratch;
  KernelArgs args;
  bind_common(args, t, s, g);
  args.bind("y", g.view(t.output->data()));
  if (affine) bind_affine(args, scratch, t, s, g);
  args.bind("running_mean", vector_view(t.running_mean->data(), g.channels));
  args.bind("running_var", vector_view(t.running_var->data(), g.channels));
  call_selected(args, variant, function);
}

void run_backward(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  check_backward_disjoint(function, t);
  if (device_runner) return device_runner->backward(function, t, s, g);
  // bias is given only where the backward reads it (SiLU recomputes v = xhat * weight + bias).
  const bool affine = t.weight || t.bias || t.grad_weight || t.grad_bias;
  const KernelVariant& variant =
      select_variant({function, Direction::backward, g.layout, affine, s.norm, s.epilogue, elements(g)});
  const StatisticsShape stats = statistics_shape(s, g);

  Scratch scratch;
  KernelArgs args;
  bind_common(args, t, s, g);
  args.bind("dy", g.view(t.grad_output->data()));
  args.bind("dx", g.view(t.grad_input->data()));
  if (t.output) args.bind("y", g.view(t.output->data()));
  args.bind_scalar("training", s.training);
  if (s.training) {
    if (t.save_mean) args.bind("mean", statistics_view(t.save_mean->data(), stats.groups, stats.blocks));
    args.bind("invstd", statistics_view(t.save_invstd->data(), stats.groups, stats.blocks));
  } else {
    // Evaluation (the batch kernels): the running statistics are the constants the forward normalized with.
    float* invstd = scratch.take(g.channels);
    for (int64_t c = 0; c < g.channels; c++) {
      invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(t.running_var->data()[c]) + s.eps));
    }
    args.bind("mean", statistics_view(t.running_mean->data(), g.channels, 1));
    args.bind("invstd", statistics_view(invstd, g.channels, 1));
  }
  if (affine) {
    bind_affine(args, scratch, t, s, g);
    const int64_t size = g.parameters();
    float* grad_weight = scratch.data_or_take(t.grad_weight, size);
    if (s.norm == Norm::rms) {
      args.bind("param_grads", vector_view(grad_weight, size));
    } else {
      args.bind("param_grads.0", vector_view(grad_weight, size));
      args.bind("param_grads.1", vector_view(scratch.data_or_take(t.grad_bias, size), size));
    }
  }
  call_selected(args, variant, function);
}

}  // namespace fusednorm::detail
