// Fuzz target: load_state_dict() on any bytes, then the state into a layer. What must hold, besides no crash and no
// sanitizer report: the loader returns or throws fusednorm::Error (nothing else escapes); what it loads saves and
// loads again bit for bit; a layer's load_from either takes the state or throws Error and keeps its own.
#include <cstring>

#include "fusednorm/error.h"
#include "fusednorm/layers.h"
#include "fusednorm/state_dict.h"
#include "fuzz/fuzz_support.h"

namespace {

using fusednorm::StateDict;
using fusednorm::StateTensor;

bool same(const StateTensor& a, const StateTensor& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.f32.size() == b.f32.size() && a.i64 == b.i64 &&
         (a.f32.empty() || std::memcmp(a.f32.data(), b.f32.data(), a.f32.size() * sizeof(float)) == 0);
}

bool same(const StateDict& a, const StateDict& b) {
  if (a.size() != b.size()) return false;
  for (auto i = a.begin(), j = b.begin(); i != a.end(); ++i, ++j) {
    if (i->first != j->first || !same(i->second, j->second)) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fusednorm;
  StateDict state;
  try {
    state = load_state_dict(fuzz::MemoryFile(data, size).path());
  } catch (const Error&) {
    return 0;
  }
  fuzz::MemoryFile saved;
  save_state_dict(state, saved.path());
  if (!same(state, load_state_dict(saved.path()))) fuzz::violated("a loaded state dict did not round-trip");

  // A BatchNorm1d of as many features as the file's weight has (if it has one of a sane size).
  int64_t features = 3;
  if (auto w = state.find("weight"); w != state.end() && w->second.shape.size() == 1) {
    features = std::min<int64_t>(std::max<int64_t>(w->second.shape[0], 1), 4096);
  }
  BatchNorm1d layer(features);
  StateDict before, after;
  layer.save_to(before);
  try {
    layer.load_from(state);
  } catch (const Error&) {
    layer.save_to(after);
    if (!same(before, after)) fuzz::violated("load_from threw and changed the layer");
  }
  return 0;
}
