// Generator registration for the whole family: which inputs and outputs a NormSpec has, the algorithm
// (norm_algorithm.h) and the schedule (schedule_cpu.h; schedule_gpu.h for a target with a GPU feature, cuda; or an
// autoscheduler from the estimates). Generator parameters select the variant; the build instantiates every variant
// from them (generators/CMakeLists.txt), and fusednorm_add_kernel() does the same in a downstream build.
// docs/KERNELS.md lists the arguments.
#include <algorithm>

#include "Halide.h"
#include "norm_algorithm.h"
#include "schedule_cpu.h"
#include "schedule_gpu.h"

namespace fusednorm {
namespace {

using namespace Halide;

// The sizes the autoschedulers plan for: ResNet-50 at batch 32 (256 x 56 x 56) for the channel norms, and
// transformer rows (8192 x 1024) for LayerNorm and RMSNorm.
struct Estimates {
  int spatial, channels, batch, groups;
};
Estimates estimates_for(const NormSpec& spec) {
  if (spec.affine_per_element()) return {1024, 1, 8192, 1};
  return {56 * 56, 256, 32, spec.norm == Norm::group ? 32 : 256};
}

// ChannelSums' chunk length for the autoscheduled variants: the largest multiple of 16 up to the hand length that
// leaves both a full chunk and a tail at the estimated S. With the hand lengths one of the two reductions is empty
// at the estimates (3136 < 4096 in NCHW: no full chunk; 3136 = 49 x 64 in NHWC and 1024 rows: no tail), and
// Adams2019 then aborts on the zero-extent loop (Halide 21, LoopNest.cpp: internal_assert(l.max() >= l.min()),
// message "0 -1 0", then "Destroying a Layout without returning all the BoundContents"). Shorter chunks keep the
// float32 chains at most as long as the hand variants' (3120 and 48 for ResNet-50, 1008 for rows of 1024), so the
// numerics hold; all three autoschedulers get the same algorithm.
int autoscheduled_chunk_length(int hand_length, int spatial) {
  for (int length = std::min(hand_length, spatial) / 16 * 16; length >= 16; length -= 16) {
    if (spatial % length != 0) return length;
  }
  return hand_length;
}

// Parameters, inputs and outputs shared by the three generators, added in configure() from the NormSpec (the
// order of the add_* calls is the order of the kernel's arguments).
template <typename T>
class NormalizationGenerator : public Generator<T> {
 public:
  GeneratorParam<Norm> norm{"norm", Norm::batch, generator_param_words<Norm>()};
  GeneratorParam<Layout> layout{"layout", Layout::nchw, generator_param_words<Layout>()};
  GeneratorParam<bool> affine{"affine", true};
  GeneratorParam<Epilogue> epilogue{"epilogue", Epilogue::none, generator_param_words<Epilogue>()};
  GeneratorParam<DType> dtype{"dtype", DType::float32, generator_param_words<DType>()};
  // CUDA schedules: lanes per row of the along-s reductions (a divisor of 32; 256 / lanes rows per block).
  GeneratorParam<int> gpu_row_lanes{"gpu_row_lanes", kGpuLanes, 1, 32};
  // CUDA schedules: rows of the elementwise tiles each thread computes (unrolled: loads in flight per thread); 0: the
  // direction's default (schedule_gpu.h).
  GeneratorParam<int> gpu_elementwise_rows{"gpu_elementwise_rows", 0, 0, 16};
  // CPU schedules: KiB of a block of the blocked schedules (statistics, then the elementwise pass while the block is
  // in L2); 0: the target's (block_bytes_for). For schedule experiments.
  GeneratorParam<int> cpu_block_kib{"cpu_block_kib", 0, 0, 1 << 20};
  int elementwise_rows(int direction_default) const {
    return gpu_elementwise_rows > 0 ? static_cast<int>(gpu_elementwise_rows) : direction_default;
  }

