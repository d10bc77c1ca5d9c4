#include "bench/timing.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "bench/machine.h"

namespace fusednorm::bench {
namespace {

// Rotation allocates buffer_sets x 3 tensors; beyond this much memory, flush instead.
constexpr int64_t kMemoryBudgetBytes = int64_t{8} << 30;
// The rotating sets together (or the flush buffer) hold at least this many last-level caches, so that
// between two uses of a set more than a whole cache of other data passes through it.
constexpr int64_t kColdFootprintInCaches = 2;

constexpr int kTensorsPerSet = 3;    // x, dy, and y or dx
constexpr int kTensorsPerRun = 2;    // the fewest an out-of-place run touches: the forward's and the copy's
constexpr int kTensorsInPlace = 1;   // an in-place forward's: x, overwritten by y
constexpr int kTensorsBackward = 3;  // the most a run touches

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Read and write every line of the flush buffer, so that it displaces both clean and dirty lines.
void flush_caches(AlignedBuffer& buffer) {
  float* data = buffer.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < buffer.size(); i += 16) data[i] += 1.0f;
}

// Enough sets of run_bytes that together they hold kColdFootprintInCaches last-level caches.
int64_t rotating_sets(int64_t run_bytes, int64_t llc_bytes) {
  return std::max<int64_t>(2, (kColdFootprintInCaches * llc_bytes + run_bytes - 1) / run_bytes);
}

Timing time_attempt(const std::function<void(int set)>& run, const CacheRegime& regime, const TimingPlan& plan,
                    int cores) {
  int next_set = 0;
  auto one_run = [&] {
    if (regime.mode == CacheRegime::Mode::flush) flush_caches(*regime.flush_buffer);
    const int set = next_set;
    next_set = (next_set + 1) % regime.buffer_sets;
    auto start = std::chrono::steady_clock::now();
    run(set);
    return seconds_since(start);
  };

  const auto warmup_start = std::chrono::steady_clock::now();
  for (int i = 0;
       i < std::max(plan.warmup_runs, regime.buffer_sets) || seconds_since(warmup_start) < plan.warmup_seconds; i++) {
    one_run();
  }

  std::vector<double> seconds;
  double total = 0;
  const CpuSample cpu_at_start = sample_cpu();
  while (static_cast<int>(seconds.size()) < plan.max_reps &&
         (static_cast<int>(seconds.size()) < plan.min_reps || total < plan.min_seconds)) {
    seconds.push_back(one_run());
    total += seconds.back();
  }
  const std::optional<double> others = others_cpu_share(cpu_at_start, sample_cpu(), cores);
  std::sort(seconds.begin(), seconds.end());
  const size_t n = seconds.size();
  const double median = n % 2 ? seconds[n / 2] : 0.5 * (seconds[n / 2 - 1] + seconds[n / 2]);
  return {median * 1e3, seconds.front() * 1e3, static_cast<int>(n), others};
}

}  // namespace

// The regime is chosen per shape, from its largest run (the backward), so that every row of a shape and its
// copy ceilings are timed alike and their ratios compare like with like.
CacheRegime choose_cache_regime(int64_t tensor_bytes, int64_t llc_bytes) {
  CacheRegime regime;
  if (kTensorsBackward * tensor_bytes <= llc_bytes) return regime;
  const int64_t sets = rotating_sets(kTensorsPerRun * tensor_bytes, llc_bytes);
  if (sets * kTensorsPerSet * tensor_bytes <= kMemoryBudgetBytes) {
    regime.mode = CacheRegime::Mode::rotate;
    regime.buffer_sets = static_cast<int>(sets);
  } else {
    regime.mode = CacheRegime::Mode::flush;
    regime.flush_buffer =
        std::make_shared<AlignedBuffer>(kColdFootprintInCaches * llc_bytes / static_cast<int64_t>(sizeof(float)));
  }
  return regime;
}

// Memory: ceil(2 x cache / tensor) tensors, at most twice the x and output tensors of the out-of-place sets (2/3
// of their memory budget), allocated beside them.
CacheRegime in_place_regime(const CacheRegime& regime, int64_t tensor_bytes, int64_t llc_bytes) {
  CacheRegime in_place = regime;
  if (regime.mode == CacheRegime::Mode::rotate) {
    in_place.buffer_sets = static_cast<int>(rotating_sets(kTensorsInPlace * tensor_bytes, llc_bytes));
  }
  return in_place;
}

std::string describe(const CacheRegime& regime, int64_t tensor_bytes, int64_t llc_bytes) {
  switch (regime.mode) {
    case CacheRegime::Mode::hot:
      return fmt::format("hot: the backward's working set ({}) fits the {} last-level cache",
                         megabytes(kTensorsBackward * tensor_bytes), mebibytes(llc_bytes));
    case CacheRegime::Mode::rotate:
      return fmt::format(
          "cold: the backward's working set ({}) exceeds the {} last-level cache; runs rotate "
          "through {} buffer sets ({} touched between two uses of a set)",
          megabytes(kTensorsBackward * tensor_bytes), mebibytes(llc_bytes), regime.buffer_sets,
          megabytes((regime.buffer_sets - 1) * kTensorsPerRun * tensor_bytes));
    case CacheRegime::Mode::flush:
      return fmt::format(
          "cold: the backward's working set ({}) exceeds the {} last-level cache; a {} buffer is "
          "written between runs (untimed)",
          megabytes(kTensorsBackward * tensor_bytes), mebibytes(llc_bytes), megabytes(regime.flush_buffer->bytes()));
  }
  return "";
}

std::string describe_in_place(const CacheRegime& in_place, int64_t tensor_bytes) {
  if (in_place.mode != CacheRegime::Mode::rotate) return "";
  return fmt::format("in-place rows (one tensor per run) through {} buffers ({} touched between two uses)",
                     in_place.buffer_sets, megabytes((in_place.buffer_sets - 1) * kTensorsInPlace * tensor_bytes));
}

TimingPlan default_plan() { return {}; }

TimingPlan quick_plan() {
  TimingPlan plan;
  plan.warmup_runs = 1;
  plan.warmup_seconds = 0.01;
  plan.min_reps = 3;
  plan.min_seconds = 0.05;
  plan.retries_when_disturbed = 0;
  return plan;
}

TimingPlan fixed_reps_plan(int reps) {
  TimingPlan plan;
  plan.min_reps = plan.max_reps = reps;
  plan.min_seconds = 0;
  return plan;
}

Timing time_runs(const std::function<void(int set)>& run, const CacheRegime& regime, const TimingPlan& plan,
                 int cores) {
  Timing best = time_attempt(run, regime, plan, cores);
  for (int attempt = 2; attempt <= 1 + plan.retries_when_disturbed && best.disturbed(); attempt++) {
    Timing again = time_attempt(run, regime, plan, cores);
    if (again.others_cpu_share.value_or(1) < best.others_cpu_share.value_or(1)) best = again;
    best.attempts = attempt;
  }
  return best;
}

}  // namespace fusednorm::bench
