#pragma once
// How a row is timed: warm-up, then repeated runs, median; inputs too large for the last-level cache are
// timed cold (each run on data no recent run touched), smaller ones hot, as a network would meet them.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "bench/buffers.h"

namespace fusednorm::bench {

// Whether runs find their data in the last-level cache, and how that is arranged.
struct CacheRegime {
  enum class Mode {
    hot,     // one buffer set, reused: what the previous run left in the cache is there for the next
    rotate,  // runs cycle through `buffer_sets` sets whose total exceeds twice the cache
    flush,   // rotating would need too much memory: a flush buffer is written between runs (not timed)
  };
  Mode mode = Mode::hot;
  int buffer_sets = 1;
  std::shared_ptr<AlignedBuffer> flush_buffer;  // flush mode only

  bool cold() const { return mode != Mode::hot; }
  const char* name() const { return cold() ? "cold" : "hot"; }
};

// tensor_bytes: one (N, C, H, W) tensor; a buffer set holds the three of the backward (x, dy, dx), and the
// forward and the copies touch two of them per run.
CacheRegime choose_cache_regime(int64_t tensor_bytes, int64_t llc_bytes);
// The same regime for rows that run in place: a run touches one tensor (x, overwritten by y) instead of two,
// so a cold regime rotates through about twice as many buffers (of one tensor each) to keep as much data
// passing through the cache between two uses of a buffer. Hot and flush are unchanged.
CacheRegime in_place_regime(const CacheRegime& regime, int64_t tensor_bytes, int64_t llc_bytes);
// One line for the output: which regime and why.
std::string describe(const CacheRegime& regime, int64_t tensor_bytes, int64_t llc_bytes);
// The in-place rows' part of that line; empty unless they rotate differently.
std::string describe_in_place(const CacheRegime& in_place, int64_t tensor_bytes);

struct TimingPlan {
  int warmup_runs = 2;           // at least, and at least one per buffer set
  double warmup_seconds = 0.05;  // at least; also outlasts libgomp's spin-wait after the previous row
  int min_reps = 5;
  double min_seconds = 0.5;
  int max_reps = 100000;
  // A row timed while other processes used more than kDisturbedShare of the CPUs is timed again, up to this
  // many more times, keeping the least disturbed attempt: the machine may be shared with a compiler.
  int retries_when_disturbed = 2;
};

constexpr double kDisturbedShare = 0.1;

TimingPlan default_plan();
TimingPlan quick_plan();
TimingPlan fixed_reps_plan(int reps);

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  int reps = 0;
  std::optional<double> others_cpu_share;  // of the CPUs, used by other processes during the timed runs
  int attempts = 1;

  bool disturbed() const { return others_cpu_share.value_or(0) > kDisturbedShare; }
};

// run(set) runs the timed operation once on buffer set `set`. Warm-up, then runs until the plan is met;
// again while disturbed (see TimingPlan). cores: for the share of the CPUs other processes used.
Timing time_runs(const std::function<void(int set)>& run, const CacheRegime& regime, const TimingPlan& plan, int cores);

}  // namespace fusednorm::bench
