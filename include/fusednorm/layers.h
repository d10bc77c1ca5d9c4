#pragma once
// Normalization layers with PyTorch's semantics: BatchNorm1d / 2d / 3d, InstanceNorm1d / 2d / 3d, LayerNorm,
// RMSNorm and GroupNorm, with PyTorch's constructor options, defaults and state_dict names; parameters, running
// statistics, train / eval, forward and backward. A layer owns its parameters, buffers and gradients; inputs and
// outputs are views of the caller's memory.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/epilogue.h"
#include "fusednorm/layer_norm.h"
#include "fusednorm/state_dict.h"
#include "fusednorm/sync_batch_norm.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

namespace detail {
// What a layer's state holds, as its options decide: for the initial values and the state dict.
struct LayerContents {
  std::vector<int64_t> feature_shape;  // of weight, bias and the running statistics: (C), or normalized_shape
  bool has_weight = false;
  bool has_bias = false;
  bool has_running_stats = false;  // running_mean, running_var, num_batches_tracked
  DType dtype = DType::float32;    // of weight, bias and their gradients
  std::string options;             // for messages, e.g. "affine=true, track_running_stats=false"
};
}  // namespace detail

// What every layer shares: parameters and their accumulated gradients, buffers, train / eval, the forward a
// backward differentiates, and the state dict. Each layer below adds its options, its input checks and the
// functional call (batch_norm_forward, group_norm_forward, ...).
class NormLayer {
 public:
  virtual ~NormLayer() = default;

  // Training mode is the default. Only the layers with running statistics (BatchNorm, InstanceNorm with
  // track_running_stats) compute differently in evaluation.
  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool is_training() const { return training_; }

  // y may be x itself (in place). Until backward, keep x alive and unchanged, and y too under the relu and
  // add_relu epilogues (its sign is their mask): the layer keeps views of them (and of nothing else), as
  // autograd keeps the tensors it saves. A forward in place overwrites x, so its backward throws (as PyTorch's
  // autograd refuses a tensor modified in place).
  void forward(const TensorView& x, const TensorView& y);
  // Epilogue::add_relu only: y = max(v + z, 0) with the residual z, same shape and layout as x.
  void forward(const TensorView& x, const TensorView& z, const TensorView& y);
  // Writes dx and accumulates the parameter gradients (grad_weight += ..., grad_bias += ...). Each forward can
  // be differentiated once.
  void backward(const TensorView& dy, const TensorView& dx);
  // Epilogue::add_relu only: also writes dz, the gradient of the residual.
  void backward(const TensorView& dy, const TensorView& dx, const TensorView& dz);
  void zero_grad();

  // Parameters, initialised as PyTorch does: weight 1, bias 0. Empty when the layer has none (affine false, or
  // LayerNorm's bias=false; RMSNorm never has a bias). Held as float32 values whatever dtype(): a 16-bit layer
  // rounds them to its dtype at each call and in save_to, and its gradients are rounded to it as they accumulate
  // (as PyTorch's .grad of a module in that dtype).
  std::vector<float>& weight() { return weight_; }
  std::vector<float>& bias() { return bias_; }
  const std::vector<float>& grad_weight() const { return grad_weight_; }
  const std::vector<float>& grad_bias() const { return grad_bias_; }
  Epilogue epilogue() const { return epilogue_; }
  // The parameters' dtype (the options' dtype). Inputs may be float32, bfloat16 or float16 whatever it is, except
  // that 16-bit parameters take inputs of their own dtype only (as PyTorch's kernels do). Running statistics are
  // float32.
  DType dtype() const { return contents_.dtype; }

  // PyTorch's state_dict keys under `prefix` (e.g. "bn1." gives "bn1.weight"). load is strict, as PyTorch's
  // default: a missing or unexpected key of this layer, or a shape mismatch, or an int64 where a floating tensor
  // belongs, throws and changes nothing. Floating tensors of any dtype load (rounded to the parameters' dtype, as
  // PyTorch's load_state_dict copies them); save_to writes the parameters in their dtype, the running statistics
  // in float32.
  void save_to(StateDict& state, const std::string& prefix = "") const;
  void load_from(const StateDict& state, const std::string& prefix = "");

 protected:
  NormLayer(std::string name, detail::LayerContents contents, Epilogue epilogue);

