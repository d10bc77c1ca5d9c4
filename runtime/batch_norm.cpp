// The functional BatchNorm entry points: validate everything first (nothing is written before the kernel
// runs), pick the variant, call it over the caller's memory, then commit the running statistics.
#include "fusednorm/batch_norm.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/dispatch.h"
#include "runtime/halide_call.h"

namespace fusednorm {
namespace {

using detail::Direction;
using detail::HalideTensor;
using detail::KernelArgs;

constexpr const char* kFunction = "batch_norm";
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// x as the kernels see it: (N, C, S) with all spatial dimensions flattened into S, in one layout.
struct Geometry {
  int64_t batch, channels, spatial;
  Layout layout;
  std::string shape;  // "[8, 64, 56, 56]", for messages

  int64_t count() const { return batch * spatial; }
  // (extent, stride) innermost first, as the generated kernels index x.
  HalideTensor view(const float* data) const {
    if (layout == Layout::nchw) return HalideTensor(data, {{spatial, 1}, {channels, spatial}, {batch, channels * spatial}});
    return HalideTensor(data, {{channels, 1}, {spatial, channels}, {batch, channels * spatial}});
  }
  HalideTensor per_channel(const float* data) const { return HalideTensor(data, {{channels, 1}}); }
};

bool dense_in(const TensorView& t, Layout layout) {
  return layout == Layout::nchw ? t.is_contiguous() : t.is_channels_last();
}

std::string strides_string(const TensorView& t) { return fmt::format("[{}]", fmt::join(t.strides(), ", ")); }

Geometry check_input(const char* name, const TensorView& x) {
  if (x.dim() < 2 || x.dim() > 5) {
    throw Error(fmt::format("{}: {} has {} dimensions (shape {}), expected 2 to 5: (N, C) or (N, C, *spatial) with up "
                            "to 3 spatial dimensions",
                            kFunction, name, x.dim(), shape_string(x.shape())));
  }
  if (x.numel() == 0) {
    throw Error(fmt::format("{}: {} has no elements (shape {}), expected at least one", kFunction, name,
                            shape_string(x.shape())));
  }
  if (!x.data()) throw Error(fmt::format("{}: {} has a null data pointer", kFunction, name));
  Geometry g{x.size(0), x.size(1), 1, Layout::nchw, shape_string(x.shape())};
  for (int64_t d = 2; d < x.dim(); d++) g.spatial *= x.size(d);
  bool nchw = x.is_contiguous(), nhwc = x.is_channels_last();
  if (!nchw && !nhwc) {
    throw Error(fmt::format("{}: {} has strides {} for shape {}, expected a dense NCHW layout (strides {}) or NHWC "
                            "(channels-last, strides {}); FusedNorm does not copy into another layout",
                            kFunction, name, strides_string(x), g.shape,
                            strides_string(TensorView(nullptr, x.shape())),
                            strides_string(TensorView::channels_last(nullptr, x.shape()))));
  }
  // Both hold when the channel axis or the spatial extent is 1 (or N is 1): then the memory order is the same,
  // and the NHWC kernels vectorise over channels, which is the only axis longer than 1 when S is 1.
  g.layout = nhwc && (!nchw || g.spatial == 1) ? Layout::nhwc : Layout::nchw;
  if (g.channels * g.spatial > kInt32Max || g.batch > kInt32Max) {
    throw Error(fmt::format("{}: {} has shape {}: one sample (C x spatial = {}) or N exceeds 2^31 - 1 elements, "
                            "the most a kernel dimension can address",
                            kFunction, name, g.shape, g.channels * g.spatial));
  }
  return g;
}

void check_like_input(const char* name, const TensorView& t, const Geometry& g, const TensorView& x) {
  if (t.shape() != x.shape()) {
    throw Error(fmt::format("{}: {} has shape {}, expected {} (the shape of input)", kFunction, name,
                            shape_string(t.shape()), g.shape));
  }
  if (!t.data()) throw Error(fmt::format("{}: {} has a null data pointer", kFunction, name));
  if (!dense_in(t, g.layout)) {
    throw Error(fmt::format("{}: {} has strides {}, expected {} (dense {}, the layout of input)", kFunction, name,
                            strides_string(t), strides_string(TensorView::with_layout(nullptr, t.shape(), g.layout)),
                            to_string(g.layout)));
  }
}

void check_per_channel(const char* name, const std::optional<TensorView>& t, const Geometry& g) {
  if (!t) return;
  if (t->dim() != 1) {
    throw Error(fmt::format("{}: {} has shape {}, expected [{}] (one per channel of input {})", kFunction, name,
                            shape_string(t->shape()), g.channels, g.shape));
  }
  if (t->size(0) != g.channels) {
    throw Error(fmt::format("{}: {} has {} elements, expected {} (one per channel of input {})", kFunction, name,
                            t->size(0), g.channels, g.shape));
  }
  if (t->stride(0) != 1 && g.channels > 1) {
    throw Error(fmt::format("{}: {} has stride {}, expected 1 (dense)", kFunction, name, t->stride(0)));
  }
  if (!t->data()) throw Error(fmt::format("{}: {} has a null data pointer", kFunction, name));
}

// The bytes a view may touch, [first, last).
std::pair<const char*, const char*> extent_in_memory(const TensorView& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); d++) last += (t.size(d) - 1) * t.stride(d);
  const char* first = reinterpret_cast<const char*>(t.data());
  return {first, first + (last + 1) * static_cast<int64_t>(sizeof(float))};
}

