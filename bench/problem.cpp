#include "bench/problem.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "bench/copy_ceiling.h"
#include "bench/naive_batch_norm.h"
#include "bench/naive_norms.h"
#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"

namespace fusednorm::bench {
namespace {

// Where BN + ReLU's set 0 keeps its normalized values v away from 0 (see keep_off_relu_kink).
constexpr float kReluMargin = 1e-3f;

std::vector<float> random_vector(int64_t count, float low, float high, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(count));
  fill_uniform(v.data(), count, low, high, seed);
  return v;
}

BatchNormOptions training_options(Op op) {
  return {.training = true, .eps = kEps, .momentum = kMomentum, .epilogue = epilogue(op)};
}
BatchNormOptions inference_options() { return {.training = false, .eps = kEps, .momentum = kMomentum}; }

// The views of one run's tensors: x, y (or dx), dy and the forward's y, per channel and per statistic.
struct Views {
  Problem& p;
  int set;
  bool in_place;

  BufferSet& buffers() const { return p.sets[static_cast<size_t>(set)]; }
  TensorView full(const AlignedBuffer& buffer, DType dtype = DType::float32) const {
    const ElementPointer data(buffer.data(), dtype);
    if (is_rows(p.op)) return TensorView(data, p.shape.shape);
    return TensorView::with_layout(data, p.shape.shape, p.layout);
  }
  bool half() const { return p.dtype != DType::float32; }
  TensorView x() const {
    if (half()) return full(buffers().x16, p.dtype);
    return full(in_place ? p.in_place[static_cast<size_t>(set)] : buffers().x);
  }
  TensorView y() const {  // y, or dx for the backward
    if (half()) return full(buffers().output16, p.dtype);
    return in_place ? x() : full(buffers().output);
  }
  TensorView dy() const { return half() ? full(buffers().grad_output16, p.dtype) : full(buffers().grad_output); }
  TensorView forward_y() const { return full(buffers().forward_output); }
  TensorView per_channel(std::vector<float>& v) const {
    return is_rows(p.op) ? TensorView(v.data(), p.normalized_shape) : TensorView(v.data(), {p.dims.c});
  }
  // GroupNorm's statistics are (N, groups), InstanceNorm's (N, C); LayerNorm's and RMSNorm's one per row;
  // BatchNorm's one per channel.
  TensorView per_statistic(std::vector<float>& v) const {
    if (p.op == Op::group_norm) return TensorView(v.data(), {p.dims.n, p.shape.groups});
    if (p.op == Op::instance_norm) return TensorView(v.data(), {p.dims.n, p.dims.c});
    return TensorView(v.data(), {static_cast<int64_t>(v.size())});
  }
};

void run_batch_norm(Direction direction, const Views& v) {
  ChannelTensors& ch = v.p.channels;
  // In place, each run starts from the previous run's output. The training forward's output normalized again
  // is itself (up to eps and rounding), so it can run on it indefinitely. The inference is an affine map per
  // channel with slopes up to 2.1 here (weight / sqrt(running_var)), which would overflow to inf in about 120
  // runs, so every other run on a buffer undoes the previous one with the inverse parameters.
  const int runs_before = v.in_place ? v.p.in_place_runs[static_cast<size_t>(v.set)]++ : 0;
  const bool inverse = direction == Direction::forward_inference && runs_before % 2 == 1;
  switch (direction) {
    case Direction::forward_training:
      batch_norm_forward({.input = v.x(),
                          .output = v.y(),
                          .weight = v.per_channel(ch.weight),
                          .bias = v.per_channel(ch.bias),
                          .running_mean = v.per_channel(ch.running_mean),
                          .running_var = v.per_channel(ch.running_var),
                          .save_mean = v.per_channel(ch.save_mean),
                          .save_invstd = v.per_channel(ch.save_invstd)},
                         training_options(v.p.op));
      return;
    case Direction::forward_inference:
      batch_norm_forward({.input = v.x(),
                          .output = v.y(),
                          .weight = v.per_channel(inverse ? ch.inverse_weight : ch.weight),
                          .bias = v.per_channel(inverse ? ch.inverse_bias : ch.bias),
                          .running_mean = v.per_channel(inverse ? ch.inverse_running_mean : ch.running_mean),
                          .running_var = v.per_channel(inverse ? ch.inverse_running_var : ch.running_var)},
                         inference_options());
      return;
    case Direction::backward: {
      BatchNormBackwardTensors tensors{.grad_output = v.dy(),
                                       .input = v.x(),
                                       .grad_input = v.y(),
                                       .weight = v.per_channel(ch.weight),
                                       .save_mean = v.per_channel(ch.batch_mean),
                                       .save_invstd = v.per_channel(ch.batch_invstd),
                                       .grad_weight = v.per_channel(ch.grad_weight),
                                       .grad_bias = v.per_channel(ch.grad_bias)};
      if (needs_forward_output(v.p.op)) tensors.output = v.forward_y();
      batch_norm_backward(tensors, training_options(v.p.op));
      return;
    }
    case Direction::statistics:  // SyncBatchNorm's split kernels: not a bench direction (bench/cases.cpp)
    case Direction::backward_reduce:
    case Direction::backward_elementwise: break;
  }
  throw std::logic_error("run_batch_norm: not a bench direction");
}

// LayerNorm, GroupNorm and InstanceNorm take the same tensors (their types differ, and the order of the
// backward's, so it is filled member by member): the saved statistics per (group or channel, sample) or row.
template <typename ForwardTensors, typename BackwardTensors, typename Options>
void run_norm_with_saved_statistics(Direction direction, const Views& v, const Options& options,
                                    void (*forward)(const ForwardTensors&, const Options&),
                                    void (*backward)(const BackwardTensors&, const Options&)) {
  ChannelTensors& ch = v.p.channels;
  if (direction == Direction::backward) {
    BackwardTensors tensors;
    tensors.grad_output = v.dy();
    tensors.input = v.x();
    tensors.grad_input = v.y();
    tensors.save_mean = v.per_statistic(ch.batch_mean);
    tensors.save_invstd = v.per_statistic(ch.batch_invstd);
    tensors.weight = v.per_channel(ch.weight);
    tensors.grad_weight = v.per_channel(ch.grad_weight);
    tensors.grad_bias = v.per_channel(ch.grad_bias);
    backward(tensors, options);
    return;
  }
  forward({.input = v.x(),
           .output = v.y(),
           .weight = v.per_channel(ch.weight),
           .bias = v.per_channel(ch.bias),
           .save_mean = v.per_statistic(ch.save_mean),
           .save_invstd = v.per_statistic(ch.save_invstd)},
          options);
}

void run_layer_norm(Direction direction, const Views& v) {
  run_norm_with_saved_statistics(direction, v, LayerNormOptions{.normalized_shape = v.p.normalized_shape, .eps = kEps},
                                 &layer_norm_forward, &layer_norm_backward);
}

void run_group_norm(Direction direction, const Views& v) {
  run_norm_with_saved_statistics(direction, v, GroupNormOptions{.num_groups = v.p.shape.groups, .eps = kEps},
                                 &group_norm_forward, &group_norm_backward);
}

// RMSNorm has no bias and saves no mean.
void run_rms_norm(Direction direction, const Views& v) {
  ChannelTensors& ch = v.p.channels;
  const RMSNormOptions options{.normalized_shape = v.p.normalized_shape, .eps = kEps};
  if (direction == Direction::backward) {
    rms_norm_backward({.grad_output = v.dy(),
                       .input = v.x(),
                       .grad_input = v.y(),
                       .save_invstd = v.per_statistic(ch.batch_invstd),
                       .weight = v.per_channel(ch.weight),
                       .grad_weight = v.per_channel(ch.grad_weight)},
                      options);
    return;
  }
  rms_norm_forward({.input = v.x(),
                    .output = v.y(),
                    .weight = v.per_channel(ch.weight),
                    .save_invstd = v.per_statistic(ch.save_invstd)},
                   options);
}

// With each (sample, channel)'s own statistics (use_input_stats; PyTorch's InstanceNorm has
// track_running_stats = False by default): no running statistics.
void run_instance_norm(Direction direction, const Views& v) {
  run_norm_with_saved_statistics(direction, v, InstanceNormOptions{.use_input_stats = true, .eps = kEps},
                                 &instance_norm_forward, &instance_norm_backward);
}

void run_fusednorm(Direction direction, Problem& p, int set, bool in_place) {
  const Views views{p, set, in_place};
  switch (p.op) {
    case Op::batch_norm:
    case Op::batch_norm_relu: run_batch_norm(direction, views); return;
    case Op::layer_norm: run_layer_norm(direction, views); return;
    case Op::group_norm: run_group_norm(direction, views); return;
    case Op::rms_norm: run_rms_norm(direction, views); return;
    case Op::instance_norm: run_instance_norm(direction, views); return;
  }
}

void run_naive(Direction direction, Problem& p, int set) {
  BufferSet& b = p.sets[static_cast<size_t>(set)];
  ChannelTensors& ch = p.channels;
  const bool backward = direction == Direction::backward;
  switch (p.op) {
    case Op::batch_norm:
    case Op::batch_norm_relu:
      if (direction == Direction::forward_training) {
        naive::batch_norm_forward_training(b.x.data(), b.output.data(), p.dims, ch.weight.data(), ch.bias.data(),
                                           ch.running_mean.data(), ch.running_var.data(), ch.save_mean.data(),
                                           ch.save_invstd.data(), kMomentum, kEps, epilogue(p.op));
      } else if (direction == Direction::forward_inference) {
        naive::batch_norm_forward_inference(b.x.data(), b.output.data(), p.dims, ch.weight.data(), ch.bias.data(),
                                            ch.running_mean.data(), ch.running_var.data(), kEps);
      } else {
        naive::batch_norm_backward(b.x.data(), b.grad_output.data(), b.output.data(), p.dims, ch.weight.data(),
                                   ch.batch_mean.data(), ch.batch_invstd.data(), ch.grad_weight.data(),
                                   ch.grad_bias.data(), needs_forward_output(p.op) ? b.forward_output.data() : nullptr);
      }
      return;
    case Op::layer_norm:
      if (backward) {
        naive::layer_norm_backward(b.x.data(), b.grad_output.data(), b.output.data(), p.dims.n, p.dims.c,
                                   ch.weight.data(), ch.batch_mean.data(), ch.batch_invstd.data(),
                                   ch.grad_weight.data(), ch.grad_bias.data());
      } else {
        naive::layer_norm_forward(b.x.data(), b.output.data(), p.dims.n, p.dims.c, ch.weight.data(), ch.bias.data(),
                                  ch.save_mean.data(), ch.save_invstd.data(), kEps);
      }
      return;
    case Op::rms_norm:
      if (backward) {
        naive::rms_norm_backward(b.x.data(), b.grad_output.data(), b.output.data(), p.dims.n, p.dims.c,
                                 ch.weight.data(), ch.batch_invstd.data(), ch.grad_weight.data());
      } else {
        naive::rms_norm_forward(b.x.data(), b.output.data(), p.dims.n, p.dims.c, ch.weight.data(),
                                ch.save_invstd.data(), kEps);
      }
      return;
    case Op::group_norm:
    case Op::instance_norm: {
      // InstanceNorm is GroupNorm with a group per channel: the same naive loops, groups = C.
      const int64_t groups = p.op == Op::instance_norm ? p.dims.c : p.shape.groups;
      if (backward) {
        naive::group_norm_backward(b.x.data(), b.grad_output.data(), b.output.data(), p.dims, groups, ch.weight.data(),
                                   ch.batch_mean.data(), ch.batch_invstd.data(), ch.grad_weight.data(),
                                   ch.grad_bias.data());
      } else {
        naive::group_norm_forward(b.x.data(), b.output.data(), p.dims, groups, ch.weight.data(), ch.bias.data(),
                                  ch.save_mean.data(), ch.save_invstd.data(), kEps);
      }
      return;
    }
  }
}

// A float32 kernel and the float64 reference may put v = xhat * weight + bias on opposite sides of 0 when v is
// within the kernel's error of it; for BN + ReLU the backward's mask then differs (oneDNN takes it from its own
// forward's workspace, not from the y the reference and FusedNorm read), and dx with it by a whole term at that
// element, an error of order 1 that no tolerance admits. A forward passes the check with an error in v up to
// 1e-4 of max |y| (about 3 here), and oneDNN's NHWC kernel does use more than 1e-4 of it (with a 1e-4 margin
// its backward failed on resnet50.conv1). So set 0 (the one verified) has every x whose v is within kReluMargin
// (1e-3, above what the forward check admits) of 0 moved 2 x kReluMargin (in v) away from 0: the mask is then
// the same whichever verified float32 implementation computes it. About 6e-4 of the elements move, by about
// 2e-3 of their channel's spread, up and down alike; the reference is computed after the move.
void keep_off_relu_kink(Problem& p) {
  ChannelTensors& ch = p.channels;
  BufferSet& set = p.sets[0];
  ch.reset_running_statistics();
  naive::batch_norm_forward_training(set.x.data(), set.output.data(), p.dims, ch.weight.data(), ch.bias.data(),
                                     ch.running_mean.data(), ch.running_var.data(), ch.save_mean.data(),
                                     ch.save_invstd.data(), kMomentum, kEps);
  ch.reset_running_statistics();
  float* x = set.x.data();
  const reference::Dims& d = p.dims;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < d.numel(); i++) {
    const size_t c = static_cast<size_t>(d.layout == Layout::nchw ? i / d.s % d.c : i % d.c);
    const float slope = ch.save_invstd[c] * ch.weight[c];  // weight is in [0.5, 1.5]: positive
    const float v = (x[i] - ch.save_mean[c]) * slope + ch.bias[c];
    if (std::abs(v) < kReluMargin) x[i] += (v >= 0 ? 2 : -2) * kReluMargin / slope;
  }
}

}  // namespace