  // What a forward keeps for its backward.
  struct Saved {
    TensorView input;
    std::optional<TensorView> output = std::nullopt;  // the relu and add_relu epilogues' mask
    std::vector<float> mean = {}, invstd = {};        // the statistics the forward used
    bool input_overwritten = false;                   // the forward wrote y over x (in place)
  };
  // The gradients a backward writes (not accumulates): empty views where the layer has no such parameter.
  struct ParameterGrads {
    std::optional<TensorView> weight = std::nullopt, bias = std::nullopt;
  };

  // Refuses x (or dy, z, dz: `what` names it) whose rank or feature dimensions do not fit the layer.
  virtual void check_input(const TensorView& x, const char* what) const = 0;
  // Runs the functional forward (z is the add_relu residual). Returns whether the forward can be
  // differentiated, having filled saved.mean / saved.invstd; throws, having changed nothing, on bad arguments.
  virtual bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y,
                           Saved& saved) = 0;
  // Runs the functional backward of `saved`: writes dx (and dz), and the batch's parameter gradients into grads.
  virtual void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx,
                            const std::optional<TensorView>& dz, const ParameterGrads& grads) = 0;
  // Which forwards backward differentiates, for its message when there is none.
  virtual std::string differentiable_forward() const { return "a forward"; }

  const std::string& name() const { return name_; }
  const std::vector<int64_t>& feature_shape() const { return contents_.feature_shape; }
  // Views of the parameters for the functional calls: std::nullopt where the layer has none.
  std::optional<TensorView> weight_view();
  std::optional<TensorView> bias_view();

  // Buffers: public in the layers that have them (BatchNorm, InstanceNorm). Empty when not tracked.
  std::vector<float>& running_mean() { return running_mean_; }
  std::vector<float>& running_var() { return running_var_; }
  int64_t num_batches_tracked() const { return num_batches_tracked_; }
  int64_t& num_batches_tracked_counter() { return num_batches_tracked_; }
  // Running mean 0, running variance 1, num_batches_tracked 0.
  void reset_running_stats();
  // Everything but the name and options from `other`, a layer of the same contents: parameters, their gradients,
  // buffers and train / eval (SyncBatchNorm from a BatchNorm). Not what a forward saved for its backward.
  void copy_state_from(const NormLayer& other);

 private:
  void forward_with(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y);
  void backward_with(const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz);
  void check_residual(bool given, const char* call, const char* argument) const;
  std::optional<TensorView> parameter_view(std::vector<float>& values, std::vector<uint16_t>& bits,
                                           const char* what) const;
  void accumulate(std::vector<float>& grad, const std::vector<float>& batch,
                  const std::vector<uint16_t>& batch_bits) const;

  std::string name_;
  detail::LayerContents contents_;
  Epilogue epilogue_;
  bool training_ = true;
  std::vector<float> weight_, bias_, grad_weight_, grad_bias_;
  std::vector<float> running_mean_, running_var_;
  int64_t num_batches_tracked_ = 0;
  // The last differentiable forward (while has_saved_, until its backward), and the one being made: the two swap,
  // so that their statistics' memory is reused and a step of the layer allocates nothing once warm.
  Saved saved_, next_saved_;
  bool has_saved_ = false;
  // The batch's parameter gradients, which backward adds to grad_weight_ and grad_bias_.
  std::vector<float> batch_grad_weight_, batch_grad_bias_;
  // A 16-bit layer's: its parameters rounded for the calls, and the batch's gradients as the calls write them.
  std::vector<uint16_t> weight_bits_, bias_bits_, batch_grad_weight_bits_, batch_grad_bias_bits_;
};

// ---------------------------------------------------------------------------------------------------------------
// BatchNorm

// PyTorch's constructor options, same names and defaults, then FusedNorm's own.
struct BatchNormLayerOptions {
  double eps = 1e-5;
  // std::nullopt: cumulative moving average (PyTorch's momentum=None).
  std::optional<double> momentum = 0.1;
  bool affine = true;
  bool track_running_stats = true;
  RunningVarianceUpdate running_variance_update = RunningVarianceUpdate::unbiased;
  // none, relu or add_relu (forward(x, z, y) and backward(dy, dx, dz)); silu is GroupNorm's only.
  Epilogue epilogue = Epilogue::none;
  // Of weight and bias (PyTorch's dtype=): float32, as autocast keeps them, or the inputs' 16-bit dtype.
  DType dtype = DType::float32;
};

class BatchNorm : public NormLayer {
 public:
  // Accepts (N, C) and (N, C, *spatial) with up to 3 spatial dimensions; the subclasses fix the rank.
  explicit BatchNorm(int64_t num_features, BatchNormLayerOptions options = {});

