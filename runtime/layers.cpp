// The layers of include/fusednorm/layers.h: each validates its options and inputs and calls its functional API;
// the protocol they share (saved forward, gradient accumulation, state dict) is NormLayer's, in norm_layer.cpp.
#include "fusednorm/layers.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "runtime/checks.h"
#include "runtime/norm_common.h"

namespace fusednorm {

namespace {
// "4", "2 or 3", "2, 3, 4 or 5".
std::string ranks_string(std::span<const int64_t> ranks) {
  if (ranks.size() == 1) return fmt::format("{}", ranks[0]);
  return fmt::format("{} or {}", fmt::join(ranks.begin(), ranks.end() - 1, ", "), ranks.back());
}

void check_at_least_one(const std::string& layer, const char* argument, int64_t value) {
  if (value < 1) throw Error(fmt::format("{}: {} is {}, expected >= 1", layer, argument, value));
}

Error rank_error(const std::string& layer, const TensorView& x, const char* what, const std::string& expected) {
  return Error(fmt::format("{}: {} has {} dimensions (shape {}), expected {}", layer, what, x.dim(),
                           shape_string(x.shape()), expected));
}

void check_rank(const std::string& layer, const TensorView& x, const char* what, std::span<const int64_t> ranks) {
  if (std::find(ranks.begin(), ranks.end(), x.dim()) == ranks.end()) throw rank_error(layer, x, what, ranks_string(ranks));
}

void check_channels(const std::string& layer, const TensorView& x, const char* what, int64_t channel_dim,
                    int64_t channels, const char* argument) {
  if (x.size(channel_dim) != channels) {
    throw Error(fmt::format("{}: {} has {} channels (shape {}), expected {} ({})", layer, what, x.size(channel_dim),
                            shape_string(x.shape()), channels, argument));
  }
}

// (*, normalized_shape): at least its dimensions, and they trail.
void check_normalized_input(const std::string& layer, const TensorView& x, const char* what,
                            const std::vector<int64_t>& normalized_shape) {
  const size_t k = normalized_shape.size();
  const std::span<const int64_t> shape = x.shape();
  if (shape.size() < k || !std::equal(normalized_shape.begin(), normalized_shape.end(), shape.end() - k)) {
    throw Error(fmt::format("{}: {} has shape {}, expected (*, {}) (trailing dimensions normalized_shape {})", layer,
                            what, shape_string(shape), fmt::join(normalized_shape, ", "),
                            shape_string(normalized_shape)));
  }
}

void check_normalized_shape(const std::string& layer, const std::vector<int64_t>& normalized_shape) {
  if (normalized_shape.empty() ||
      std::any_of(normalized_shape.begin(), normalized_shape.end(), [](int64_t extent) { return extent < 1; })) {
    throw Error(fmt::format("{}: normalized_shape is {}, expected at least one dimension, each >= 1", layer,
                            shape_string(normalized_shape)));
  }
  detail::checked_product(layer, "normalized_shape", normalized_shape);
}

TensorView vector_view(std::vector<float>& values) {
  return TensorView(values.data(), {static_cast<int64_t>(values.size())});
}

// The per-row statistics of LayerNorm and RMSNorm: one per row, the product of the leading dimensions.
int64_t rows_of(const TensorView& x, const std::vector<int64_t>& normalized_shape) {
  int64_t rows = 1;
  for (size_t d = 0; d + normalized_shape.size() < x.shape().size(); d++) rows *= x.size(static_cast<int64_t>(d));
  return rows;
}

detail::LayerContents batch_norm_contents(const std::string& name, int64_t num_features,
                                          const BatchNormLayerOptions& options) {
  check_at_least_one(name, "num_features", num_features);
  detail::check_eps(name.c_str(), options.eps);
  // Checked here, not first at a forward: a NaN momentum was accepted by the constructor.
  if (options.momentum) {
    detail::check_momentum(name.c_str(), *options.momentum, " (or std::nullopt for a cumulative moving average)");
  }
  if (options.epilogue == Epilogue::silu) {
    throw Error(fmt::format("{}: epilogue is silu, expected none, relu or add_relu", name));
  }
  return {.feature_shape = {num_features},
          .has_weight = options.affine,
          .has_bias = options.affine,
          .has_running_stats = options.track_running_stats,
          .dtype = options.dtype,
          .options = fmt::format("affine={}, track_running_stats={}", options.affine, options.track_running_stats)};
}

detail::LayerContents instance_norm_contents(const std::string& name, int64_t num_features,
                                             const InstanceNormLayerOptions& options) {
  check_at_least_one(name, "num_features", num_features);
  detail::check_eps(name.c_str(), options.eps);
  if (options.momentum) detail::check_momentum(name.c_str(), *options.momentum, " (or std::nullopt for 0)");
  return {.feature_shape = {num_features},
          .has_weight = options.affine,
          .has_bias = options.affine,
          .has_running_stats = options.track_running_stats,
          .dtype = options.dtype,
          .options = fmt::format("affine={}, track_running_stats={}", options.affine, options.track_running_stats)};
}

detail::LayerContents group_norm_contents(int64_t num_groups, int64_t num_channels,
                                          const GroupNormLayerOptions& options) {
  check_at_least_one("GroupNorm", "num_groups", num_groups);
  check_at_least_one("GroupNorm", "num_channels", num_channels);
  if (num_channels % num_groups != 0) {
    throw Error(
        fmt::format("GroupNorm: num_channels is {}, expected a multiple of num_groups ({})", num_channels, num_groups));
  }
  detail::check_eps("GroupNorm", options.eps);
  return {.feature_shape = {num_channels},
          .has_weight = options.affine,
          .has_bias = options.affine,
          .dtype = options.dtype,
          .options = fmt::format("affine={}", options.affine)};
}

detail::LayerContents layer_norm_contents(std::vector<int64_t> normalized_shape, const LayerNormLayerOptions& options) {
  check_normalized_shape("LayerNorm", normalized_shape);
  detail::check_eps("LayerNorm", options.eps);
  return {.feature_shape = std::move(normalized_shape),
          .has_weight = options.elementwise_affine,
          .has_bias = options.elementwise_affine && options.bias,
          .dtype = options.dtype,
          .options = fmt::format("elementwise_affine={}, bias={}", options.elementwise_affine, options.bias)};
}

detail::LayerContents rms_norm_contents(std::vector<int64_t> normalized_shape, const RMSNormLayerOptions& options) {
  check_normalized_shape("RMSNorm", normalized_shape);
  if (options.eps) detail::check_eps("RMSNorm", *options.eps);
  return {.feature_shape = std::move(normalized_shape),
          .has_weight = options.elementwise_affine,
          .dtype = options.dtype,
          .options = fmt::format("elementwise_affine={}", options.elementwise_affine)};
}
}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// BatchNorm

BatchNorm::BatchNorm(int64_t num_features, BatchNormLayerOptions options)
    : BatchNorm(num_features, options, "BatchNorm", {2, 3, 4, 5}) {}

BatchNorm::BatchNorm(int64_t num_features, BatchNormLayerOptions options, std::string name, std::vector<int64_t> ranks,
                     Communicator* process_group)
    : NormLayer(name, batch_norm_contents(name, num_features, options), options.epilogue),
      ranks_(std::move(ranks)),
      num_features_(num_features),
      options_(options),
      process_group_(process_group) {}

void BatchNorm::check_input(const TensorView& x, const char* what) const {
  check_rank(name(), x, what, ranks_);
  check_channels(name(), x, what, 1, num_features_, "num_features");
}

std::string BatchNorm::differentiable_forward() const {
  return "a forward with batch statistics (training mode, or track_running_stats=false)";
}

bool BatchNorm::run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y,
                            Saved& saved) {
  const bool batch_statistics = is_training() || !options_.track_running_stats;
  const bool update_running = is_training() && options_.track_running_stats;

  BatchNormForwardTensors t{.input = x, .output = y, .weight = weight_view(), .bias = bias_view(), .residual = z};
  // In evaluation the running statistics are read; in training they are updated (PyTorch passes them in both).
  if (options_.track_running_stats) {
    t.running_mean = vector_view(running_mean());
    t.running_var = vector_view(running_var());
    if (update_running) t.num_batches_tracked = &num_batches_tracked_counter();
  }
  if (batch_statistics) {
    saved.mean.resize(static_cast<size_t>(num_features_));
    saved.invstd.resize(saved.mean.size());
    t.save_mean = vector_view(saved.mean);
    t.save_invstd = vector_view(saved.invstd);
  }
  const BatchNormOptions functional{.training = batch_statistics,
                                    .eps = options_.eps,
                                    .momentum = options_.momentum,
                                    .running_variance_update = options_.running_variance_update,
                                    .epilogue = options_.epilogue};
  if (process_group_) {
    sync_batch_norm_forward(t, *process_group_, functional);
  } else {
    batch_norm_forward(t, functional);
  }
  return batch_statistics;
}