void ChannelTensors::reset_running_statistics() {
  running_mean = initial_running_mean;
  running_var = initial_running_var;
}

// The inference computes y = (x - m) * w / sqrt(v + eps) + b per channel. With m' = b, v' = v, b' = m and
// w' = (v + eps) / w it computes (y - b) * (v + eps) / (w * sqrt(v + eps)) + m = (y - b) * sqrt(v + eps) / w + m
// = x. (w is in [0.5, 1.5] here, never 0.) Keeping v' = v makes both runs round sqrt(v + eps) alike; what
// rounding is left drifts by about 1e-7 of the values per pair of runs.
void ChannelTensors::prepare_inverse_inference() {
  const size_t channels = running_var.size();
  inverse_weight.resize(channels);
  for (size_t c = 0; c < channels; c++) {
    inverse_weight[c] = static_cast<float>((static_cast<double>(running_var[c]) + kEps) / weight[c]);
  }
  inverse_bias = running_mean;
  inverse_running_mean = bias;
  inverse_running_var = running_var;
}

reference::Grouping Problem::grouping() const {
  switch (op) {
    case Op::batch_norm:
    case Op::batch_norm_relu: return reference::Grouping::batch(dims);
    case Op::layer_norm: return reference::Grouping::rows(reference::Norm::layer, dims.n, dims.c);
    case Op::group_norm: return reference::Grouping::group(dims, shape.groups);
    case Op::rms_norm: return reference::Grouping::rows(reference::Norm::rms, dims.n, dims.c);
    case Op::instance_norm: return reference::Grouping::instance(dims);
  }
  return reference::Grouping::batch(dims);
}

