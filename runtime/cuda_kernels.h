#pragma once
// The CUDA side of runtime/norm_kernels.h: while a fusednorm::cuda entry point runs (cuda::active_scope()), the
// CPU entry points' checks run unchanged and their run_* calls come here, where the tensors are device pointers.
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm::detail {

void run_cuda_forward_training(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g);
void run_cuda_forward_inference(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g);
void run_cuda_backward(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g);

}  // namespace fusednorm::detail