// An output must not overlap an input (Halide assumes it does not), except where `same_allowed` and the
// output is exactly the input: elementwise outputs over x (in place) are read before they are written.
void check_no_overlap(const char* out_name, const std::optional<TensorView>& out, const char* in_name,
                      const std::optional<TensorView>& in, bool same_allowed = false) {
  if (!out || !in) return;
  if (same_allowed && out->data() == in->data() && out->strides() == in->strides()) return;
  auto [a0, a1] = extent_in_memory(*out);
  auto [b0, b1] = extent_in_memory(*in);
  if (a0 < b1 && b0 < a1) {
    throw Error(fmt::format("{}: {} overlaps {} in memory{}", kFunction, out_name, in_name,
                            same_allowed ? ", expected the same view (in place) or disjoint memory"
                                         : ", expected disjoint memory"));
  }
}

void check_eps(double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) {
    throw Error(fmt::format("{}: eps is {}, expected a finite number >= 0", kFunction, eps));
  }
}

// Per-channel memory the kernels need when the caller gave none (absent weight, bias, statistics, or
// outputs the caller does not want). Reused per thread: no allocation once it has grown to the largest C.
class ChannelScratch {
 public:
  ChannelScratch(int64_t channels, int count) : channels_(channels) {
    thread_local std::vector<float> storage;
    storage.resize(static_cast<size_t>(channels * count));
    data_ = storage.data();
  }
  float* slot(int i) { return data_ + i * channels_; }
  float* filled(int i, float value) {
    std::fill_n(slot(i), channels_, value);
    return slot(i);
  }

 private:
  int64_t channels_;
  float* data_;
};

const float* data_or(const std::optional<TensorView>& t, const float* fallback) { return t ? t->data() : fallback; }

void forward_training(const BatchNormForwardTensors& t, const BatchNormOptions& options, const Geometry& g) {
  const bool tracking = t.running_mean.has_value();
  if (g.count() <= 1) {
    throw Error(fmt::format("{}: Expected more than 1 value per channel when training, got input size {}", kFunction,
                            g.shape));
  }
  if (options.momentum && !std::isfinite(*options.momentum)) {
    throw Error(fmt::format("{}: momentum is {}, expected a finite number (or std::nullopt for a cumulative moving "
                            "average)",
                            kFunction, *options.momentum));
  }
  if (tracking && !options.momentum && !t.num_batches_tracked) {
    throw Error(fmt::format("{}: num_batches_tracked is null, expected a counter: momentum is std::nullopt "
                            "(cumulative moving average, momentum = 1 / num_batches_tracked)",
                            kFunction));
  }
  if (t.num_batches_tracked && *t.num_batches_tracked < 0) {
    throw Error(fmt::format("{}: num_batches_tracked is {}, expected >= 0", kFunction, *t.num_batches_tracked));
  }

  const bool affine = t.weight || t.bias;
  const detail::KernelVariant& variant =
      detail::select_variant({kFunction, Direction::forward_training, g.layout, affine});

  // Slots: 0 weight ones, 1 bias zeros, 2 running statistics when not tracking, 3..6 the four channel outputs.
  ChannelScratch scratch(g.channels, 7);
  const float* zeros = scratch.filled(2, 0.0f);
  HalideTensor x = g.view(t.input.data()), y = g.view(t.output.data());
  HalideTensor running_mean = g.per_channel(data_or(t.running_mean, zeros));
  HalideTensor running_var = g.per_channel(data_or(t.running_var, zeros));
  HalideTensor weight = g.per_channel(affine ? data_or(t.weight, scratch.filled(0, 1.0f)) : zeros);
  HalideTensor bias = g.per_channel(affine ? data_or(t.bias, scratch.filled(1, 0.0f)) : zeros);
  HalideTensor save_mean = g.per_channel(data_or(t.save_mean, scratch.slot(3)));
  HalideTensor save_invstd = g.per_channel(data_or(t.save_invstd, scratch.slot(4)));
  HalideTensor new_running_mean = g.per_channel(scratch.slot(5));
  HalideTensor new_running_var = g.per_channel(scratch.slot(6));

  const int64_t batches = t.num_batches_tracked ? *t.num_batches_tracked + 1 : 0;
  float momentum = static_cast<float>(options.momentum ? *options.momentum : 1.0 / static_cast<double>(batches));
  float eps = static_cast<float>(options.eps);
  const double count = static_cast<double>(g.count());
  float correction = options.running_variance_update == RunningVarianceUpdate::unbiased
                         ? static_cast<float>(count / (count - 1.0))
                         : 1.0f;

  KernelArgs args;
  args.bind("x", x);
  args.bind("running_mean", running_mean);
  args.bind("running_var", running_var);
  args.bind("momentum", &momentum);
  args.bind("eps", &eps);
  args.bind("running_var_correction", &correction);
  args.bind("y", y);
  args.bind("channel_outputs.0", save_mean);
  args.bind("channel_outputs.1", save_invstd);
  args.bind("channel_outputs.2", new_running_mean);
  args.bind("channel_outputs.3", new_running_var);
  if (affine) {
    args.bind("weight", weight);
    args.bind("bias", bias);
  }
  args.call(variant, kFunction);

  // The kernel succeeded: only now is the caller's state changed.
  if (tracking) {
    std::copy_n(scratch.slot(5), g.channels, t.running_mean->data());
    std::copy_n(scratch.slot(6), g.channels, t.running_var->data());
    if (t.num_batches_tracked) *t.num_batches_tracked = batches;
  }
}

