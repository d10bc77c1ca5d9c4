#pragma once
// fusednorm_bench --tune: times every variant of each kernel on representative shapes of each shape class on this
// machine, each verified against the float64 reference first, and writes the tuning table that dispatch loads
// (fusednorm::load_tuning, FUSEDNORM_TUNING). docs/TUNING.md and bench/README.md describe it.
#include "bench/machine.h"
#include "bench/options.h"

namespace fusednorm::bench {

// Returns the process's exit status: 0 when the table was written.
int run_tuning(const Options& options, const MachineInfo& machine, int threads);

}  // namespace fusednorm::bench
