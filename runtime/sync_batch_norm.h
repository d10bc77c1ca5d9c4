#pragma once
// SyncBatchNorm on a given backend: fusednorm::sync_batch_norm_forward/backward (fusednorm/sync_batch_norm.h) are
// these on a CpuContext, fusednorm::cuda's (fusednorm/cuda.h) on a CUDA context.
#include "fusednorm/sync_batch_norm.h"
#include "runtime/backend.h"

namespace fusednorm::detail {

void sync_batch_norm_forward(const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options,
                             BackendContext& backend);
void sync_batch_norm_backward(const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& options,
                              BackendContext& backend);

}  // namespace fusednorm::detail
