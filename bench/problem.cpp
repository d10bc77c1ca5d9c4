#include "bench/problem.h"

#include <fmt/format.h>

#include "bench/copy_ceiling.h"
#include "bench/naive_batch_norm.h"
#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"

namespace fusednorm::bench {
namespace {

std::vector<float> random_vector(int64_t count, float low, float high, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(count));
  fill_uniform(v.data(), count, low, high, seed);
  return v;
}

BatchNormOptions training_options() { return {.training = true, .eps = kEps, .momentum = kMomentum}; }
BatchNormOptions inference_options() { return {.training = false, .eps = kEps, .momentum = kMomentum}; }

void run_fusednorm(Direction direction, Problem& p, int set, bool in_place) {
  ChannelTensors& ch = p.channels;
  auto tensor = [&](const AlignedBuffer& buffer) {
    return TensorView::with_layout(buffer.data(), p.shape.shape, p.layout);
  };
  auto per_channel = [&](std::vector<float>& v) { return TensorView(v.data(), {p.dims.c}); };
  const AlignedBuffer& x = in_place ? p.in_place[static_cast<size_t>(set)] : p.sets[static_cast<size_t>(set)].x;
  const AlignedBuffer& y = in_place ? x : p.sets[static_cast<size_t>(set)].output;  // y, or dx for the backward
  // In place, each run starts from the previous run's output. The training forward's output normalized again
  // is itself (up to eps and rounding), so it can run on it indefinitely. The inference is an affine map per
  // channel with slopes up to 2.1 here (weight / sqrt(running_var)), which would overflow to inf in about 120
  // runs, so every other run on a buffer undoes the previous one with the inverse parameters.
  const int runs_before = in_place ? p.in_place_runs[static_cast<size_t>(set)]++ : 0;
  const bool inverse = direction == Direction::forward_inference && runs_before % 2 == 1;
  switch (direction) {
    case Direction::forward_training:
      batch_norm_forward({.input = tensor(x),
                          .output = tensor(y),
                          .weight = per_channel(ch.weight),
                          .bias = per_channel(ch.bias),
                          .running_mean = per_channel(ch.running_mean),
                          .running_var = per_channel(ch.running_var),
                          .save_mean = per_channel(ch.save_mean),
                          .save_invstd = per_channel(ch.save_invstd)},
                         training_options());
      return;
    case Direction::forward_inference:
      batch_norm_forward({.input = tensor(x),
                          .output = tensor(y),
                          .weight = per_channel(inverse ? ch.inverse_weight : ch.weight),
                          .bias = per_channel(inverse ? ch.inverse_bias : ch.bias),
                          .running_mean = per_channel(inverse ? ch.inverse_running_mean : ch.running_mean),
                          .running_var = per_channel(inverse ? ch.inverse_running_var : ch.running_var)},
                         inference_options());
      return;
    case Direction::backward:
      batch_norm_backward({.grad_output = tensor(p.sets[static_cast<size_t>(set)].grad_output),
                           .input = tensor(x),
                           .grad_input = tensor(y),
                           .weight = per_channel(ch.weight),
                           .save_mean = per_channel(ch.batch_mean),
                           .save_invstd = per_channel(ch.batch_invstd),
                           .grad_weight = per_channel(ch.grad_weight),
                           .grad_bias = per_channel(ch.grad_bias)},
                          training_options());
      return;
  }
}

void run_naive(Direction direction, Problem& p, int set) {
  BufferSet& b = p.sets[static_cast<size_t>(set)];
  ChannelTensors& ch = p.channels;
  switch (direction) {
    case Direction::forward_training:
      naive::batch_norm_forward_training(b.x.data(), b.output.data(), p.dims, ch.weight.data(), ch.bias.data(),
                                         ch.running_mean.data(), ch.running_var.data(), ch.save_mean.data(),
                                         ch.save_invstd.data(), kMomentum, kEps);
      return;
    case Direction::forward_inference:
      naive::batch_norm_forward_inference(b.x.data(), b.output.data(), p.dims, ch.weight.data(), ch.bias.data(),
                                          ch.running_mean.data(), ch.running_var.data(), kEps);
      return;
    case Direction::backward:
      naive::batch_norm_backward(b.x.data(), b.grad_output.data(), b.output.data(), p.dims, ch.weight.data(),
                                 ch.batch_mean.data(), ch.batch_invstd.data(), ch.grad_weight.data(),
                                 ch.grad_bias.data());
      return;
  }
}

}  // namespace

const char* to_string(Direction direction) {
  switch (direction) {
    case Direction::forward_training: return "forward_training";
    case Direction::forward_inference: return "forward_inference";
    case Direction::backward: return "backward";
  }
  return "?";
}

int tensors_moved(Direction direction) { return direction == Direction::backward ? 3 : 2; }

bool has_in_place_row(Direction direction) { return direction != Direction::backward; }

void ChannelTensors::reset_running_statistics() {
  running_mean = initial_running_mean;
  running_var = initial_running_var;
}