  // Training uses batch statistics and updates the running ones (incrementing num_batches_tracked);
  // evaluation uses the running statistics, or batch statistics when track_running_stats is false (as PyTorch
  // does). A backward needs a forward with batch statistics before it.
  int64_t num_features() const { return num_features_; }
  const BatchNormLayerOptions& options() const { return options_; }
  using NormLayer::num_batches_tracked;
  using NormLayer::reset_running_stats;
  using NormLayer::running_mean;
  using NormLayer::running_var;

 protected:
  // process_group: SyncBatchNorm's communicator, null for the others.
  BatchNorm(int64_t num_features, BatchNormLayerOptions options, std::string name, std::vector<int64_t> ranks,
            Communicator* process_group = nullptr);

 private:
  void check_input(const TensorView& x, const char* what) const override;
  bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y, Saved& saved) override;
  void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz,
                    const ParameterGrads& grads) override;
  std::string differentiable_forward() const override;

  std::vector<int64_t> ranks_;  // accepted input ranks
  int64_t num_features_;
  BatchNormLayerOptions options_;
  Communicator* process_group_;
};

// (N, C) or (N, C, L)
class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, BatchNormLayerOptions options = {})
      : BatchNorm(num_features, options, "BatchNorm1d", {2, 3}) {}
};
// (N, C, H, W)
class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, BatchNormLayerOptions options = {})
      : BatchNorm(num_features, options, "BatchNorm2d", {4}) {}
};
// (N, C, D, H, W)
class BatchNorm3d : public BatchNorm {
 public:
  explicit BatchNorm3d(int64_t num_features, BatchNormLayerOptions options = {})
      : BatchNorm(num_features, options, "BatchNorm3d", {5}) {}
};

// PyTorch's SyncBatchNorm: BatchNorm whose batch statistics (in training, or always with track_running_stats false)
// are those of the whole batch of a group of processes, each holding its part (fusednorm/sync_batch_norm.h; N may
// be 0 on a member). process_group is the group (not owned: it must outlive the layer's calls), and every member
// runs the same steps. grad_weight and grad_bias accumulate the member's own part, as PyTorch's do before the
// data-parallel gradient reduction. (N, C) and (N, C, *spatial) with up to 3 spatial dimensions; PyTorch's names
// in the state dict.
class SyncBatchNorm : public BatchNorm {
 public:
  SyncBatchNorm(int64_t num_features, Communicator& process_group, BatchNormLayerOptions options = {})
      : BatchNorm(num_features, options, "SyncBatchNorm", {2, 3, 4, 5}, &process_group) {}
  // PyTorch's convert_sync_batchnorm, for one layer: `layer`'s options, parameters, gradients, buffers and mode.
  SyncBatchNorm(const BatchNorm& layer, Communicator& process_group)
      : SyncBatchNorm(layer.num_features(), process_group, layer.options()) {
    copy_state_from(layer);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// InstanceNorm

// PyTorch's constructor options, same names and defaults (note: affine and track_running_stats are false).
struct InstanceNormLayerOptions {
  double eps = 1e-5;
  // PyTorch's InstanceNorm passes momentum=None as 0: the running statistics then never change.
  std::optional<double> momentum = 0.1;
  bool affine = false;
  bool track_running_stats = false;
  DType dtype = DType::float32;  // of weight and bias, as BatchNormLayerOptions'
};

// Statistics per (sample, channel) over the spatial dimensions. With track_running_stats, training also updates
// the running statistics with the mean over the samples of each channel's statistics (unbiased variance), and
// evaluation normalizes with them, per channel; as in PyTorch, num_batches_tracked is saved and loaded but never
// incremented. A backward needs a forward with instance statistics before it. The input may be unbatched,
// (C, *spatial), as PyTorch accepts; it is normalized as the single sample of a batch of one.
class InstanceNorm : public NormLayer {
 public:
  int64_t num_features() const { return num_features_; }
  const InstanceNormLayerOptions& options() const { return options_; }
  using NormLayer::num_batches_tracked;
  using NormLayer::reset_running_stats;
  using NormLayer::running_mean;
  using NormLayer::running_var;

 protected:
  InstanceNorm(int64_t num_features, InstanceNormLayerOptions options, std::string name, int64_t spatial_dims);

 private:
  void check_input(const TensorView& x, const char* what) const override;
  bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y, Saved& saved) override;
  void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz,
                    const ParameterGrads& grads) override;
  std::string differentiable_forward() const override;
  // (N, C, *spatial) as it is; (C, *spatial) as (1, C, *spatial).
  TensorView batched(const TensorView& view) const;

