#pragma once
// PyTorch on the CPU as a baseline, the library a user would otherwise call (Debian libtorch 1.13): ATen's
// normalization ops on the bench's own buffers (at::from_blob with the case's strides: channels_last for NHWC, no
// copy), each op as torch.nn's module calls it on CPU. Built only when CMake finds libtorch's package (Torch, which
// `scripts/bootstrap.sh bench` installs); otherwise pytorch_unavailable.cpp says why there are no such rows.
#include <optional>
#include <string>

#include "bench/problem.h"

namespace fusednorm::bench::pytorch {

// "PyTorch 1.13.0 (libtorch; ATen threads: 2, OpenMP)", or "not built (why)".
std::string description();
bool available();

// Before any row: at::set_num_threads(threads), and the caching allocator the rows' outputs come from.
void configure(int threads);

// Whether the op and direction has a PyTorch row (every one the bench times, when libtorch was found).
bool has_row(Op op, Direction direction);

// The row "pytorch/<layout>" of the problem's op in this direction, kind "framework": BatchNorm
// (at::native_batch_norm, then relu_ for BN + ReLU; at::native_batch_norm_backward after threshold_backward),
// LayerNorm and GroupNorm (at::native_layer_norm, at::native_group_norm and their backwards), InstanceNorm (ATen's
// instance_norm: BatchNorm on x viewed as (1, N x C, *spatial)), RMSNorm (PyTorch 1.13 has no op: the composite a
// user writes, and its backward by autograd). None without libtorch.
std::optional<Implementation> implementation(Direction direction, const Problem& problem);

}  // namespace fusednorm::bench::pytorch