// The inference computes y = (x - m) * w / sqrt(v + eps) + b per channel. With m' = b, v' = v, b' = m and
// w' = (v + eps) / w it computes (y - b) * (v + eps) / (w * sqrt(v + eps)) + m = (y - b) * sqrt(v + eps) / w + m
// = x. (w is in [0.5, 1.5] here, never 0.) Keeping v' = v makes both runs round sqrt(v + eps) alike; what
// rounding is left drifts by about 1e-7 of the values per pair of runs.
void ChannelTensors::prepare_inverse_inference() {
  const size_t channels = weight.size();
  inverse_weight.resize(channels);
  for (size_t c = 0; c < channels; c++) {
    inverse_weight[c] = static_cast<float>((static_cast<double>(running_var[c]) + kEps) / weight[c]);
  }
  inverse_bias = running_mean;
  inverse_running_mean = bias;
  inverse_running_var = running_var;
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

Problem make_problem(const shapes::NamedShape& shape, Layout layout, int buffer_sets) {
  Problem p{};
  p.shape = shape;
  p.layout = layout;
  int64_t spatial = 1;
  for (size_t d = 2; d < shape.shape.size(); d++) spatial *= shape.shape[d];
  p.dims = {shape.shape.at(0), shape.shape.at(1), spatial, layout};

  const int64_t numel = p.dims.numel(), channels = p.dims.c;
  for (int set = 0; set < buffer_sets; set++) {
    BufferSet& b = p.sets.emplace_back(BufferSet{AlignedBuffer(numel), AlignedBuffer(numel), AlignedBuffer(numel)});
    const uint64_t seed = 1000 * static_cast<uint64_t>(set);
    fill_activations(b.x.data(), p.dims, seed + 1);
    fill_uniform(b.grad_output.data(), numel, -1.0f, 1.0f, seed + 2);
  }

  ChannelTensors& ch = p.channels;
  ch.weight = random_vector(channels, 0.5f, 1.5f, 11);
  ch.bias = random_vector(channels, -0.5f, 0.5f, 12);
  ch.initial_running_mean = random_vector(channels, -1.0f, 1.0f, 13);
  ch.initial_running_var = random_vector(channels, 0.5f, 2.0f, 14);
  ch.reset_running_statistics();
  for (auto* v : {&ch.save_mean, &ch.save_invstd, &ch.batch_mean, &ch.batch_invstd, &ch.grad_weight, &ch.grad_bias}) {
    v->assign(static_cast<size_t>(channels), 0.0f);
  }
  return p;
}

namespace {

// The variant dispatch runs for a call of this direction and layout (affine, no epilogue) under `schedule`: the
// first that fits and runs here (best ISA first), as in the dispatch; nullptr if none.
const VariantInfo* variant_for(const std::vector<VariantInfo>& all, Direction direction, Layout layout,
                               const std::string& schedule) {
  for (const VariantInfo& v : all) {
    if (v.schedule == schedule && v.direction == to_string(direction) && v.layout == to_string(layout) &&
        v.epilogue == "none" && v.affine && v.runs_here) {
      return &v;
    }
  }
  return nullptr;
}

}  // namespace

Implementation fusednorm_implementation(Direction direction, Layout layout, bool in_place,
                                        const std::string& schedule) {
  if (in_place && !has_in_place_row(direction)) {
    throw Error(fmt::format("fusednorm_bench: batch_norm {} has no in-place form", to_string(direction)));
  }
  const std::vector<VariantInfo> all = variants();
  if (const VariantInfo* v = variant_for(all, direction, layout, schedule)) {
    return {.name = fmt::format("fusednorm/{}/{}{}", v->schedule, v->isa, in_place ? "/inplace" : ""),
            .kind = "fusednorm",
            .schedule = schedule,
            .in_place = in_place,
            .run = [direction, in_place](Problem& p, int set) { run_fusednorm(direction, p, set, in_place); },
            // Dispatch runs one schedule at a time; each fusednorm row sets its own before it is verified.
            .prepare = [schedule](Problem&) { set_schedule(schedule); }};
  }
  throw Error(fmt::format("fusednorm_bench: no affine {} {} kernel of schedule {} was built that runs on this CPU "
                          "(max_isa '{}')",
                          to_string(direction), fusednorm::to_string(layout), schedule, max_isa()));
}

std::vector<std::string> autoscheduled_schedules(Direction direction, Layout layout) {
  const std::vector<VariantInfo> all = variants();
  std::vector<std::string> result;
  for (const std::string& schedule : built_schedules()) {
    if (schedule != "hand" && variant_for(all, direction, layout, schedule)) result.push_back(schedule);
  }
  return result;
}

Implementation naive_implementation(Direction direction) {
  return {
      .name = "naive", .kind = "baseline", .run = [direction](Problem& p, int set) { run_naive(direction, p, set); }};
}

}  // namespace fusednorm::bench