void BatchNorm::run_backward(Saved& saved, const TensorView& dy, const TensorView& dx,
                             const std::optional<TensorView>& dz, const ParameterGrads& grads) {
  BatchNormBackwardTensors t{.grad_output = dy,
                             .input = saved.input,
                             .grad_input = dx,
                             .weight = weight_view(),
                             .save_mean = vector_view(saved.mean),
                             .save_invstd = vector_view(saved.invstd),
                             .grad_weight = grads.weight,
                             .grad_bias = grads.bias,
                             .output = saved.output,
                             .grad_residual = dz};
  const BatchNormOptions functional{.training = true, .eps = options_.eps, .epilogue = options_.epilogue};
  if (process_group_) {
    sync_batch_norm_backward(t, *process_group_, functional);
  } else {
    batch_norm_backward(t, functional);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// InstanceNorm

InstanceNorm::InstanceNorm(int64_t num_features, InstanceNormLayerOptions options, std::string name,
                           int64_t spatial_dims)
    : NormLayer(name, instance_norm_contents(name, num_features, options), Epilogue::none),
      spatial_dims_(spatial_dims),
      num_features_(num_features),
      options_(options) {}

void InstanceNorm::check_input(const TensorView& x, const char* what) const {
  const int64_t unbatched = spatial_dims_ + 1;
  if (x.dim() != unbatched && x.dim() != unbatched + 1) {
    throw rank_error(name(), x, what, fmt::format("{} (unbatched) or {}", unbatched, unbatched + 1));
  }
  // PyTorch only warns about a channel count other than num_features when affine is false (num_features is then
  // unused without running statistics); such a mismatch is refused here.
  check_channels(name(), x, what, x.dim() == unbatched ? 0 : 1, num_features_, "num_features");
}

std::string InstanceNorm::differentiable_forward() const {
  return "a forward with instance statistics (training mode, or track_running_stats=false)";
}

TensorView InstanceNorm::batched(const TensorView& view) const {
  if (view.dim() != spatial_dims_ + 1) return view;
  // A dimension of extent 1: its stride does not matter.
  std::array<int64_t, TensorView::kMaxDims> shape{1}, strides{view.numel()};
  std::ranges::copy(view.shape(), shape.begin() + 1);
  std::ranges::copy(view.strides(), strides.begin() + 1);
  const size_t rank = static_cast<size_t>(view.dim()) + 1;
  return TensorView({view.data_ptr(), view.dtype()}, std::span(shape.data(), rank), std::span(strides.data(), rank));
}

bool InstanceNorm::run_forward(const TensorView& x, const std::optional<TensorView>&, const TensorView& y,
                               Saved& saved) {
  // PyTorch's use_input_stats: training, or evaluation without running statistics.
  const bool use_input_stats = is_training() || !options_.track_running_stats;
  const TensorView input = batched(x);
  InstanceNormForwardTensors t{.input = input, .output = batched(y), .weight = weight_view(), .bias = bias_view()};
  // Read in evaluation, updated in training.
  if (options_.track_running_stats) {
    t.running_mean = vector_view(running_mean());
    t.running_var = vector_view(running_var());
  }
  if (use_input_stats) {
    detail::check_channels_input("instance_norm", input);  // before allocating statistics for its N
    const int64_t statistics_shape[] = {input.size(0), num_features_};
    saved.mean.resize(static_cast<size_t>(input.size(0) * num_features_));
    saved.invstd.resize(saved.mean.size());
    t.save_mean = TensorView(saved.mean.data(), statistics_shape);
    t.save_invstd = TensorView(saved.invstd.data(), statistics_shape);
  }
  instance_norm_forward(
      t, InstanceNormOptions{
             .use_input_stats = use_input_stats, .eps = options_.eps, .momentum = options_.momentum.value_or(0.0)});
  return use_input_stats;
}

void InstanceNorm::run_backward(Saved& saved, const TensorView& dy, const TensorView& dx,
                                const std::optional<TensorView>&, const ParameterGrads& grads) {
  const TensorView input = batched(saved.input);
  const int64_t statistics_shape[] = {input.size(0), num_features_};
  InstanceNormBackwardTensors t{.grad_output = batched(dy),
                                .input = input,
                                .grad_input = batched(dx),
                                .weight = weight_view(),
                                .save_mean = TensorView(saved.mean.data(), statistics_shape),
                                .save_invstd = TensorView(saved.invstd.data(), statistics_shape),
                                .grad_weight = grads.weight,
                                .grad_bias = grads.bias};
  instance_norm_backward(t, InstanceNormOptions{.use_input_stats = true, .eps = options_.eps});
}

// ---------------------------------------------------------------------------------------------------------------
// GroupNorm

GroupNorm::GroupNorm(int64_t num_groups, int64_t num_channels, GroupNormLayerOptions options)
    : NormLayer("GroupNorm", group_norm_contents(num_groups, num_channels, options), options.epilogue),
      num_groups_(num_groups),
      num_channels_(num_channels),
      options_(options) {}

void GroupNorm::check_input(const TensorView& x, const char* what) const {
  static constexpr int64_t kRanks[] = {2, 3, 4, 5};
  check_rank(name(), x, what, kRanks);
  check_channels(name(), x, what, 1, num_channels_, "num_channels");
}

bool GroupNorm::run_forward(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y,
                            Saved& saved) {
  detail::check_channels_input("group_norm", x);  // before allocating statistics for its N
  const int64_t statistics_shape[] = {x.size(0), num_groups_};
  saved.mean.resize(static_cast<size_t>(x.size(0) * num_groups_));
  saved.invstd.resize(saved.mean.size());
  group_norm_forward({.input = x,
                      .output = y,
                      .weight = weight_view(),
                      .bias = bias_view(),
                      .save_mean = TensorView(saved.mean.data(), statistics_shape),
                      .save_invstd = TensorView(saved.invstd.data(), statistics_shape),
                      .residual = z},
                     GroupNormOptions{.num_groups = num_groups_, .eps = options_.eps, .epilogue = options_.epilogue});
  return true;
}

void GroupNorm::run_backward(Saved& saved, const TensorView& dy, const TensorView& dx,
                             const std::optional<TensorView>& dz, const ParameterGrads& grads) {
  const int64_t statistics_shape[] = {saved.input.size(0), num_groups_};
  // SiLU's derivative needs v = xhat * weight + bias, which the backward recomputes.
  const bool needs_bias = options_.epilogue == Epilogue::silu;
  group_norm_backward({.grad_output = dy,
                       .input = saved.input,
                       .grad_input = dx,
                       .save_mean = TensorView(saved.mean.data(), statistics_shape),
                       .save_invstd = TensorView(saved.invstd.data(), statistics_shape),
                       .weight = weight_view(),
                       .bias = needs_bias ? bias_view() : std::nullopt,
                       .output = saved.output,
                       .grad_residual = dz,
                       .grad_weight = grads.weight,
                       .grad_bias = grads.bias},
                      GroupNormOptions{.num_groups = num_groups_, .eps = options_.eps, .epilogue = options_.epilogue});
}

// ---------------------------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm

LayerNorm::LayerNorm(std::vector<int64_t> normalized_shape, LayerNormLayerOptions options)
    : NormLayer("LayerNorm", layer_norm_contents(std::move(normalized_shape), options), Epilogue::none),
      options_(options),
      call_options_{.normalized_shape = this->normalized_shape(), .eps = options.eps} {}

void LayerNorm::check_input(const TensorView& x, const char* what) const {
  check_normalized_input(name(), x, what, normalized_shape());
}

bool LayerNorm::run_forward(const TensorView& x, const std::optional<TensorView>&, const TensorView& y, Saved& saved) {
  detail::check_rows_input("layer_norm", x, normalized_shape());  // before allocating statistics for its rows
  saved.mean.resize(static_cast<size_t>(rows_of(x, normalized_shape())));
  saved.invstd.resize(saved.mean.size());
  layer_norm_forward({.input = x,
                      .output = y,
                      .weight = weight_view(),
                      .bias = bias_view(),
                      .save_mean = vector_view(saved.mean),
                      .save_invstd = vector_view(saved.invstd)},
                     call_options_);
  return true;
}

void LayerNorm::run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>&,
                             const ParameterGrads& grads) {
  layer_norm_backward({.grad_output = dy,
                       .input = saved.input,
                       .grad_input = dx,
                       .save_mean = vector_view(saved.mean),
                       .save_invstd = vector_view(saved.invstd),
                       .weight = weight_view(),
                       .grad_weight = grads.weight,
                       .grad_bias = grads.bias},
                      call_options_);
}

RMSNorm::RMSNorm(std::vector<int64_t> normalized_shape, RMSNormLayerOptions options)
    : NormLayer("RMSNorm", rms_norm_contents(std::move(normalized_shape), options), Epilogue::none),
      options_(options),
      call_options_{.normalized_shape = this->normalized_shape(), .eps = eps()} {}

double RMSNorm::eps() const { return options_.eps.value_or(detail::kRmsNormDefaultEps); }

void RMSNorm::check_input(const TensorView& x, const char* what) const {
  check_normalized_input(name(), x, what, normalized_shape());
}

bool RMSNorm::run_forward(const TensorView& x, const std::optional<TensorView>&, const TensorView& y, Saved& saved) {
  detail::check_rows_input("rms_norm", x, normalized_shape());  // before allocating statistics for its rows
  saved.invstd.resize(static_cast<size_t>(rows_of(x, normalized_shape())));
  rms_norm_forward({.input = x, .output = y, .weight = weight_view(), .save_invstd = vector_view(saved.invstd)},
                   call_options_);
  return true;
}

void RMSNorm::run_backward(Saved& saved, const TensorView& dy, const TensorView& dx, const std::optional<TensorView>&,
                           const ParameterGrads& grads) {
  rms_norm_backward({.grad_output = dy,
                     .input = saved.input,
                     .grad_input = dx,
                     .save_invstd = vector_view(saved.invstd),
                     .weight = weight_view(),
                     .grad_weight = grads.weight},
                    call_options_);
}

}  // namespace fusednorm