void Problem::refill_in_place(int count) {
  for (int i = 0; i < count; i++) {
    if (static_cast<int>(in_place.size()) <= i) in_place.emplace_back(dims.numel());
    parallel_copy(sets[static_cast<size_t>(i) % sets.size()].x.data(), in_place[static_cast<size_t>(i)].data(),
                  dims.numel(), CopyStores::regular);
  }
  in_place_runs.assign(in_place.size(), 0);
  channels.prepare_inverse_inference();
}

namespace {

// The values of `data` rounded to `dtype` (16-bit), in place, and their bits into `bits`.
void narrow(AlignedBuffer& data, AlignedBuffer& bits, int64_t n, DType dtype) {
  float* from = data.data();
  auto* to = reinterpret_cast<uint16_t*>(bits.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    to[i] = dtype == DType::bfloat16 ? to_bfloat16(from[i]).bits : to_float16(from[i]).bits;
    from[i] = dtype == DType::bfloat16 ? to_float(bfloat16{to[i]}) : to_float(float16{to[i]});
  }
}

// A buffer of n 16-bit elements.
AlignedBuffer half_buffer(int64_t n) { return AlignedBuffer((n + 1) / 2); }

}  // namespace

void widen(const AlignedBuffer& output16, AlignedBuffer& output, int64_t n, DType dtype) {
  const auto* from = reinterpret_cast<const uint16_t*>(output16.data());
  float* to = output.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    to[i] = dtype == DType::bfloat16 ? to_float(bfloat16{from[i]}) : to_float(float16{from[i]});
  }
}

