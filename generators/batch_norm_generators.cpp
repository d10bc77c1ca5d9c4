// Generator registration for BatchNorm: inputs, outputs and parameters. The math is in
// batch_norm_algorithm.h, the loops in schedule_cpu.h. Generator parameters (layout, affine) select the
// variant; the build instantiates every variant from them (generators/CMakeLists.txt).
#include "Halide.h"
#include "batch_norm_algorithm.h"
#include "schedule_cpu.h"

namespace fusednorm {
namespace {

using namespace Halide;

// Shared parameters and helpers of the three BatchNorm generators.
template <typename T>
class BatchNormGenerator : public Generator<T> {
 public:
  GeneratorParam<Layout> layout{"layout", Layout::nchw, layout_names};
  GeneratorParam<bool> affine{"affine", true};

 protected:
  NormSpec spec() const { return NormSpec{layout, affine}; }

  // x is (s, c, n) or (c, s, n) in storage order; returns {spatial, channels, batch} extents.
  std::tuple<Expr, Expr, Expr> extents(const GeneratorInput<Buffer<float, 3>>& x) const {
    int c_dim = spec().layout == Layout::nchw ? 1 : 0;
    return {x.dim(1 - c_dim).extent(), x.dim(c_dim).extent(), x.dim(2).extent()};
  }

  // gamma or beta: the input when affine, otherwise the identity value.
  Func per_channel_or(GeneratorInput<Buffer<float, 1>>* input, float identity, const char* name) const {
    if (input) return *input;
    Func f(name);
    f(axes.c) = identity;
    return f;
  }

  CpuScheduleContext cpu_context(const GeneratorInput<Buffer<float, 3>>& x) const {
    auto [spatial, channels, batch] = extents(x);
    return {axes, spatial, channels, batch, this->natural_vector_size(Float(32))};
  }

  void estimate_tensor(GeneratorInput<Buffer<float, 3>>& x) {
    // ResNet-50 at batch 32, 256x56x56: what the autoschedulers plan for.
    if (spec().layout == Layout::nchw) x.set_estimates({{0, 56 * 56}, {0, 256}, {0, 32}});
    else x.set_estimates({{0, 256}, {0, 56 * 56}, {0, 32}});
  }
  void estimate_tensor(GeneratorOutput<Buffer<float, 3>>& y) {
    if (spec().layout == Layout::nchw) y.set_estimates({{0, 56 * 56}, {0, 256}, {0, 32}});
    else y.set_estimates({{0, 256}, {0, 56 * 56}, {0, 32}});
  }

  Axes axes;
};

class BatchNormForwardTraining : public BatchNormGenerator<BatchNormForwardTraining> {
 public:
  Input<Buffer<float, 3>> x{"x"};
  Input<Buffer<float, 1>> running_mean{"running_mean"};
  Input<Buffer<float, 1>> running_var{"running_var"};
  Input<float> momentum{"momentum"};
  Input<float> eps{"eps"};
  // count / (count - 1) for PyTorch's unbiased running variance, 1 for ONNX's biased one.
  Input<float> running_var_correction{"running_var_correction"};
  Output<Buffer<float, 3>> y{"y"};
  // Per channel: {save_mean, save_invstd, new running_mean, new running_var}. Separate buffers in the AOT
  // call; new running statistics are outputs because Halide cannot alias an input as an output.
  Output<Func> channel_outputs{"channel_outputs", {Float(32), Float(32), Float(32), Float(32)}, 1};
  Input<Buffer<float, 1>>* weight = nullptr;
  Input<Buffer<float, 1>>* bias = nullptr;

  void configure() {
    if (affine) {
      weight = add_input<Buffer<float, 1>>("weight");
      bias = add_input<Buffer<float, 1>>("bias");
    }
  }

