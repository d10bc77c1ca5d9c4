#pragma once
// The CUDA entry points: the same tensors, options, checks and messages as the CPU functions
// (batch_norm.h, group_norm.h, layer_norm.h), run by the CUDA kernels of a build with FUSEDNORM_CUDA
// (docs/CUDA.md). Every TensorView's data() is a device pointer the caller owns (cudaMalloc, a torch.Tensor's
// data_ptr()): FusedNorm wraps it, with no host copy and no allocation per call beyond Halide's reused device
// scratch. Kernels run in the CUDA context current on the calling thread (the device's primary context, the one
// the CUDA runtime and PyTorch use; device 0's when none is current) and on the caller's stream; calls return
// once the work is queued. Errors from the driver (a launch failure, out of memory) arrive as fusednorm::Error
// with the driver's message; an asynchronous fault may surface at a later call on the stream.
//
// What the CUDA kernels cover (docs/CUDA.md): BatchNorm forward and backward in training and evaluation, with the
// none, relu and add_relu epilogues; GroupNorm (epilogue none); LayerNorm; RMSNorm; NCHW and NHWC where the norm has
// channels; float32; SyncBatchNorm's split kernels. The kernels are built affine only: a call without weight and
// bias runs them with 1 and 0.
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/layer_norm.h"
#include "fusednorm/sync_batch_norm.h"

namespace fusednorm::cuda {

// A CUstream / cudaStream_t (torch.cuda.current_stream().cuda_stream); nullptr is the legacy default stream.
using Stream = void*;

// Whether this build has CUDA kernels, libcuda.so.1 loads and a CUDA device is present. Otherwise `reason`
// (when given) says which of the three is missing. Never throws.
bool available(std::string* reason = nullptr);

// The CUDA kernels of this build (isa "cuda", schedule "hand"); empty without FUSEDNORM_CUDA.
std::vector<VariantInfo> variants();

void batch_norm_forward(const BatchNormForwardTensors& tensors, const BatchNormOptions& options = {},
                        Stream stream = nullptr);
// In evaluation (options.training = false) invstd comes from the running variance through the host, so the call
// waits for the stream.
void batch_norm_backward(const BatchNormBackwardTensors& tensors, const BatchNormOptions& options = {},
                         Stream stream = nullptr);
void group_norm_forward(const GroupNormForwardTensors& tensors, const GroupNormOptions& options,
                        Stream stream = nullptr);
void group_norm_backward(const GroupNormBackwardTensors& tensors, const GroupNormOptions& options,
                         Stream stream = nullptr);
void layer_norm_forward(const LayerNormForwardTensors& tensors, const LayerNormOptions& options,
                        Stream stream = nullptr);
void layer_norm_backward(const LayerNormBackwardTensors& tensors, const LayerNormOptions& options,
                         Stream stream = nullptr);
void rms_norm_forward(const RMSNormForwardTensors& tensors, const RMSNormOptions& options, Stream stream = nullptr);
void rms_norm_backward(const RMSNormBackwardTensors& tensors, const RMSNormOptions& options, Stream stream = nullptr);

// SyncBatchNorm (fusednorm/sync_batch_norm.h) on device tensors: the same semantics and one collective per call;
// the host combines the members' statistics (the group's allgather is of host doubles; NcclCommunicator runs it
// on the GPU), so each call waits for its statistics kernel on `stream`, as PyTorch's CUDA SyncBatchNorm does.
// num_batches_tracked is host memory.
void sync_batch_norm_forward(const BatchNormForwardTensors& tensors, Communicator& group,
                             const BatchNormOptions& options = {}, Stream stream = nullptr);
void sync_batch_norm_backward(const BatchNormBackwardTensors& tensors, Communicator& group,
                              const BatchNormOptions& options = {}, Stream stream = nullptr);

// Waits for the work queued on `stream` (for tests and the benchmark; a caller normally orders work by stream).
void synchronize(Stream stream = nullptr);

}  // namespace fusednorm::cuda