std::vector<DType> half_dtypes(Op op) {
  if (op != Op::batch_norm && op != Op::layer_norm && op != Op::rms_norm && op != Op::group_norm) return {};
  std::vector<DType> result;
  const std::vector<VariantInfo> all = variants();
  for (DType dtype : {DType::bfloat16, DType::float16}) {
    const bool runs = std::any_of(all.begin(), all.end(), [&](const VariantInfo& v) {
      return v.dtype == name(dtype) && v.norm == norm_name(op) && v.runs_here;
    });
    if (runs) result.push_back(dtype);
  }
  return result;
}

namespace {

Problem make_problem_of(const BenchShape& shape, Op op, Layout layout, int buffer_sets) {
  Problem p{};
  p.shape = shape;
  p.op = op;
  p.layout = layout;
  // The activations' own mean and spread follow the channel, or for LayerNorm and RMSNorm the row (so that rows
  // differ).
  reference::Dims fill_dims{};
  if (is_rows(op)) {
    const size_t leading = shape.shape.size() - static_cast<size_t>(shape.normalized_dims);
    p.normalized_shape.assign(shape.shape.begin() + static_cast<std::ptrdiff_t>(leading), shape.shape.end());
    int64_t rows = 1, features = 1;
    for (size_t d = 0; d < shape.shape.size(); d++) (d < leading ? rows : features) *= shape.shape[d];
    p.dims = {rows, features, 1, Layout::nchw};
    fill_dims = {1, rows, features, Layout::nchw};
  } else {
    int64_t spatial = 1;
    for (size_t d = 2; d < shape.shape.size(); d++) spatial *= shape.shape[d];
    p.dims = {shape.shape.at(0), shape.shape.at(1), spatial, layout};
    fill_dims = p.dims;
  }

  const int64_t numel = p.dims.numel(), channels = p.dims.c;
  for (int set = 0; set < buffer_sets; set++) {
    BufferSet& b = p.sets.emplace_back();
    b.x = AlignedBuffer(numel);
    b.grad_output = AlignedBuffer(numel);
    b.output = AlignedBuffer(numel);
    if (needs_forward_output(op)) b.forward_output = AlignedBuffer(numel);
    const uint64_t seed = 1000 * static_cast<uint64_t>(set);
    fill_activations(b.x.data(), fill_dims, seed + 1);
    fill_uniform(b.grad_output.data(), numel, -1.0f, 1.0f, seed + 2);
  }

  ChannelTensors& ch = p.channels;
  ch.weight = random_vector(channels, 0.5f, 1.5f, 11);
  if (centred(op)) ch.bias = random_vector(channels, -0.5f, 0.5f, 12);
  if (op == Op::batch_norm || op == Op::batch_norm_relu) {
    ch.initial_running_mean = random_vector(channels, -1.0f, 1.0f, 13);
    ch.initial_running_var = random_vector(channels, 0.5f, 2.0f, 14);
  }
  ch.reset_running_statistics();
  const size_t statistics = static_cast<size_t>(p.statistics());
  for (auto* v : {&ch.save_mean, &ch.save_invstd, &ch.batch_mean, &ch.batch_invstd}) v->assign(statistics, 0.0f);
  for (auto* v : {&ch.grad_weight, &ch.grad_bias}) v->assign(static_cast<size_t>(channels), 0.0f);
  if (epilogue(op) == Epilogue::relu) keep_off_relu_kink(p);
  return p;
}

}  // namespace

