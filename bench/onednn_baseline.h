#pragma once
// oneDNN as a baseline, the established CPU library: batch_normalization (with its fused ReLU for BN + ReLU) on
// the problem's own plain layout (nchw / nhwc, the buffers used as they are) and on the blocked layout its
// kernels prefer (nChw16c with AVX-512, nChw8c otherwise), reordered to and from it outside the timing;
// layer_normalization on the rows. oneDNN 2.6 has no group, RMS or instance normalization: GroupNorm, RMSNorm
// and InstanceNorm have no oneDNN row. Built
// only when CMake finds oneDNN (Debian libdnnl-dev); otherwise onednn_unavailable.cpp says why there are no
// such rows.
#include <optional>
#include <string>
#include <vector>

#include "bench/problem.h"

namespace fusednorm::bench::onednn {

// "oneDNN 2.6.3 (OpenMP threading, ISA avx512_core)", or "not built (why)".
std::string description();
bool available();

enum class Storage {
  plain,    // the problem's layout, on its buffers
  blocked,  // channels blocked by the vector width, on buffers of the baseline's own
};

// The storages oneDNN has rows on for a case of this op and layout: plain, and blocked from the NCHW case of the
// BatchNorm ops (the same kernel whichever plain layout it was reordered from); none for GroupNorm, RMSNorm and
// InstanceNorm, or without oneDNN.
std::vector<Storage> storages(Op op, Layout layout);

// The row's layout name: "nchw", "nhwc", "rows", or the blocked tag ("nChw16c").
std::string layout_name(const Problem& problem, Storage storage);

// oneDNN's primitive for the problem's op and the direction (training: the batch statistics, then save_invstd
// and, for BatchNorm, the running statistics updated from oneDNN's mean and variance, O(C), timed with it;
// inference: the running statistics; backward: dx, grad_weight and grad_bias), with scale and shift. BN + ReLU
// with normalization_flags::fuse_norm_relu: the training forward writes the workspace (the ReLU's mask) the
// backward reads instead of y; the backward's rows get theirs from a forward run on each set, untimed. None
// when oneDNN was not built or does not take this problem (blocked needs 3 to 5 dimensions).
std::optional<Implementation> implementation(Direction direction, const Problem& problem, Storage storage);

}  // namespace fusednorm::bench::onednn
