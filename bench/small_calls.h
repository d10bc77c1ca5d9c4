#pragma once
// The small-call rows (issue 14): the seed's layer, BatchNorm1d(64) on a batch of 32, called through the public
// layer API, where the call's fixed cost (checks, dispatch, thread pool) is most of its time. Each is shown next to
// a copy of x's bytes timed the same way, the least any call that reads x and writes y could take.
#include <functional>
#include <string>
#include <vector>

#include "bench/report.h"
#include "bench/timing.h"

namespace fusednorm::bench {

// The cases --filter selects: it matches a substring of "small_call/batch_norm/<direction>/32x64", the direction
// being "forward_training+backward" or "forward_inference".
int selected_small_calls(const std::string& filter);

// Times the selected cases and the copy (none when no case is selected); step(what) is called before each timing,
// for the progress line.
std::vector<SmallCallRow> time_small_calls(const std::string& filter, const TimingPlan& plan, int cores,
                                           const std::function<void(const std::string&)>& step);

}  // namespace fusednorm::bench
