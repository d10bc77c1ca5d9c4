#pragma once
// The checks every normalization's entry points make before anything is written. Each message starts with the
// function's name ("group_norm: "), then names the argument, its value and what was expected.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/epilogue.h"
#include "fusednorm/tensor.h"
#include "runtime/bind.h"
#include "runtime/call_tensors.h"
#include "runtime/variant.h"

namespace fusednorm::detail {

// x as the kernels see it (docs/KERNELS.md): three axes, innermost first (S, C, N) for nchw and (C, S, N) for
// nhwc, S all spatial dimensions flattened. LayerNorm's and RMSNorm's rows are (D, 1, R) in nchw.
// A Geometry refers to x's shape: it lives for one call.
struct Geometry {
  int64_t batch;     // N, or R: the rows (the product of the leading dimensions)
  int64_t channels;  // C, or 1 for rows
  int64_t spatial;   // S, or D: the normalized elements of a row
  Layout layout;
  std::span<const int64_t> sizes;  // of x
  bool rows = false;                  // LayerNorm / RMSNorm: x is (*, normalized_shape), dense row-major

  int64_t count() const { return batch * spatial; }                 // the elements of one channel over the batch
  int64_t elements() const { return batch * channels * spatial; }   // of x
  int64_t parameters() const { return rows ? spatial : channels; }  // the elements of weight and bias
  std::string shape() const { return shape_string(sizes); }         // of x, "[8, 64, 56, 56]", for messages
  std::array<Dim, 3> dims() const;                                  // x, y, dy, dx, z, dz as the kernels see them
};

// PyTorch's rms_norm with eps=None: torch.finfo(torch.float32).eps (2^-23), for the function and the layer.
inline constexpr double kRmsNormDefaultEps = 0x1p-23;

// x alone, as the calls below check it first: (N, C, *spatial) with 0 to 3 spatial dimensions, dense NCHW or NHWC,
// each kernel dimension within int32; or (*, normalized_shape), dense row-major. The layers check their input
// with these before they allocate what the call will fill. allow_empty: N or a spatial extent may be 0 (a member of
// SyncBatchNorm's group with no part of the batch).
Geometry check_channels_input(const char* function, const TensorView& x, bool allow_empty = false);
Geometry check_rows_input(const char* function, const TensorView& x, const std::vector<int64_t>& normalized_shape);

// The checks of a call over x of (N, C, *spatial) (norm batch, instance or group): x itself (0 to 3 spatial
// dimensions, dense NCHW or NHWC, each kernel dimension within int32); the epilogue's tensors, each required where
// the epilogue uses it and refused elsewhere (the residual z in a forward for add_relu; in a backward, y for relu
// and add_relu and dz for add_relu); every tensor like x (its shape, dense in its layout); weight, bias, the
// running statistics and the parameter gradients (one per channel); num_groups (a divisor of C); save_mean and
// save_invstd, 1-D per channel for batch, dense (N, C) for instance and (N, num_groups) for group.
Geometry check_channels_call(const char* function, const TensorRefs& t, Direction direction, Norm norm,
                             Epilogue epilogue = Epilogue::none, int64_t num_groups = 1, bool allow_empty = false);
// The same for LayerNorm and RMSNorm: x of (*, normalized_shape), dense row-major; the parameters and their
// gradients of shape normalized_shape; the statistics one per row.
Geometry check_rows_call(const char* function, const TensorRefs& t, const std::vector<int64_t>& normalized_shape);

// A backward's statistics: the forward's saved ones where it used batch statistics, the running ones (and eps)
// otherwise. `option` names the option that says which, e.g. "training".
void check_backward_statistics(const char* function, const TensorRefs& t, bool batch_statistics, double eps,
                               const char* option);
void check_eps(const char* function, double eps);
void check_momentum(const char* function, double momentum, const char* otherwise = "");
void check_both_or_neither(const char* function, const char* name_a, const TensorView* a, const char* name_b,
                           const TensorView* b);
// Training with batch statistics needs more than one value per statistic (PyTorch's message, verbatim after the
// function's name): `values` is what each statistic reduces, `what` PyTorch's word for one.
void check_more_than_one(const char* function, int64_t values, const char* what, const Geometry& g);

// What a call writes must not overlap what it reads (Halide assumes it does not), nor itself; y may be exactly
// x (in place). commits_running: the running statistics are written too, after the kernel. The runs of
// norm_kernels.h make these checks first.
void check_forward_disjoint(const char* function, const TensorRefs& t, bool commits_running);
void check_backward_disjoint(const char* function, const TensorRefs& t);

}  // namespace fusednorm::detail