 protected:
  using Tensor = GeneratorInput<Buffer<>>;
  using Vector = GeneratorInput<Buffer<float, 1>>;
  using Statistic = GeneratorInput<Buffer<float, 2>>;

  NormSpec spec() const { return NormSpec{norm, layout, affine, epilogue, dtype}; }

  void check_spec(Direction direction) const {
    const NormSpec s = spec();
    if (s.affine_per_element() && s.layout == Layout::nhwc) {
      throw CompileError("layer and rms norms take rows, (D, 1, R): layout must be nchw");
    }
    if (batch_only(direction) && s.norm != Norm::batch) {
      throw CompileError(std::string(fusednorm::name(direction)) + " exists for norm=batch only");
    }
    if (direction == Direction::backward_reduce && !s.affine) {
      throw CompileError("backward_reduce outputs the parameter gradients' sums: affine must be true");
    }
  }
  // SyncBatchNorm's split kernels: hand-scheduled (CPU and CUDA).
  void check_split_kernel() {
    if (this->using_autoscheduler()) {
      throw CompileError("the split kernels (statistics, backward_reduce, backward_elementwise) have hand "
                         "schedules only");
    }
  }

  Tensor* add_tensor(const char* name) { return this->template add_input<Buffer<>>(name, spec().storage_type(), 3); }
  Vector* add_vector(const char* name) { return this->template add_input<Buffer<float, 1>>(name); }
  Statistic* add_statistic(const char* name) { return this->template add_input<Buffer<float, 2>>(name); }
  GeneratorInput<float>* add_scalar(const char* name) { return this->template add_input<float>(name); }
  GeneratorOutput<Buffer<>>* add_tensor_output(const char* name) {
    return this->template add_output<Buffer<>>(name, spec().storage_type(), 3);
  }

  // weight and bias inputs (configure()); affine_funcs() gives the identity for those absent.
  void add_affine(bool with_bias = true) {
    if (!spec().affine) return;
    weight = add_vector("weight");
    if (with_bias && spec().has_bias()) bias = add_vector("bias");
  }
  Affine affine_funcs() const {
    Affine result{Func("weight_or_one"), Func("bias_or_zero")};
    Var i("i");
    if (weight) result.weight = *weight;
    else result.weight(i) = 1.0f;
    if (bias) result.bias = *bias;
    else result.bias(i) = 0.0f;
    return result;
  }

  Problem problem(const Tensor& x) const {
    const bool nchw = spec().layout == Layout::nchw;
    Problem p(spec(), x.dim(nchw ? 0 : 1).extent(), x.dim(nchw ? 1 : 0).extent(), x.dim(2).extent(),
              groups ? Expr(*groups) : Expr(1));
    if (this->using_autoscheduler()) {
      p.chunk_length = autoscheduled_chunk_length(sum_chunk_length(spec()), estimates_for(spec()).spatial);
    }
    p.tail_spans_samples = nchw && spec().reduces_batch() && !this->using_autoscheduler() && !on_gpu();
    return p;
  }

  CpuScheduleContext cpu_context(const Problem& p) const {
    const int block_bytes = cpu_block_kib > 0 ? cpu_block_kib * 1024 : block_bytes_for(this->get_target());
    return {axes, p, this->natural_vector_size(Float(32)), block_bytes};
  }

  // GPU variants: the tensors are dense in their storage order (the runtime's views always are); with the strides
  // known, the kernels' addressing needs fewer parameters and multiplications.
  bool on_gpu() const { return this->get_target().has_gpu_feature(); }
  template <typename B>
  static void declare_dense(B& t) {
    t.dim(0).set_stride(1);
    t.dim(1).set_stride(t.dim(0).extent());
    t.dim(2).set_stride(t.dim(0).extent() * t.dim(1).extent());
  }

