#include "bench/problem.h"

#include <fmt/format.h>

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

void run_fusednorm(Direction direction, Problem& p, int set) {
  BufferSet& b = p.sets[static_cast<size_t>(set)];
  ChannelTensors& ch = p.channels;
  auto tensor = [&](const AlignedBuffer& buffer) {
    return TensorView::with_layout(buffer.data(), p.shape.shape, p.layout);
  };
  auto per_channel = [&](std::vector<float>& v) { return TensorView(v.data(), {p.dims.c}); };
  switch (direction) {
    case Direction::forward_training:
      batch_norm_forward({.input = tensor(b.x),
                          .output = tensor(b.output),
                          .weight = per_channel(ch.weight),
                          .bias = per_channel(ch.bias),
                          .running_mean = per_channel(ch.running_mean),
                          .running_var = per_channel(ch.running_var),
                          .save_mean = per_channel(ch.save_mean),
                          .save_invstd = per_channel(ch.save_invstd)},
                         training_options());
      return;
    case Direction::forward_inference:
      batch_norm_forward({.input = tensor(b.x),
                          .output = tensor(b.output),
                          .weight = per_channel(ch.weight),
                          .bias = per_channel(ch.bias),
                          .running_mean = per_channel(ch.running_mean),
                          .running_var = per_channel(ch.running_var)},
                         inference_options());
      return;
    case Direction::backward:
      batch_norm_backward({.grad_output = tensor(b.grad_output),
                           .input = tensor(b.x),
                           .grad_input = tensor(b.output),
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

void ChannelTensors::reset_running_statistics() {
  running_mean = initial_running_mean;
  running_var = initial_running_var;
}

Problem make_problem(const shapes::NamedShape& shape, Layout layout, int buffer_sets) {
  Problem p{shape, layout, {}, {}, {}};
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

Implementation fusednorm_implementation(Direction direction, Layout layout) {
  // The same rule as the dispatch: the first variant that fits the call and runs here (best ISA first).
  for (const VariantInfo& v : variants()) {
    if (v.direction == to_string(direction) && v.layout == to_string(layout) && v.affine && v.runs_here) {
      return {fmt::format("fusednorm/{}/{}", v.schedule, v.isa), "fusednorm",
              [direction](Problem& p, int set) { run_fusednorm(direction, p, set); }};
    }
  }
  throw Error(fmt::format("fusednorm_bench: no affine {} {} kernel was built that runs on this CPU (max_isa '{}')",
                          to_string(direction), fusednorm::to_string(layout), max_isa()));
}

Implementation naive_implementation(Direction direction) {
  return {"naive", "baseline", [direction](Problem& p, int set) { run_naive(direction, p, set); }};
}

}  // namespace fusednorm::bench
