#include "bench/small_calls.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bench/buffers.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/layers.h"

namespace fusednorm::bench {
namespace {

// The seed's model (examples/simple_bn_model): Linear(128, 64) -> BatchNorm1d(64) -> ReLU, at the seed's batch
// sizes.
constexpr int64_t kFeatures = 64;
constexpr int64_t kBatches[] = {32, 256};

struct SmallCase {
  int64_t batch;
  bool training;      // forward + backward in training mode, or the evaluation forward
  double target_us;   // the bound on the median (issue 14 at batch 32, issue 15 at 256), 0 for none
};

const SmallCase kCases[] = {{32, true, 5.0}, {32, false, 1.5}, {256, true, 15.0}, {256, false, 0}};

std::string case_name(const SmallCase& c) {
  return fmt::format("BatchNorm1d({}) [{}, {}] {}", kFeatures, c.batch, kFeatures,
                     c.training ? "training forward + backward" : "evaluation forward");
}

std::string filter_key(const SmallCase& c) {
  return fmt::format("small_call/batch_norm/{}/{}x{}", c.training ? "forward_training+backward" : "forward_inference",
                     c.batch, kFeatures);
}

bool selected(const std::string& filter, const SmallCase& c) { return filter_key(c).find(filter) != std::string::npos; }

}  // namespace

int selected_small_calls(const std::string& filter) {
  return static_cast<int>(std::count_if(std::begin(kCases), std::end(kCases),
                                        [&](const SmallCase& c) { return selected(filter, c); }));
}

std::vector<SmallCallRow> time_small_calls(const std::string& filter, const TimingPlan& plan, int cores,
                                           const std::function<void(const std::string&)>& step) {
  std::vector<SmallCallRow> rows;
  // The layer as an application calls it, through dispatch's default (the hand schedule, the best instruction set):
  // the kernel rows before leave the schedule of the last one set.
  if (selected_small_calls(filter) > 0) set_schedule("hand");
  for (int64_t batch : kBatches) {
    auto selected_here = [&](const SmallCase& c) { return c.batch == batch && selected(filter, c); };
    if (std::none_of(std::begin(kCases), std::end(kCases), selected_here)) continue;
    const std::vector<int64_t> shape = {batch, kFeatures};
    const int64_t numel = batch * kFeatures;
    AlignedBuffer x(numel), y(numel), dy(numel), dx(numel);
    fill_activations(x.data(), {batch, kFeatures, 1, Layout::nchw}, 11);
    fill_uniform(dy.data(), numel, -1.0f, 1.0f, 12);
    const TensorView x_view(x.data(), shape), y_view(y.data(), shape), dy_view(dy.data(), shape),
        dx_view(dx.data(), shape);
    // Hot, one buffer set: a layer this small meets its input in cache, just written by the layer before it.
    const CacheRegime hot;

    step(fmt::format("small calls: copy of [{}] float32", fmt::join(shape, ", ")));
    const Timing copy = time_runs(
        [&](int) { std::memcpy(y.data(), x.data(), static_cast<size_t>(numel) * sizeof(float)); }, hot, plan, cores);
    BatchNorm1d layer(kFeatures);
    // Training first (kCases' order): the evaluation forward then reads the running statistics it left.
    for (const SmallCase& c : kCases) {
      if (!selected_here(c)) continue;
      step(case_name(c));
      Timing timing;
      if (c.training) {
        layer.train();
        timing = time_runs(
            [&](int) {
              layer.forward(x_view, y_view);
              layer.backward(dy_view, dx_view);
            },
            hot, plan, cores);
      } else {
        layer.eval();
        timing = time_runs([&](int) { layer.forward(x_view, y_view); }, hot, plan, cores);
      }
      rows.push_back({case_name(c), filter_key(c), shape, timing, copy, c.target_us});
    }
  }
  return rows;
}

}  // namespace fusednorm::bench