  // Estimates for the autoschedulers, from estimates_for().
  void estimate_tensor(Tensor* t) { estimate_tensor_dims(*t); }
  void estimate_tensor(GeneratorOutput<Buffer<>>* t) { estimate_tensor_dims(*t); }
  template <typename B>
  void estimate_tensor_dims(B& t) {
    Estimates e = estimates_for(spec());
    if (spec().layout == Layout::nchw) t.set_estimates({{0, e.spatial}, {0, e.channels}, {0, e.batch}});
    else t.set_estimates({{0, e.channels}, {0, e.spatial}, {0, e.batch}});
  }
  void estimate_common() {
    Estimates e = estimates_for(spec());
    int parameters = spec().affine_per_element() ? e.spatial : e.channels;
    if (weight) weight->set_estimates({{0, parameters}});
    if (bias) bias->set_estimates({{0, parameters}});
    if (groups) groups->set_estimate(e.groups);
  }
  Region statistic_region() const {
    Estimates e = estimates_for(spec());
    return {{0, spec().norm == Norm::group ? e.groups : e.channels}, {0, spec().reduces_batch() ? 1 : e.batch}};
  }

  Axes axes;
  Vector* weight = nullptr;
  Vector* bias = nullptr;
  GeneratorInput<int>* groups = nullptr;
};

class ForwardTraining : public NormalizationGenerator<ForwardTraining> {
 public:
  void configure() {
    check_spec(Direction::forward_training);
    const NormSpec s = spec();
    x = add_tensor("x");
    if (s.epilogue == Epilogue::add_relu) z = add_tensor("z");
    if (s.has_running_statistics()) {
      running_mean = add_vector("running_mean");
      running_var = add_vector("running_var");
      momentum = add_scalar("momentum");
      // count / (count - 1) for PyTorch's unbiased running variance, 1 for ONNX's biased one.
      running_var_correction = add_scalar("running_var_correction");
    }
    eps = add_scalar("eps");
    if (s.norm == Norm::group) groups = this->add_input<int>("groups");
    add_affine();
    y = add_tensor_output("y");
    // New running statistics are outputs because Halide cannot alias an input as an output.
    if (s.centred()) saved = add_output<Func>("saved_statistics", {Float(32), Float(32)}, 2);
    else saved = add_output<Func>("saved_statistics", {Float(32)}, 2);
    if (s.has_running_statistics()) running = add_output<Func>("running_statistics", {Float(32), Float(32)}, 1);
  }

  void generate() {
    const NormSpec s = spec();
    const Problem p = problem(*x);
    Func identity("no_running_statistics");
    identity(axes.c) = 0.0f;
    Func residual = z ? Func(*z) : Func("no_residual");
    ForwardTrainingAlgorithm alg(axes, p, *x, residual, affine_funcs(), running_mean ? Func(*running_mean) : identity,
                                 running_var ? Func(*running_var) : identity,
                                 momentum ? Expr(*momentum) : Expr(0.0f), *eps,
                                 running_var_correction ? Expr(*running_var_correction) : Expr(1.0f));
    *y = alg.y;
    *saved = alg.saved_statistics;
    if (running) *running = alg.running_statistics;

    if (using_autoscheduler()) {
      Estimates e = estimates_for(s);
      estimate_tensor(x);
      if (z) estimate_tensor(z);
      estimate_tensor(y);
      estimate_common();
      for (Vector* v : {running_mean, running_var}) {
        if (v) v->set_estimates({{0, e.channels}});
      }
      eps->set_estimate(1e-5f);
      if (momentum) momentum->set_estimate(0.1f);
      if (running_var_correction) running_var_correction->set_estimate(1.0f);
      saved->set_estimates(statistic_region());
      if (running) running->set_estimates({{0, e.channels}});
      return;
    }
    const Statistics& st = alg.statistics;
    if (on_gpu()) {
      declare_dense(*x);
      if (z) declare_dense(*z);
      declare_dense(*y);
      ChannelSums gpu_sums = st.channel_sums;
      if (s.affine_per_element()) {
        schedule_gpu_rows_forward(*y, *saved, gpu_sums, {st.shift, st.group_sums.sums, alg.coefficients}, axes);
        return;
      }
      schedule_gpu_channel_sums(gpu_sums, s.layout, axes, s.affine_per_element(), this->gpu_row_lanes);
      for (Func f : {st.shift, st.group_sums.sums, alg.coefficients, Func(*saved)}) schedule_gpu_flat(f);
      if (running) {
        schedule_gpu_flat(alg.running_batch_values);
        schedule_gpu_flat(*running);
      }
      schedule_gpu_elementwise(*y, s.affine_per_element(), this->elementwise_rows(kGpuElementwiseRowsPerThread));
      return;
    }
    CpuScheduleContext cx = cpu_context(p);
    // The shift is read before its element of x is overwritten when y is x (in place).
    BlockedFuncs funcs;
    funcs.per_block = {st.shift, st.channel_shift, st.group_sums.sums, st.stats, alg.coefficients};
    funcs.sample_sums = {st.group_sums.sums};
    funcs.group_outputs = {*saved};
    if (running) {
      funcs.per_block.push_back(alg.running_batch_values);
      funcs.channel_outputs = {*running};
    }
    ChannelSums sums = st.channel_sums;
    schedule_statistics_then_elementwise(s, *y, sums, funcs, cx);
  }

