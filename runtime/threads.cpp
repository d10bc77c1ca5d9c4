#include "fusednorm/threads.h"

#include <HalideRuntime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "fusednorm/error.h"

// Halide's runtime defines it (the online CPUs); HalideRuntime.h does not declare it.
extern "C" int halide_host_cpu_count();

namespace fusednorm {

// Halide's thread pool allows this many threads at most (MAX_THREADS in its runtime).
constexpr int kHalideMaxThreads = 256;

namespace {
// Halide sizes its pool when the first kernel runs (or at the first set_num_threads) and reports 0 until then.
// This is the size it will take, by Halide's own rule (default_desired_num_threads, clamp_num_threads):
// HL_NUM_THREADS (or its legacy name HL_NUMTHREADS) read with atoi if set, else the online CPUs, clamped to
// [1, 256]. So HL_NUM_THREADS=0 or a non-number gives 1 thread, not the CPUs.
int pool_size_before_start() {
  const char* env = std::getenv("HL_NUM_THREADS");
  if (!env) env = std::getenv("HL_NUMTHREADS");
  const int n = env ? std::atoi(env) : halide_host_cpu_count();
  return std::clamp(n, 1, kHalideMaxThreads);
}
}  // namespace

int num_threads() {
  const int n = halide_get_num_threads();
  return n > 0 ? n : pool_size_before_start();
}

int set_num_threads(int n) {
  if (n < 0) {
    throw Error(fmt::format("set_num_threads: n is {}, expected >= 1 (or 0 for the default, HL_NUM_THREADS or the "
                            "number of CPUs)",
                            n));
  }
  // The previous size as num_threads() reported it, also before the pool started (Halide returns 0 then).
  const int previous = halide_set_num_threads(n);
  return previous > 0 ? previous : pool_size_before_start();
}

}  // namespace fusednorm