void forward_inference(const BatchNormForwardTensors& t, const BatchNormOptions& options, const Geometry& g) {
  if (!t.running_mean) {
    throw Error(fmt::format("{}: running_mean and running_var are absent, expected both: evaluation (training = "
                            "false) normalizes with the running statistics",
                            kFunction));
  }
  const bool affine = t.weight || t.bias;
  const detail::KernelVariant& variant =
      detail::select_variant({kFunction, Direction::forward_inference, g.layout, affine});
  ChannelScratch scratch(g.channels, 2);
  HalideTensor x = g.view(t.input.data()), y = g.view(t.output.data());
  HalideTensor running_mean = g.per_channel(t.running_mean->data());
  HalideTensor running_var = g.per_channel(t.running_var->data());
  HalideTensor weight = g.per_channel(affine ? data_or(t.weight, scratch.filled(0, 1.0f)) : nullptr);
  HalideTensor bias = g.per_channel(affine ? data_or(t.bias, scratch.filled(1, 0.0f)) : nullptr);
  float eps = static_cast<float>(options.eps);

  KernelArgs args;
  args.bind("x", x);
  args.bind("running_mean", running_mean);
  args.bind("running_var", running_var);
  args.bind("eps", &eps);
  args.bind("y", y);
  if (affine) {
    args.bind("weight", weight);
    args.bind("bias", bias);
  }
  args.call(variant, kFunction);
}

}  // namespace

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& options) {
  Geometry g = check_input("input", t.input);
  check_like_input("output", t.output, g, t.input);
  check_per_channel("weight", t.weight, g);
  check_per_channel("bias", t.bias, g);
  check_per_channel("running_mean", t.running_mean, g);
  check_per_channel("running_var", t.running_var, g);
  check_per_channel("save_mean", t.save_mean, g);
  check_per_channel("save_invstd", t.save_invstd, g);
  if (t.running_mean.has_value() != t.running_var.has_value()) {
    throw Error(fmt::format("{}: {} is given but {} is not, expected both or neither", kFunction,
                            t.running_mean ? "running_mean" : "running_var",
                            t.running_mean ? "running_var" : "running_mean"));
  }
  check_eps(options.eps);

  const std::optional<TensorView> x = t.input, y = t.output;
  const std::pair<const char*, const std::optional<TensorView>*> inputs[] = {
      {"weight", &t.weight}, {"bias", &t.bias}, {"running_mean", &t.running_mean}, {"running_var", &t.running_var}};
  const std::pair<const char*, const std::optional<TensorView>*> outputs[] = {
      {"output", &y}, {"save_mean", &t.save_mean}, {"save_invstd", &t.save_invstd}};
  for (auto [out_name, out] : outputs) {
    check_no_overlap(out_name, *out, "input", x, out == &y);
    for (auto [in_name, in] : inputs) check_no_overlap(out_name, *out, in_name, *in);
  }
  check_no_overlap("save_mean", t.save_mean, "output", y);
  check_no_overlap("save_invstd", t.save_invstd, "output", y);
  check_no_overlap("save_invstd", t.save_invstd, "save_mean", t.save_mean);
  // In training the running statistics are written too (after the kernel): overlapping each other, one would
  // overwrite the other's update; overlapping an input, they would change it.
  if (options.training) {
    check_no_overlap("running_var", t.running_var, "running_mean", t.running_mean);
    for (auto [name, running] : {std::pair{"running_mean", &t.running_mean}, {"running_var", &t.running_var}}) {
      for (auto [in_name, in] : {std::pair{"input", &x}, {"weight", &t.weight}, {"bias", &t.bias}}) {
        check_no_overlap(name, *running, in_name, *in);
      }
    }
  }

  if (options.training) {
    forward_training(t, options, g);
  } else {
    forward_inference(t, options, g);
  }
}