 private:
  Tensor* x = nullptr;
  Tensor* z = nullptr;
  Vector* running_mean = nullptr;
  Vector* running_var = nullptr;
  GeneratorInput<float>* momentum = nullptr;
  GeneratorInput<float>* running_var_correction = nullptr;
  GeneratorInput<float>* eps = nullptr;
  GeneratorOutput<Buffer<>>* y = nullptr;
  GeneratorOutput<Func>* saved = nullptr;
  GeneratorOutput<Func>* running = nullptr;
};

class ForwardInference : public NormalizationGenerator<ForwardInference> {
 public:
  void configure() {
    check_spec(Direction::forward_inference);
    x = add_tensor("x");
    if (spec().epilogue == Epilogue::add_relu) z = add_tensor("z");
    running_mean = add_vector("running_mean");
    running_var = add_vector("running_var");
    eps = add_scalar("eps");
    add_affine();
    y = add_tensor_output("y");
  }

  void generate() {
    const Problem p = problem(*x);
    Func residual = z ? Func(*z) : Func("no_residual");
    ForwardInferenceAlgorithm alg(axes, p, *x, residual, affine_funcs(), *running_mean, *running_var, *eps);
    *y = alg.y;

    if (using_autoscheduler()) {
      estimate_tensor(x);
      if (z) estimate_tensor(z);
      estimate_tensor(y);
      estimate_common();
      for (Vector* v : {running_mean, running_var}) v->set_estimates({{0, estimates_for(spec()).channels}});
      eps->set_estimate(1e-5f);
      return;
    }
    if (on_gpu()) {
      declare_dense(*x);
      if (z) declare_dense(*z);
      declare_dense(*y);
      schedule_gpu_flat(alg.scale);
      schedule_gpu_elementwise(*y, false, this->elementwise_rows(kGpuInferenceRowsPerThread));
      return;
    }
    schedule_elementwise(*y, spec().layout, {alg.scale}, cpu_context(p));
  }