  void generate() {
    auto [spatial, channels, batch] = extents(x);
    ForwardTrainingAlgorithm alg(axes, spec(), x, spatial, batch, per_channel_or(weight, 1.0f, "gamma"),
                                 per_channel_or(bias, 0.0f, "beta"), running_mean, running_var, momentum, eps,
                                 running_var_correction);
    y = alg.y;
    channel_outputs = alg.channel_outputs;

    if (using_autoscheduler()) {
      estimate_tensor(x);
      estimate_tensor(y);
      for (auto* p : {&running_mean, &running_var}) p->set_estimates({{0, 256}});
      if (affine) for (auto* p : {weight, bias}) p->set_estimates({{0, 256}});
      momentum.set_estimate(0.1f);
      eps.set_estimate(1e-5f);
      running_var_correction.set_estimate(1.0f);
      channel_outputs.set_estimates({{0, 256}});
      return;
    }
    CpuScheduleContext cx = cpu_context(x);
    // shift is read before its element of x is overwritten when y is x (in-place).
    std::vector<Func> per_channel = {alg.statistics.shift, alg.statistics.stats, alg.scale};
    if (spec().layout == Layout::nchw) {
      schedule_nchw_channel_blocked(y, {channel_outputs}, alg.statistics.sums, per_channel, cx);
    } else {
      schedule_nhwc_two_pass(y, {channel_outputs}, alg.statistics.sums, per_channel, cx);
    }
  }
};

class BatchNormForwardInference : public BatchNormGenerator<BatchNormForwardInference> {
 public:
  Input<Buffer<float, 3>> x{"x"};
  Input<Buffer<float, 1>> running_mean{"running_mean"};
  Input<Buffer<float, 1>> running_var{"running_var"};
  Input<float> eps{"eps"};
  Output<Buffer<float, 3>> y{"y"};
  Input<Buffer<float, 1>>* weight = nullptr;
  Input<Buffer<float, 1>>* bias = nullptr;

  void configure() {
    if (affine) {
      weight = add_input<Buffer<float, 1>>("weight");
      bias = add_input<Buffer<float, 1>>("bias");
    }
  }

  void generate() {
    ForwardInferenceAlgorithm alg(axes, spec(), x, per_channel_or(weight, 1.0f, "gamma"),
                                  per_channel_or(bias, 0.0f, "beta"), running_mean, running_var, eps);
    y = alg.y;

    if (using_autoscheduler()) {
      estimate_tensor(x);
      estimate_tensor(y);
      for (auto* p : {&running_mean, &running_var}) p->set_estimates({{0, 256}});
      if (affine) for (auto* p : {weight, bias}) p->set_estimates({{0, 256}});
      eps.set_estimate(1e-5f);
      return;
    }
    schedule_elementwise(y, spec().layout, {alg.scale}, cpu_context(x));
  }
};

class BatchNormBackward : public BatchNormGenerator<BatchNormBackward> {
 public:
  Input<Buffer<float, 3>> x{"x"};
  Input<Buffer<float, 3>> dy{"dy"};
  // training: the forward's save_mean and save_invstd; evaluation: running_mean and 1 / sqrt(running_var + eps).
  Input<Buffer<float, 1>> mean{"mean"};
  Input<Buffer<float, 1>> invstd{"invstd"};
  // Whether the forward used batch statistics (dx then has the terms through mean and variance).
  Input<bool> training{"training"};
  Output<Buffer<float, 3>> dx{"dx"};
  Input<Buffer<float, 1>>* weight = nullptr;
  // Per channel: {dweight, dbias}; affine variants only.
  Output<Func>* param_grads = nullptr;

  void configure() {
    if (affine) {
      weight = add_input<Buffer<float, 1>>("weight");
      param_grads = add_output<Func>("param_grads", std::vector<Type>{Float(32), Float(32)}, 1);
    }
  }

  void generate() {
    auto [spatial, channels, batch] = extents(x);
    BackwardAlgorithm alg(axes, spec(), x, dy, spatial, batch, mean, invstd, per_channel_or(weight, 1.0f, "gamma"),
                          training);
    dx = alg.dx;
    std::vector<Func> outputs;
    if (param_grads) {
      Func grads("param_grad_values");
      grads(axes.c) = {alg.grads(axes.c)[0], alg.grads(axes.c)[1]};
      *param_grads = grads;
      outputs.push_back(*param_grads);
    }

    if (using_autoscheduler()) {
      estimate_tensor(x);
      estimate_tensor(dy);
      estimate_tensor(dx);
      for (auto* p : {&mean, &invstd}) p->set_estimates({{0, 256}});
      training.set_estimate(true);
      if (affine) {
        weight->set_estimates({{0, 256}});
        param_grads->set_estimates({{0, 256}});
      }
      return;
    }
    CpuScheduleContext cx = cpu_context(x);
    cx.tensors_reread = 2;  // x and dy
    std::vector<Func> per_channel = {alg.centre, alg.grads};
    if (spec().layout == Layout::nchw) {
      schedule_nchw_channel_blocked(dx, outputs, alg.sums, per_channel, cx);
    } else {
      schedule_nhwc_two_pass(dx, outputs, alg.sums, per_channel, cx);
    }
  }
};

}  // namespace
}  // namespace fusednorm

HALIDE_REGISTER_GENERATOR(fusednorm::BatchNormForwardTraining, batch_norm_forward_training)
HALIDE_REGISTER_GENERATOR(fusednorm::BatchNormForwardInference, batch_norm_forward_inference)
HALIDE_REGISTER_GENERATOR(fusednorm::BatchNormBackward, batch_norm_backward)
