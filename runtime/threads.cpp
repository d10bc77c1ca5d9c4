#include "fusednorm/threads.h"

#include <HalideRuntime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "fusednorm/error.h"

namespace fusednorm {

// Halide sizes its pool when the first kernel runs and reports 0 until then; this answers what that size will
// be by the same rule (HL_NUM_THREADS if set and positive, else the number of online CPUs).
int num_threads() {
  int n = halide_get_num_threads();
  if (n > 0) return n;
  if (const char* env = std::getenv("HL_NUM_THREADS")) {
    int from_env = std::atoi(env);
    if (from_env > 0) return from_env;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int set_num_threads(int n) {
  if (n < 0) {
    throw Error(fmt::format("set_num_threads: n is {}, expected >= 1 (or 0 for the default, HL_NUM_THREADS or the "
                            "number of CPUs)",
                            n));
  }
  return halide_set_num_threads(n);
}

}  // namespace fusednorm