 private:
  Tensor* x = nullptr;
  Tensor* z = nullptr;
  Vector* running_mean = nullptr;
  Vector* running_var = nullptr;
  GeneratorInput<float>* eps = nullptr;
  GeneratorOutput<Buffer<>>* y = nullptr;
};

class Backward : public NormalizationGenerator<Backward> {
 public:
  void configure() {
    check_spec(Direction::backward);
    const NormSpec s = spec();
    x = add_tensor("x");
    dy = add_tensor("dy");
    if (s.epilogue_needs_output_in_backward()) y = add_tensor("y");
    // training: the forward's saved statistics; evaluation (BatchNorm): the running mean and 1 / sqrt(var + eps).
    if (s.centred()) mean = add_statistic("mean");
    invstd = add_statistic("invstd");
    // Whether the forward used batch statistics (dx then has the terms through mean and variance).
    if (s.backward_has_training_flag()) training = add_input<bool>("training");
    if (s.norm == Norm::group) groups = add_input<int>("groups");
    // The bias only where SiLU's derivative needs v = xhat * weight + bias.
    add_affine(s.epilogue == Epilogue::silu);
    dx = add_tensor_output("dx");
    if (s.epilogue == Epilogue::add_relu) dz = add_tensor_output("dz");
    if (s.affine) {
      std::vector<Type> types(s.has_bias() ? 2 : 1, Float(32));
      param_grads = add_output<Func>("param_grads", types, 1);
    }
  }

  void generate() {
    const NormSpec s = spec();
    const Problem p = problem(*x);
    Func zero_mean("no_mean");
    zero_mean(axes.g, axes.b) = 0.0f;
    Func output = y ? Func(*y) : Func("no_output");
    Affine params = affine_funcs();
    BackwardAlgorithm alg(axes, p, *x, *dy, output, mean ? Func(*mean) : zero_mean, *invstd, params,
                          training ? Expr(*training) : Expr(true), s.affine);
    *dx = alg.dx;
    if (dz) *dz = alg.dz;
    if (param_grads) *param_grads = alg.param_grads;

    if (using_autoscheduler()) {
      Estimates e = estimates_for(s);
      for (Tensor* t : {x, dy, y}) {
        if (t) estimate_tensor(t);
      }
      estimate_tensor(dx);
      if (dz) estimate_tensor(dz);
      estimate_common();
      for (Statistic* t : {mean, invstd}) {
        if (t) t->set_estimates(statistic_region());
      }
      if (training) training->set_estimate(true);
      if (param_grads) param_grads->set_estimates({{0, s.affine_per_element() ? e.spatial : e.channels}});
      return;
    }
    if (on_gpu()) {
      for (Tensor* t : {x, dy, y}) {
        if (t) declare_dense(*t);
      }
      declare_dense(*dx);
      if (dz) declare_dense(*dz);
      ChannelSums gpu_sums = alg.channel_sums;
      schedule_gpu_channel_sums(gpu_sums, s.layout, axes, s.affine_per_element(), this->gpu_row_lanes);
      for (Func f : {alg.centre, alg.group_sums.sums, alg.terms, alg.coefficients}) schedule_gpu_flat(f);
      if (param_grads && s.affine_per_element()) {
        schedule_gpu_column_sums(alg.param_sums, alg.over_rows, axes);
      } else if (param_grads) {
        schedule_gpu_flat(alg.param_sums);
      }
      if (param_grads) schedule_gpu_flat(*param_grads);
      schedule_gpu_elementwise(*dx, s.affine_per_element(), this->elementwise_rows(kGpuElementwiseRowsPerThread));
      if (dz) schedule_gpu_elementwise(*dz, false, this->elementwise_rows(kGpuElementwiseRowsPerThread));
      return;
    }
    CpuScheduleContext cx = cpu_context(p);
    cx.tensors_reread = y ? 3 : 2;  // x and dy, and y for the ReLU mask
    BlockedFuncs funcs;
    funcs.per_block = {alg.centre, alg.channel_centre, alg.group_sums.sums, alg.terms, alg.coefficients};
    funcs.sample_sums = {alg.group_sums.sums};
    if (dz) funcs.elementwise_outputs = {*dz};
    ChannelSums sums = alg.channel_sums;
    if (param_grads && s.affine_per_element()) {
      cx.column_sums = true;
      schedule_column_sums(alg.param_sums, alg.over_rows, *dx, cx);
    } else if (param_grads) {
      funcs.per_block.push_back(alg.param_sums);
      funcs.sample_sums.push_back(alg.param_sums);
      funcs.channel_outputs = {*param_grads};
    }
    schedule_statistics_then_elementwise(s, *dx, sums, funcs, cx);
  }

