#pragma once
// BatchNorm layers with PyTorch's semantics: BatchNorm1d / 2d / 3d, parameters, running statistics, train / eval,
// forward and backward. A layer owns its parameters, buffers and gradients; inputs and outputs are views of the
// caller's memory.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/state_dict.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

// PyTorch's constructor options, same names and defaults.
struct BatchNormLayerOptions {
  double eps = 1e-5;
  // std::nullopt: cumulative moving average (PyTorch's momentum=None).
  std::optional<double> momentum = 0.1;
  bool affine = true;
  bool track_running_stats = true;
  RunningVarianceUpdate running_variance_update = RunningVarianceUpdate::unbiased;
};

class BatchNorm {
 public:
  // Accepts (N, C) and (N, C, *spatial) with up to 3 spatial dimensions; the subclasses fix the rank.
  explicit BatchNorm(int64_t num_features, BatchNormLayerOptions options = {});
  virtual ~BatchNorm() = default;

  // Training mode (the default) uses batch statistics and updates the running ones; evaluation uses the
  // running statistics, or batch statistics when track_running_stats is false (as PyTorch does).
  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool is_training() const { return training_; }

  // y may be x itself (in place) for the forward. In training, keep x alive and unchanged until backward:
  // the layer keeps a view of it (and of nothing else), as autograd keeps the input. A forward in place
  // overwrites that input, so its backward throws (as PyTorch's autograd refuses a tensor modified in place).
  void forward(const TensorView& x, const TensorView& y);
  // Writes dx and accumulates the parameter gradients (grad_weight += ..., grad_bias += ...). Needs a forward
  // with batch statistics before it; each forward can be differentiated once.
  void backward(const TensorView& dy, const TensorView& dx);
  void zero_grad();

  int64_t num_features() const { return num_features_; }
  const BatchNormLayerOptions& options() const { return options_; }
  // Parameters (affine only; empty otherwise), initialised as PyTorch does: weight 1, bias 0.
  std::vector<float>& weight() { return weight_; }
  std::vector<float>& bias() { return bias_; }
  const std::vector<float>& grad_weight() const { return grad_weight_; }
  const std::vector<float>& grad_bias() const { return grad_bias_; }
  // Buffers (track_running_stats only; empty otherwise): running_mean 0, running_var 1, num_batches_tracked 0.
  std::vector<float>& running_mean() { return running_mean_; }
  std::vector<float>& running_var() { return running_var_; }
  int64_t num_batches_tracked() const { return num_batches_tracked_; }
  void reset_running_stats();

  // PyTorch's state_dict keys under `prefix` (e.g. "bn1." gives "bn1.weight"). load is strict, as PyTorch's
  // default: a missing or unexpected key of this layer, or a shape mismatch, throws and changes nothing.
  void save_to(StateDict& state, const std::string& prefix = "") const;
  void load_from(const StateDict& state, const std::string& prefix = "");

 protected:
  BatchNorm(int64_t num_features, BatchNormLayerOptions options, std::string name, std::vector<int64_t> ranks);

 private:
  void check_input(const TensorView& x, const char* what) const;

  std::string name_;
  std::vector<int64_t> ranks_;  // accepted input ranks
  int64_t num_features_;
  BatchNormLayerOptions options_;
  bool training_ = true;
  std::vector<float> weight_, bias_, grad_weight_, grad_bias_;
  std::vector<float> running_mean_, running_var_;
  int64_t num_batches_tracked_ = 0;
  // What the last batch-statistics forward saved for backward.
  std::optional<TensorView> saved_input_;
  bool saved_input_overwritten_ = false;  // that forward wrote y over x
  std::vector<float> save_mean_, save_invstd_;
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

}  // namespace fusednorm