  int64_t spatial_dims_;
  int64_t num_features_;
  InstanceNormLayerOptions options_;
};

// (N, C, L) or (C, L)
class InstanceNorm1d : public InstanceNorm {
 public:
  explicit InstanceNorm1d(int64_t num_features, InstanceNormLayerOptions options = {})
      : InstanceNorm(num_features, options, "InstanceNorm1d", 1) {}
};
// (N, C, H, W) or (C, H, W)
class InstanceNorm2d : public InstanceNorm {
 public:
  explicit InstanceNorm2d(int64_t num_features, InstanceNormLayerOptions options = {})
      : InstanceNorm(num_features, options, "InstanceNorm2d", 2) {}
};
// (N, C, D, H, W) or (C, D, H, W)
class InstanceNorm3d : public InstanceNorm {
 public:
  explicit InstanceNorm3d(int64_t num_features, InstanceNormLayerOptions options = {})
      : InstanceNorm(num_features, options, "InstanceNorm3d", 3) {}
};

// ---------------------------------------------------------------------------------------------------------------
// GroupNorm

struct GroupNormLayerOptions {
  double eps = 1e-5;
  bool affine = true;
  // none, relu, add_relu (forward(x, z, y) and backward(dy, dx, dz)) or silu.
  Epilogue epilogue = Epilogue::none;
  DType dtype = DType::float32;  // of weight and bias, as BatchNormLayerOptions'
};

// (N, C, *spatial) with up to 3 spatial dimensions, dense NCHW or NHWC; statistics per (sample, group of
// num_channels / num_groups channels). No running statistics: training and evaluation compute alike.
class GroupNorm : public NormLayer {
 public:
  GroupNorm(int64_t num_groups, int64_t num_channels, GroupNormLayerOptions options = {});

  int64_t num_groups() const { return num_groups_; }
  int64_t num_channels() const { return num_channels_; }
  const GroupNormLayerOptions& options() const { return options_; }

 private:
  void check_input(const TensorView& x, const char* what) const override;
  bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y, Saved& saved) override;
  void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz,
                    const ParameterGrads& grads) override;

  int64_t num_groups_;
  int64_t num_channels_;
  GroupNormLayerOptions options_;
};

// ---------------------------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm: (*, normalized_shape), dense row-major; statistics per row over the trailing
// normalized_shape dimensions; weight and bias have normalized_shape. No running statistics.

struct LayerNormLayerOptions {
  double eps = 1e-5;
  bool elementwise_affine = true;
  bool bias = true;              // with elementwise_affine only
  DType dtype = DType::float32;  // of weight and bias, as BatchNormLayerOptions'
};

class LayerNorm : public NormLayer {
 public:
  explicit LayerNorm(std::vector<int64_t> normalized_shape, LayerNormLayerOptions options = {});

  const std::vector<int64_t>& normalized_shape() const { return feature_shape(); }
  const LayerNormLayerOptions& options() const { return options_; }

 private:
  void check_input(const TensorView& x, const char* what) const override;
  bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y, Saved& saved) override;
  void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz,
                    const ParameterGrads& grads) override;

  LayerNormLayerOptions options_;
  LayerNormOptions call_options_;  // the functional calls' (made once: its normalized_shape is a vector)
};

struct RMSNormLayerOptions {
  // std::nullopt is PyTorch's eps=None: torch.finfo(torch.float32).eps = 2^-23.
  std::optional<double> eps = std::nullopt;
  bool elementwise_affine = true;
  DType dtype = DType::float32;  // of weight, as BatchNormLayerOptions'
};

// y = x / sqrt(mean(x^2) + eps) * weight, per row.
class RMSNorm : public NormLayer {
 public:
  explicit RMSNorm(std::vector<int64_t> normalized_shape, RMSNormLayerOptions options = {});

  const std::vector<int64_t>& normalized_shape() const { return feature_shape(); }
  const RMSNormLayerOptions& options() const { return options_; }
  // The eps the forward uses: options().eps, or 2^-23.
  double eps() const;

 private:
  void check_input(const TensorView& x, const char* what) const override;
  bool run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y, Saved& saved) override;
  void run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz,
                    const ParameterGrads& grads) override;

  RMSNormLayerOptions options_;
  RMSNormOptions call_options_;  // the functional calls' (made once: its normalized_shape is a vector)
};

}  // namespace fusednorm
