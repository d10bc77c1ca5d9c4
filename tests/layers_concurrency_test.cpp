// Layers used from several application threads at once, one layer per thread (docs/USAGE.md: "Layers may be used from
// several threads at once (one layer per thread)"). Each thread trains its own BatchNorm2d for a number of steps
// (forward, backward, zero_grad now and then), runs evaluation forwards and reloads its state through a state
// dict; every output and the layer's state after every step must be bit for bit what the same sequence gives
// when it runs alone on one thread. Besides the kernels' thread pool, what the layers share then is the
// runtime's: per-thread scratch memory, dispatch, Halide's error handler. Run under ThreadSanitizer by the tsan
// preset (label concurrency).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fusednorm/layers.h"
#include "fusednorm/state_dict.h"
#include "fusednorm/threads.h"
#include "support/batch_norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

constexpr int kWorkers = 4;
constexpr int kSteps = 12;

// What one worker's sequence produced, in order: the bits of every output and of the layer's state after each
// step, and the failures of its checks against the reference (as text, for the test's own thread to report).
struct Record {
  std::vector<uint32_t> bits;
  std::vector<std::string> failures;

  void add(const std::vector<float>& values) {
    const size_t at = bits.size();
    bits.resize(at + values.size());
    if (!values.empty()) std::memcpy(bits.data() + at, values.data(), values.size() * sizeof(float));
  }
  void add(int64_t value) {
    bits.push_back(static_cast<uint32_t>(value));
    bits.push_back(static_cast<uint32_t>(static_cast<uint64_t>(value) >> 32));
  }
  void add_state(BatchNorm& layer) {
    add(layer.weight());
    add(layer.bias());
    add(layer.grad_weight());
    add(layer.grad_bias());
    add(layer.running_mean());
    add(layer.running_var());
    add(layer.num_batches_tracked());
  }
  void check(const ::testing::AssertionResult& result) {
    if (!result) failures.push_back(result.message());
  }
};

// Worker w's sequence: its own shape (channels differ, so the per-thread scratch sizes do too), layout and
// momentum, and data from its own seed.
Record run_layer(int worker, uint64_t seed) {
  Record record;
  test::Random rng(seed);
  const std::vector<int64_t> shape{3, 2 + 5 * worker, 6, 7};
  const Layout layout = worker % 2 ? Layout::nhwc : Layout::nchw;
  const reference::Dims d = test::dims_of(shape, layout);
  BatchNormLayerOptions options;
  if (worker % 3 == 1) options.momentum = std::nullopt;
  BatchNorm2d layer(d.c, options);
  layer.weight() = test::random_vector(d.c, rng, 0.5, 2.0);
  layer.bias() = test::random_vector(d.c, rng, -1.0, 1.0);
  auto view = [&](std::vector<float>& data) { return TensorView::with_layout(data.data(), shape, layout); };

  for (int step = 0; step < kSteps; step++) {
    std::vector<float> x = test::random_input(d, rng), dy = test::random_input(d, rng);
    std::vector<float> y = test::poisoned(d.numel()), dx = test::poisoned(d.numel());
    layer.train();
    layer.forward(view(x), view(y));
    layer.backward(view(dy), view(dx));
    record.add(y);
    record.add(dx);
    if (step % 3 == 2) layer.zero_grad();
    record.add_state(layer);
    if (step % 4 == 3) {
      layer.eval();
      layer.forward(view(x), view(y));
      record.add(y);
      record.check(test::close(
          "y (evaluation)", y,
          reference::batch_norm_forward_inference(x.data(), d, layer.weight().data(), layer.bias().data(),
                                                  layer.running_mean().data(), layer.running_var().data(), 1e-5)));
    }
  }

  // The state through a state dict into a fresh layer, which then normalizes as the original does.
  StateDict state;
  layer.save_to(state, "worker.bn.");
  BatchNorm2d restored(d.c, options);
  restored.load_from(state, "worker.bn.");
  restored.eval();
  std::vector<float> x = test::random_input(d, rng), y = test::poisoned(d.numel());
  restored.forward(view(x), view(y));
  record.add(y);
  record.add_state(restored);
  return record;
}

std::vector<uint64_t> seeds() {
  std::vector<uint64_t> result;
  for (int i = 0; i < kWorkers; i++) result.push_back(test::seed_for_current_test() + static_cast<uint64_t>(i));
  return result;
}

// Runs every worker's sequence on its own thread, all started together, then each alone on this thread, and
// compares. `during` runs on one more thread while the workers do (until they finish).
void run_workers_and_compare(const std::function<void(const std::atomic<bool>& done)>& during = nullptr) {
  const std::vector<uint64_t> seed = seeds();
  std::vector<Record> concurrent(kWorkers);
  {
    std::latch start(kWorkers);
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int w = 0; w < kWorkers; w++) {
      threads.emplace_back([&, w] {
        start.arrive_and_wait();
        concurrent[static_cast<size_t>(w)] = run_layer(w, seed[static_cast<size_t>(w)]);
      });
    }
    std::thread other;
    if (during) other = std::thread([&] { during(done); });
    for (std::thread& thread : threads) thread.join();
    done = true;
    if (other.joinable()) other.join();
  }
  for (int w = 0; w < kWorkers; w++) {
    const Record& got = concurrent[static_cast<size_t>(w)];
    const Record alone = run_layer(w, seed[static_cast<size_t>(w)]);
    for (const std::string& failure : got.failures) ADD_FAILURE() << "worker " << w << ": " << failure;
    ASSERT_EQ(got.bits.size(), alone.bits.size()) << "worker " << w;
    size_t differing = 0, first = 0;
    for (size_t i = 0; i < got.bits.size(); i++) {
      if (got.bits[i] != alone.bits[i] && differing++ == 0) first = i;
    }
    EXPECT_EQ(differing, 0u) << "worker " << w << ": " << differing << " of " << got.bits.size()
                             << " words differ from the same sequence run alone, the first at " << first;
  }
}

TEST(LayersConcurrencyTest, OneLayerPerThreadMatchesTheSameStepsRunAlone) { run_workers_and_compare(); }

// The pool's size changing while layers run: results do not depend on it, so they still match.
TEST(LayersConcurrencyTest, SetNumThreadsWhileLayersRun) {
  const int original = num_threads();
  run_workers_and_compare([](const std::atomic<bool>& done) {
    for (int i = 0; !done; i++) {
      set_num_threads(1 + i % 3);
      std::this_thread::yield();
    }
  });
  set_num_threads(original);
}

}  // namespace
}  // namespace fusednorm