Problem make_problem(const BenchShape& shape, Op op, Layout layout, int buffer_sets, DType dtype) {
  Problem p = make_problem_of(shape, op, layout, buffer_sets);
  p.dtype = dtype;
  if (dtype == DType::float32) return p;
  if (needs_forward_output(op)) {
    throw Error(fmt::format("fusednorm_bench: {} has no {} cases", to_string(op), name(dtype)));
  }
  const int64_t numel = p.dims.numel();
  for (BufferSet& b : p.sets) {
    b.x16 = half_buffer(numel);
    b.grad_output16 = half_buffer(numel);
    b.output16 = half_buffer(numel);
    narrow(b.x, b.x16, numel, dtype);
    narrow(b.grad_output, b.grad_output16, numel, dtype);
  }
  return p;
}

void fill_forward_outputs_naive(Problem& p, size_t first) {
  ChannelTensors saved = p.channels;
  for (size_t set = first; set < p.sets.size(); set++) {
    BufferSet& b = p.sets[set];
    std::swap(b.output, b.forward_output);  // the naive forward writes `output`
    run_naive(Direction::forward_training, p, static_cast<int>(set));
    std::swap(b.output, b.forward_output);
  }
  p.channels = std::move(saved);
}

namespace {

// The variant dispatch runs for a call of this op, direction and layout (affine) under `schedule`: the first that
// fits and runs here (best ISA first), as in the dispatch; nullptr if none.
const VariantInfo* variant_for(const std::vector<VariantInfo>& all, Op op, Direction direction, Layout layout,
                               const std::string& schedule, DType dtype = DType::float32) {
  for (const VariantInfo& v : all) {
    if (v.schedule == schedule && v.dtype == name(dtype) && v.norm == norm_name(op) && v.direction == name(direction) &&
        v.layout == fusednorm::to_string(layout) && v.epilogue == fusednorm::to_string(epilogue(op)) && v.affine &&
        v.runs_here) {
      return &v;
    }
  }
  return nullptr;
}

}  // namespace

