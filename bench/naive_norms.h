#pragma once
// The naive baselines of LayerNorm, RMSNorm and GroupNorm (InstanceNorm's too: GroupNorm with groups = C): as
// one would first write them in C++ -- per row (LayerNorm, RMSNorm) or per (sample, group) (GroupNorm), a pass
// for the mean (not RMSNorm's), a pass for the variance of the deviations (RMSNorm: the mean square), a pass to
// normalize -- in float, parallelised with OpenMP over rows or (sample, group) pairs. No blocking, no
// intrinsics, no float64: what a schedule has to beat to be worth having. Same arguments and results as
// fusednorm::layer_norm_forward / rms_norm_forward / group_norm_forward and their backwards, with weight (and
// bias, but for RMSNorm).
#include <cstdint>

#include "support/norm_reference.h"

namespace fusednorm::bench::naive {

// x: `rows` rows of `features` contiguous elements; weight and bias per feature; save_mean and save_invstd
// per row.
void layer_norm_forward(const float* x, float* y, int64_t rows, int64_t features, const float* weight,
                        const float* bias, float* save_mean, float* save_invstd, double eps);
// grad_weight = sum over rows of dy * xhat, grad_bias = sum of dy, per feature (each thread sums its rows,
// then the threads' sums are added).
void layer_norm_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t features,
                         const float* weight, const float* save_mean, const float* save_invstd, float* grad_weight,
                         float* grad_bias);

// The same per row without a mean: y = x * invstd * weight, invstd = 1 / sqrt(mean(x^2) + eps); no bias.
void rms_norm_forward(const float* x, float* y, int64_t rows, int64_t features, const float* weight, float* save_invstd,
                      double eps);
void rms_norm_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t features, const float* weight,
                       const float* save_invstd, float* grad_weight);

// dims: (N, C, S) in its layout; C / groups consecutive channels per group; weight and bias per channel;
// save_mean and save_invstd per (sample, group), (N, groups) row-major.
void group_norm_forward(const float* x, float* y, const reference::Dims& dims, int64_t groups, const float* weight,
                        const float* bias, float* save_mean, float* save_invstd, double eps);
void group_norm_backward(const float* x, const float* dy, float* dx, const reference::Dims& dims, int64_t groups,
                         const float* weight, const float* save_mean, const float* save_invstd, float* grad_weight,
                         float* grad_bias);

}  // namespace fusednorm::bench::naive
