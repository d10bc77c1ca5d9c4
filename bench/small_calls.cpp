#include "bench/small_calls.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <cstring>

#include "bench/buffers.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/layers.h"

namespace fusednorm::bench {
namespace {

// The seed's model (examples/simple_bn_model): Linear(128, 64) -> BatchNorm1d(64) -> ReLU at batch 32.
constexpr int64_t kBatch = 32, kFeatures = 64;

struct SmallCase {
  const char* name;
  const char* direction;  // the filter key's
  double target_us;       // issue 14's bound on the median
};

// Issue 14's acceptance, small-call row.
const SmallCase kTraining = {"BatchNorm1d(64) training forward + backward", "forward_training+backward", 5.0};
const SmallCase kEvaluation = {"BatchNorm1d(64) evaluation forward", "forward_inference", 1.5};

std::string filter_key(const SmallCase& c) {
  return fmt::format("small_call/batch_norm/{}/{}x{}", c.direction, kBatch, kFeatures);
}

bool selected(const std::string& filter, const SmallCase& c) { return filter_key(c).find(filter) != std::string::npos; }

}  // namespace

int selected_small_calls(const std::string& filter) {
  return static_cast<int>(selected(filter, kTraining)) + static_cast<int>(selected(filter, kEvaluation));
}

std::vector<SmallCallRow> time_small_calls(const std::string& filter, const TimingPlan& plan, int cores,
                                           const std::function<void(const std::string&)>& step) {
  std::vector<SmallCallRow> rows;
  if (selected_small_calls(filter) == 0) return rows;
  const std::vector<int64_t> shape = {kBatch, kFeatures};
  const int64_t numel = kBatch * kFeatures;
  AlignedBuffer x(numel), y(numel), dy(numel), dx(numel);
  fill_activations(x.data(), {kBatch, kFeatures, 1, Layout::nchw}, 11);
  fill_uniform(dy.data(), numel, -1.0f, 1.0f, 12);
  const TensorView x_view(x.data(), shape), y_view(y.data(), shape), dy_view(dy.data(), shape),
      dx_view(dx.data(), shape);
  // Hot, one buffer set: a layer this small meets its input in cache, just written by the layer before it.
  const CacheRegime hot;

  step(fmt::format("small calls: copy of [{}] float32", fmt::join(shape, ", ")));
  const Timing copy = time_runs(
      [&](int) { std::memcpy(y.data(), x.data(), static_cast<size_t>(numel) * sizeof(float)); }, hot, plan, cores);

  // The layer as an application calls it, through dispatch's default (the hand schedule, the best instruction set):
  // the kernel rows before leave the schedule of the last one set.
  set_schedule("hand");
  BatchNorm1d layer(kFeatures);
  auto add_row = [&](const SmallCase& c, const Timing& timing) {
    rows.push_back({c.name, filter_key(c), shape, timing, copy, c.target_us});
  };
  // Training first: the evaluation forward then reads the running statistics the training runs left.
  if (selected(filter, kTraining)) {
    step(kTraining.name);
    layer.train();
    add_row(kTraining, time_runs(
                           [&](int) {
                             layer.forward(x_view, y_view);
                             layer.backward(dy_view, dx_view);
                           },
                           hot, plan, cores));
  }
  if (selected(filter, kEvaluation)) {
    step(kEvaluation.name);
    layer.eval();
    add_row(kEvaluation, time_runs([&](int) { layer.forward(x_view, y_view); }, hot, plan, cores));
  }
  return rows;
}

}  // namespace fusednorm::bench
