// Stands in for onednn_baseline.cpp when CMake did not find oneDNN: no rows, and the reason for the header.
#include "bench/onednn_baseline.h"

#ifndef FUSEDNORM_BENCH_ONEDNN_MISSING
#define FUSEDNORM_BENCH_ONEDNN_MISSING "oneDNN was not found at configure time"
#endif

namespace fusednorm::bench::onednn {

std::string description() { return "not built (" FUSEDNORM_BENCH_ONEDNN_MISSING ")"; }

bool available() { return false; }

std::string layout_name(const Problem& problem, Storage storage) {
  return storage == Storage::plain ? problem.layout_name() : "blocked";
}

std::vector<Storage> storages(Op, Layout) { return {}; }

std::optional<Implementation> implementation(Direction, const Problem&, Storage) { return std::nullopt; }

}  // namespace fusednorm::bench::onednn
