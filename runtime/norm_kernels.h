#pragma once
// Calling the generated kernels of every norm, on every backend, after the norm's own validation
// (docs/KERNELS.md): what the call writes is checked not to overlap what it reads, the backend's limits are
// checked, the plan is found (runtime/plan.h), each argument is bound to the caller's memory (or to scratch where
// the caller gave none: weight 1, bias 0, statistics and gradients not wanted), and the running statistics are
// committed only after the kernel succeeded.
#include <cstdint>

#include "fusednorm/kinds.h"
#include "runtime/backend.h"
#include "runtime/norm_common.h"

namespace fusednorm::detail {

// What a call asks of the kernels besides its tensors.
struct KernelSettings {
  Norm norm;  // the kernels' norm: InstanceNorm with running statistics runs the batch kernels
  Epilogue epilogue = Epilogue::none;
  double eps = 0.0;
  int64_t groups = 1;                   // norm group: num_groups
  float momentum = 0.0f;                // norm batch, instance: the running statistics' update
  float running_var_correction = 1.0f;  // count / (count - 1) for the unbiased running variance
  bool training = true;                 // backward of norm batch: the forward used batch statistics
};

// The statistics' (G, B) of a call (docs/KERNELS.md): (C, 1) for batch, (C, N) for instance, (num_groups, N) for
// group, (1, R) for rows.
struct StatisticsShape {
  int64_t groups, blocks;
  int64_t count() const { return groups * blocks; }
};
inline StatisticsShape statistics_shape(const KernelSettings& s, const Geometry& g) {
  return {s.norm == Norm::group ? s.groups : g.channels, s.norm == Norm::batch ? 1 : g.batch};
}

// Affine kernels run when the call has weight or bias (or, in a backward, a parameter gradient).
void run_forward_training(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                          BackendContext& backend);
void run_forward_inference(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                           BackendContext& backend);
// training: the saved statistics, and the gradient through them; otherwise (norm batch) the running statistics,
// held fixed.
void run_backward(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                  BackendContext& backend);

// SyncBatchNorm's split kernels (fusednorm/kinds.h; norm batch, runtime/sync_batch_norm.cpp), over x of `g`, which
// must have elements. Each per-channel array holds C float32 values.
// statistics: this batch's K, mean - K and biased variance per channel, into partial[0, C), [C, 2C), [2C, 3C).
void run_statistics(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                    float* partial, BackendContext& backend);
// backward_reduce: this batch's sum(g * xhat) and sum(g) per channel (g: dy through the epilogue, with y for
// the ReLU mask), xhat with the given mean and invstd.
void run_backward_reduce(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                         const float* mean, const float* invstd, float* sum_g_xhat, float* sum_g,
                         BackendContext& backend);
// backward_elementwise: dx (and dz) from the given mean and invstd and the whole batch's means of h = weight * g
// and h * xhat (t.weight, or 1).
void run_backward_elementwise(const char* function, const TensorRefs& t, const KernelSettings& s, const Geometry& g,
                              const float* mean, const float* invstd, const float* h_mean, const float* h_xhat_mean,
                              BackendContext& backend);

}  // namespace fusednorm::detail