Implementation fusednorm_implementation(Op op, Direction direction, Layout layout, bool in_place,
                                        const std::string& schedule, DType dtype) {
  if (in_place && (!has_in_place_row(direction) || dtype != DType::float32)) {
    throw Error(fmt::format("fusednorm_bench: {} {} {} has no in-place form", to_string(op), name(direction),
                            name(dtype)));
  }
  const std::vector<VariantInfo> all = variants();
  if (const VariantInfo* v = variant_for(all, op, direction, layout, schedule, dtype)) {
    Implementation impl{
        .name = fmt::format("fusednorm/{}/{}{}", v->schedule, v->isa, in_place ? "/inplace" : ""),
        .kind = "fusednorm",
        .schedule = schedule,
        .in_place = in_place,
        .run = [direction, in_place](Problem& p, int set) { run_fusednorm(direction, p, set, in_place); },
        // Dispatch runs one schedule at a time; each fusednorm row sets its own before it is verified.
        .prepare = [schedule](Problem&) { set_schedule(schedule); }};
    if (dtype != DType::float32) {
      impl.publish = [](Problem& p, int set) {
        BufferSet& b = p.sets[static_cast<size_t>(set)];
        widen(b.output16, b.output, p.dims.numel(), p.dtype);
      };
    }
    return impl;
  }
  throw Error(
      fmt::format("fusednorm_bench: no affine {} {} {} {} kernel of schedule {} was built that runs on this "
                  "CPU (max_isa '{}')",
                  to_string(op), name(direction), layout_name(op, layout), name(dtype), schedule, max_isa()));
}

std::vector<std::string> autoscheduled_schedules(Op op, Direction direction, Layout layout) {
  const std::vector<VariantInfo> all = variants();
  std::vector<std::string> result;
  for (const std::string& schedule : built_schedules()) {
    if (schedule != "hand" && variant_for(all, op, direction, layout, schedule)) result.push_back(schedule);
  }
  return result;
}

Implementation naive_implementation(Direction direction) {
  return {
      .name = "naive", .kind = "baseline", .run = [direction](Problem& p, int set) { run_naive(direction, p, set); }};
}

}  // namespace fusednorm::bench