 private:
  Tensor* x = nullptr;
  Tensor* dy = nullptr;
  Tensor* y = nullptr;
  Statistic* mean = nullptr;
  Statistic* invstd = nullptr;
  GeneratorInput<bool>* training = nullptr;
  GeneratorOutput<Buffer<>>* dx = nullptr;
  GeneratorOutput<Buffer<>>* dz = nullptr;
  GeneratorOutput<Func>* param_grads = nullptr;
};

// SyncBatchNorm's statistics: per channel {K, mean - K, biased variance} of this batch (K: the shift of
// Statistics, the channel's first element), float32 each, for a combine across processes that keeps mean - K
// exact to float32 when the mean is far from zero (runtime/sync_batch_norm.cpp).
class PartialStatistics : public NormalizationGenerator<PartialStatistics> {
 public:
  void configure() {
    check_spec(Direction::statistics);
    x = add_tensor("x");
    partial = add_output<Func>("partial_statistics", {Float(32), Float(32), Float(32)}, 1);
  }

  void generate() {
    check_split_kernel();
    const Problem p = problem(*x);
    Statistics st(axes, p, *x, Expr(0.0f));
    Func values("partial_statistics_values");
    values(axes.c) = {st.shift(axes.c, 0), st.stats(axes.c, 0)[0], cast<float>(st.stats(axes.c, 0)[3])};
    *partial = values;
    BlockedFuncs funcs;
    funcs.per_block = {st.shift, st.channel_shift, st.group_sums.sums, st.stats};
    funcs.sample_sums = {st.group_sums.sums};
    ChannelSums sums = st.channel_sums;
    if (on_gpu()) {
      // The training forward's reductions (schedule_gpu_channel_sums), then a thread per channel.
      declare_dense(*x);
      schedule_gpu_channel_sums(sums, spec().layout, axes, /*rows=*/false, this->gpu_row_lanes);
      for (Func f : {st.shift, st.group_sums.sums, Func(*partial)}) schedule_gpu_flat(f);
      return;
    }
    schedule_channel_reductions(spec().layout, *partial, sums, funcs, cpu_context(p));
  }

 private:
  Tensor* x = nullptr;
  GeneratorOutput<Func>* partial = nullptr;
};

// SyncBatchNorm's backward, first half: this batch's {sum(g * xhat), sum(g)} per channel (the parameter gradients
// of its part of the batch) with the given statistics, mean and invstd (C, 1).
class BackwardReduce : public NormalizationGenerator<BackwardReduce> {
 public:
  void configure() {
    check_spec(Direction::backward_reduce);
    x = add_tensor("x");
    dy = add_tensor("dy");
    if (spec().epilogue_needs_output_in_backward()) y = add_tensor("y");
    mean = add_statistic("mean");
    invstd = add_statistic("invstd");
    param_grads = add_output<Func>("param_grads", {Float(32), Float(32)}, 1);
  }

  void generate() {
    check_split_kernel();
    const Problem p = problem(*x);
    Func output = y ? Func(*y) : Func("no_output");
    Affine identity = affine_funcs();
    BackwardAlgorithm alg(axes, p, *x, *dy, output, *mean, *invstd, identity, Expr(false), true);
    *param_grads = alg.param_grads;
    CpuScheduleContext cx = cpu_context(p);
    BlockedFuncs funcs;
    funcs.per_block = {alg.centre, alg.channel_centre, alg.param_sums};
    funcs.sample_sums = {alg.param_sums};
    ChannelSums sums = alg.channel_sums;
    if (on_gpu()) {
      // The backward's reductions (schedule_gpu_channel_sums), then a thread per channel.
      for (Tensor* t : {x, dy, y}) {
        if (t) declare_dense(*t);
      }
      schedule_gpu_channel_sums(sums, spec().layout, axes, /*rows=*/false, this->gpu_row_lanes);
      for (Func f : {alg.centre, alg.param_sums, Func(*param_grads)}) schedule_gpu_flat(f);
      return;
    }
    schedule_channel_reductions(spec().layout, *param_grads, sums, funcs, cx);
  }