void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& options) {
  Geometry g = check_input("input", t.input);
  check_like_input("grad_output", t.grad_output, g, t.input);
  check_like_input("grad_input", t.grad_input, g, t.input);
  for (auto [name, view] : {std::pair{"weight", &t.weight}, {"save_mean", &t.save_mean}, {"save_invstd", &t.save_invstd},
                            {"running_mean", &t.running_mean}, {"running_var", &t.running_var},
                            {"grad_weight", &t.grad_weight}, {"grad_bias", &t.grad_bias}}) {
    check_per_channel(name, *view, g);
  }
  if (options.training && !(t.save_mean && t.save_invstd)) {
    throw Error(fmt::format("{}: {} is absent, expected save_mean and save_invstd from the training forward "
                            "(training = true)",
                            kFunction, t.save_mean ? "save_invstd" : "save_mean"));
  }
  if (!options.training) {
    if (!(t.running_mean && t.running_var)) {
      throw Error(fmt::format("{}: {} is absent, expected running_mean and running_var: the evaluation forward "
                              "(training = false) normalized with them",
                              kFunction, t.running_mean ? "running_var" : "running_mean"));
    }
    check_eps(options.eps);
  }
  const std::optional<TensorView> x = t.input, dy = t.grad_output, dx = t.grad_input;
  const std::pair<const char*, const std::optional<TensorView>*> inputs[] = {
      {"input", &x},           {"grad_output", &dy},         {"weight", &t.weight},
      {"save_mean", &t.save_mean}, {"save_invstd", &t.save_invstd}, {"running_mean", &t.running_mean},
      {"running_var", &t.running_var}};
  const std::pair<const char*, const std::optional<TensorView>*> outputs[] = {
      {"grad_input", &dx}, {"grad_weight", &t.grad_weight}, {"grad_bias", &t.grad_bias}};
  for (auto [out_name, out] : outputs) {
    for (auto [in_name, in] : inputs) check_no_overlap(out_name, *out, in_name, *in);
  }
  check_no_overlap("grad_weight", t.grad_weight, "grad_input", dx);
  check_no_overlap("grad_bias", t.grad_bias, "grad_input", dx);
  check_no_overlap("grad_bias", t.grad_bias, "grad_weight", t.grad_weight);

  const bool affine = t.weight || t.grad_weight || t.grad_bias;
  const detail::KernelVariant& variant = detail::select_variant({kFunction, Direction::backward, g.layout, affine});

  // Slots: 0 weight ones, 1 invstd from the running variance (evaluation), 2 and 3 unwanted parameter gradients.
  ChannelScratch scratch(g.channels, 4);
  const float* mean = options.training ? t.save_mean->data() : t.running_mean->data();
  const float* invstd = options.training ? t.save_invstd->data() : scratch.slot(1);
  if (!options.training) {
    for (int64_t c = 0; c < g.channels; c++) {
      scratch.slot(1)[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(t.running_var->data()[c]) + options.eps));
    }
  }
  HalideTensor x_buffer = g.view(t.input.data()), dy_buffer = g.view(t.grad_output.data());
  HalideTensor dx_buffer = g.view(t.grad_input.data());
  HalideTensor mean_buffer = g.per_channel(mean), invstd_buffer = g.per_channel(invstd);
  HalideTensor weight = g.per_channel(data_or(t.weight, scratch.filled(0, 1.0f)));
  HalideTensor grad_weight = g.per_channel(data_or(t.grad_weight, scratch.slot(2)));
  HalideTensor grad_bias = g.per_channel(data_or(t.grad_bias, scratch.slot(3)));
  bool training = options.training;

  KernelArgs args;
  args.bind("x", x_buffer);
  args.bind("dy", dy_buffer);
  args.bind("mean", mean_buffer);
  args.bind("invstd", invstd_buffer);
  args.bind("training", &training);
  args.bind("dx", dx_buffer);
  if (affine) {
    args.bind("weight", weight);
    args.bind("param_grads.0", grad_weight);
    args.bind("param_grads.1", grad_bias);
  }
  args.call(variant, kFunction);
}

}  // namespace fusednorm
