#pragma once
// oneDNN's batch_normalization as a baseline: the established CPU library, on the problem's own plain layout
// (nchw / nhwc, the buffers used as they are) and on the blocked layout its kernels prefer (nChw16c with
// AVX-512, nChw8c otherwise), reordered to and from it outside the timing. Built only when CMake finds oneDNN
// (Debian libdnnl-dev); otherwise onednn_unavailable.cpp says why there are no such rows.
#include <optional>
#include <string>

#include "bench/problem.h"

namespace fusednorm::bench::onednn {

// "oneDNN 2.6.3 (OpenMP threading, ISA avx512_core)", or "not built (why)".
std::string description();
bool available();

enum class Storage {
  plain,    // the problem's layout, on its buffers
  blocked,  // channels blocked by the vector width, on buffers of the baseline's own
};

// The row's layout name: "nchw", "nhwc", or the blocked tag ("nChw16c").
std::string layout_name(const Problem& problem, Storage storage);

// oneDNN's batch_normalization for the direction (training: the batch statistics, then save_invstd and the
// running statistics updated from oneDNN's mean and variance, O(C), timed with it; inference: the running
// statistics; backward: dx, grad_weight and grad_bias), with scale and shift. None when oneDNN was not built
// or does not take this problem (blocked needs 3 to 5 dimensions).
std::optional<Implementation> batch_norm_implementation(Direction direction, const Problem& problem, Storage storage);

}  // namespace fusednorm::bench::onednn
