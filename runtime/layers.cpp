#include "fusednorm/layers.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "fusednorm/error.h"

namespace fusednorm {

namespace {
std::string ranks_string(const std::vector<int64_t>& ranks) {
  return ranks.size() == 1 ? fmt::format("{}", ranks[0]) : fmt::format("{}", fmt::join(ranks, " or "));
}

TensorView per_channel(std::vector<float>& values) {
  return TensorView(values.data(), {static_cast<int64_t>(values.size())});
}
}  // namespace

BatchNorm::BatchNorm(int64_t num_features, BatchNormLayerOptions options)
    : BatchNorm(num_features, options, "BatchNorm", {2, 3, 4, 5}) {}

BatchNorm::BatchNorm(int64_t num_features, BatchNormLayerOptions options, std::string name,
                     std::vector<int64_t> ranks)
    : name_(std::move(name)), ranks_(std::move(ranks)), num_features_(num_features), options_(options) {
  if (num_features < 1) {
    throw Error(fmt::format("{}: num_features is {}, expected >= 1", name_, num_features));
  }
  if (!(options.eps >= 0.0) || !std::isfinite(options.eps)) {
    throw Error(fmt::format("{}: eps is {}, expected a finite number >= 0", name_, options.eps));
  }
  const size_t c = static_cast<size_t>(num_features);
  if (options.affine) {
    weight_.assign(c, 1.0f);
    bias_.assign(c, 0.0f);
    grad_weight_.assign(c, 0.0f);
    grad_bias_.assign(c, 0.0f);
  }
  if (options.track_running_stats) reset_running_stats();
}

void BatchNorm::reset_running_stats() {
  if (!options_.track_running_stats) return;
  running_mean_.assign(static_cast<size_t>(num_features_), 0.0f);
  running_var_.assign(static_cast<size_t>(num_features_), 1.0f);
  num_batches_tracked_ = 0;
}

void BatchNorm::check_input(const TensorView& x, const char* what) const {
  if (std::find(ranks_.begin(), ranks_.end(), x.dim()) == ranks_.end()) {
    throw Error(fmt::format("{}: {} has {} dimensions (shape {}), expected {}", name_, what, x.dim(),
                            shape_string(x.shape()), ranks_string(ranks_)));
  }
  if (x.size(1) != num_features_) {
    throw Error(fmt::format("{}: {} has {} channels (shape {}), expected {} (num_features)", name_, what, x.size(1),
                            shape_string(x.shape()), num_features_));
  }
}

void BatchNorm::forward(const TensorView& x, const TensorView& y) {
  check_input(x, "input");
  const bool batch_statistics = training_ || !options_.track_running_stats;
  const bool update_running = training_ && options_.track_running_stats;
  std::vector<float> mean(static_cast<size_t>(num_features_)), invstd(mean.size());

  BatchNormForwardTensors t{.input = x, .output = y};
  if (options_.affine) {
    t.weight = per_channel(weight_);
    t.bias = per_channel(bias_);
  }
  // In evaluation the running statistics are read; in training they are updated (PyTorch passes them in both).
  if (options_.track_running_stats && (update_running || !batch_statistics)) {
    t.running_mean = per_channel(running_mean_);
    t.running_var = per_channel(running_var_);
    if (update_running) t.num_batches_tracked = &num_batches_tracked_;
  }
  if (batch_statistics) {
    t.save_mean = per_channel(mean);
    t.save_invstd = per_channel(invstd);
  }
  BatchNormOptions o{.training = batch_statistics,
                     .eps = options_.eps,
                     .momentum = options_.momentum,
                     .running_variance_update = options_.running_variance_update};
  batch_norm_forward(t, o);

  // Only after success: what backward needs.
  if (batch_statistics) {
    saved_input_ = x;
    // batch_norm_forward accepts no overlap of y and x but the same view: y.data() == x.data() is in place.
    saved_input_overwritten_ = y.data() == x.data();
    save_mean_ = std::move(mean);
    save_invstd_ = std::move(invstd);
  } else {
    saved_input_.reset();
  }
}

void BatchNorm::backward(const TensorView& dy, const TensorView& dx) {
  if (!saved_input_) {
    throw Error(fmt::format("{}: backward has no forward to differentiate, expected a forward with batch statistics "
                            "(training mode, or track_running_stats=false) since the last backward",
                            name_));
  }
  if (saved_input_overwritten_) {
    throw Error(fmt::format("{}: backward of a forward that ran in place (output was input): the input it needs "
                            "was overwritten, expected a forward with an output apart from its input",
                            name_));
  }
  check_input(dy, "grad_output");
  std::vector<float> dweight(static_cast<size_t>(num_features_)), dbias(dweight.size());
  BatchNormBackwardTensors t{.grad_output = dy,
                             .input = *saved_input_,
                             .grad_input = dx,
                             .save_mean = per_channel(save_mean_),
                             .save_invstd = per_channel(save_invstd_)};
  if (options_.affine) {
    t.weight = per_channel(weight_);
    t.grad_weight = per_channel(dweight);
    t.grad_bias = per_channel(dbias);
  }
  batch_norm_backward(t, BatchNormOptions{.training = true, .eps = options_.eps});

  if (options_.affine) {
    for (size_t c = 0; c < dweight.size(); c++) {
      grad_weight_[c] += dweight[c];
      grad_bias_[c] += dbias[c];
    }
  }
  saved_input_.reset();
}

void BatchNorm::zero_grad() {
  std::fill(grad_weight_.begin(), grad_weight_.end(), 0.0f);
  std::fill(grad_bias_.begin(), grad_bias_.end(), 0.0f);
}

void BatchNorm::save_to(StateDict& state, const std::string& prefix) const {
  if (options_.affine) {
    state[prefix + "weight"] = StateTensor::from_floats(weight_);
    state[prefix + "bias"] = StateTensor::from_floats(bias_);
  }
  if (options_.track_running_stats) {
    state[prefix + "running_mean"] = StateTensor::from_floats(running_mean_);
    state[prefix + "running_var"] = StateTensor::from_floats(running_var_);
    state[prefix + "num_batches_tracked"] = StateTensor::scalar_int64(num_batches_tracked_);
  }
}

void BatchNorm::load_from(const StateDict& state, const std::string& prefix) {
  std::vector<std::string> expected;
  if (options_.affine) expected.insert(expected.end(), {"weight", "bias"});
  if (options_.track_running_stats) expected.insert(expected.end(), {"running_mean", "running_var", "num_batches_tracked"});

  // Check everything first: a failed load changes nothing.
  for (const std::string& key : expected) {
    auto it = state.find(prefix + key);
    if (it == state.end()) throw Error(fmt::format("{}: load_from: missing key '{}{}'", name_, prefix, key));
    const StateTensor& t = it->second;
    const bool scalar = key == "num_batches_tracked";
    const auto want_dtype = scalar ? StateTensor::DType::int64 : StateTensor::DType::float32;
    const std::vector<int64_t> want_shape = scalar ? std::vector<int64_t>{} : std::vector<int64_t>{num_features_};
    if (t.dtype != want_dtype || t.shape != want_shape) {
      throw Error(fmt::format("{}: load_from: '{}{}' is {} {}, expected {} {}", name_, prefix, key,
                              t.dtype == StateTensor::DType::int64 ? "int64" : "float32", shape_string(t.shape),
                              scalar ? "int64" : "float32", shape_string(want_shape)));
    }
    // A StateTensor built by hand may not hold the values its shape says; load_state_dict's always do.
    const size_t values = scalar ? t.i64.size() : t.f32.size();
    if (static_cast<int64_t>(values) != t.numel()) {
      throw Error(fmt::format("{}: load_from: '{}{}' has {} values, expected {} (shape {})", name_, prefix, key, values,
                              t.numel(), shape_string(t.shape)));
    }
  }
  const std::string layer_keys[] = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"};
  for (const std::string& key : layer_keys) {
    if (state.count(prefix + key) && std::find(expected.begin(), expected.end(), key) == expected.end()) {
      throw Error(fmt::format("{}: load_from: unexpected key '{}{}' (affine={}, track_running_stats={})", name_,
                              prefix, key, options_.affine, options_.track_running_stats));
    }
  }
  if (options_.affine) {
    weight_ = state.at(prefix + "weight").f32;
    bias_ = state.at(prefix + "bias").f32;
  }
  if (options_.track_running_stats) {
    running_mean_ = state.at(prefix + "running_mean").f32;
    running_var_ = state.at(prefix + "running_var").f32;
    num_batches_tracked_ = state.at(prefix + "num_batches_tracked").i64.at(0);
  }
}

}  // namespace fusednorm
