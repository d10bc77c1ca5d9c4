#pragma once
// The functional entry points on a given backend: the public CPU functions (batch_norm.h, group_norm.h, ...) and
// the CUDA ones (cuda.h) are these, with a CpuContext or a CUDA context. One home for each norm's checks and
// settings (momentum, the running variance's correction, num_batches_tracked), whatever runs the kernels.
#include "fusednorm/batch_norm.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "runtime/backend.h"

namespace fusednorm::detail {

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& o, BackendContext& backend);
void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& o, BackendContext& backend);
// A BatchNorm training forward's momentum and num_batches_tracked, checked; the momentum of this call's running
// statistics update (1 / (num_batches_tracked + 1) for std::nullopt, PyTorch's cumulative moving average).
double batch_norm_momentum(const char* function, const BatchNormForwardTensors& t, const BatchNormOptions& o);
void instance_norm_forward(const InstanceNormForwardTensors& t, const InstanceNormOptions& o,
                           BackendContext& backend);
void instance_norm_backward(const InstanceNormBackwardTensors& t, const InstanceNormOptions& o,
                            BackendContext& backend);
void group_norm_forward(const GroupNormForwardTensors& t, const GroupNormOptions& o, BackendContext& backend);
void group_norm_backward(const GroupNormBackwardTensors& t, const GroupNormOptions& o, BackendContext& backend);
void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& o, BackendContext& backend);
void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& o, BackendContext& backend);
void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& o, BackendContext& backend);
void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& o, BackendContext& backend);

// Runs an entry point on the CPU: the public functions of batch_norm.h, group_norm.h, ... are this.
template <typename Tensors, typename Options>
void on_cpu(void (*entry)(const Tensors&, const Options&, BackendContext&), const Tensors& t, const Options& o) {
  CpuContext cpu;
  entry(t, o, cpu);
}

}  // namespace fusednorm::detail
