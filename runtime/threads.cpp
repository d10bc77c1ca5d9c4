#include "fusednorm/threads.h"

#include <HalideRuntime.h>
#include <fmt/format.h>

#include "fusednorm/error.h"

namespace fusednorm {

int num_threads() { return halide_get_num_threads(); }

int set_num_threads(int n) {
  if (n < 0) {
    throw Error(fmt::format("set_num_threads: n is {}, expected >= 1 (or 0 for the default, HL_NUM_THREADS or the "
                            "number of CPUs)",
                            n));
  }
  return halide_set_num_threads(n);
}

}  // namespace fusednorm