 private:
  Tensor* x = nullptr;
  Tensor* dy = nullptr;
  Tensor* y = nullptr;
  Statistic* mean = nullptr;
  Statistic* invstd = nullptr;
  GeneratorOutput<Func>* param_grads = nullptr;
};

// SyncBatchNorm's backward, second half: dx (and dz) from the statistics and h_mean, h_xhat_mean (C, 1), the means
// of h = weight * g and of h * xhat over the whole batch.
class BackwardElementwise : public NormalizationGenerator<BackwardElementwise> {
 public:
  void configure() {
    check_spec(Direction::backward_elementwise);
    const NormSpec s = spec();
    x = add_tensor("x");
    dy = add_tensor("dy");
    if (s.epilogue_needs_output_in_backward()) y = add_tensor("y");
    mean = add_statistic("mean");
    invstd = add_statistic("invstd");
    h_mean = add_statistic("h_mean");
    h_xhat_mean = add_statistic("h_xhat_mean");
    add_affine(s.epilogue == Epilogue::silu);
    dx = add_tensor_output("dx");
    if (s.epilogue == Epilogue::add_relu) dz = add_tensor_output("dz");
  }

  void generate() {
    check_split_kernel();
    const Problem p = problem(*x);
    Func output = y ? Func(*y) : Func("no_output");
    BackwardElementwiseAlgorithm alg(axes, p, *x, *dy, output, *mean, *invstd, affine_funcs(), *h_mean,
                                     *h_xhat_mean);
    *dx = alg.dx;
    if (dz) *dz = alg.dz;
    if (on_gpu()) {
      // The backward's elementwise pass (schedule_gpu_elementwise), the coefficients a thread per channel.
      for (Tensor* t : {x, dy, y}) {
        if (t) declare_dense(*t);
      }
      declare_dense(*dx);
      if (dz) declare_dense(*dz);
      schedule_gpu_flat(alg.coefficients);
      schedule_gpu_elementwise(*dx, false, this->elementwise_rows(kGpuElementwiseRowsPerThread));
      if (dz) schedule_gpu_elementwise(*dz, false, this->elementwise_rows(kGpuElementwiseRowsPerThread));
      return;
    }
    CpuScheduleContext cx = cpu_context(p);
    schedule_elementwise(*dx, spec().layout, {alg.coefficients}, cx);
    if (dz) schedule_rows(*dz, spec().layout, cx);
  }

 private:
  Tensor* x = nullptr;
  Tensor* dy = nullptr;
  Tensor* y = nullptr;
  Statistic* mean = nullptr;
  Statistic* invstd = nullptr;
  Statistic* h_mean = nullptr;
  Statistic* h_xhat_mean = nullptr;
  GeneratorOutput<Buffer<>>* dx = nullptr;
  GeneratorOutput<Buffer<>>* dz = nullptr;
};

}  // namespace
}  // namespace fusednorm

HALIDE_REGISTER_GENERATOR(fusednorm::ForwardTraining, normalization_forward_training)
HALIDE_REGISTER_GENERATOR(fusednorm::ForwardInference, normalization_forward_inference)
HALIDE_REGISTER_GENERATOR(fusednorm::Backward, normalization_backward)
HALIDE_REGISTER_GENERATOR(fusednorm::PartialStatistics, normalization_statistics)
HALIDE_REGISTER_GENERATOR(fusednorm::BackwardReduce, normalization_backward_reduce)
HALIDE_REGISTER_GENERATOR(fusednorm::BackwardElementwise, normalization_backward_elementwise)
