// Fuzz target: load_tuning() on any bytes. What must hold, besides no crash and no sanitizer report: it loads or
// throws fusednorm::Error, and a refused file leaves dispatch as it was (a call still runs).
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fusednorm;
  clear_tuning();
  try {
    load_tuning(fuzz::MemoryFile(data, size).path());
  } catch (const Error&) {
    // Refused: the table before (none) stays, so a call runs.
    std::vector<float> x{1, 2, 3, 4, 5, 6}, y(6);
    batch_norm_forward({.input = TensorView(x.data(), {3, 2}), .output = TensorView(y.data(), {3, 2})});
    if (y[0] >= 0 || y[4] <= 0) fuzz::violated("a call after a refused table gave a wrong result");
  }
  clear_tuning();
  return 0;
}
