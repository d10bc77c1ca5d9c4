// Stands in for pytorch_baseline.cpp when CMake did not find libtorch: no rows, and the reason for the header.
#include "bench/pytorch_baseline.h"

#ifndef FUSEDNORM_BENCH_PYTORCH_MISSING
#define FUSEDNORM_BENCH_PYTORCH_MISSING "libtorch was not found at configure time"
#endif

namespace fusednorm::bench::pytorch {

std::string description() { return "not built (" FUSEDNORM_BENCH_PYTORCH_MISSING ")"; }

bool available() { return false; }

void configure(int) {}

bool has_row(Op, Direction) { return false; }

std::optional<Implementation> implementation(Direction, const Problem&) { return std::nullopt; }

}  // namespace fusednorm::bench::pytorch
