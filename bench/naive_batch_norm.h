#pragma once
// The naive baseline: BatchNorm as one would first write it in C++ -- per channel, a pass for the mean, a
// pass for the variance (both accumulated in double), a pass to normalize -- parallelised over channels with
// OpenMP. No blocking, no intrinsics: what a schedule has to beat to be worth having.
// Same arguments and results as fusednorm::batch_norm_forward / batch_norm_backward with weight and bias, and
// the ReLU epilogue when asked.
#include "fusednorm/epilogue.h"
#include "support/norm_reference.h"

namespace fusednorm::bench::naive {

// Training: normalizes with the batch statistics, writes save_mean / save_invstd and updates the running
// statistics as PyTorch does (unbiased variance, momentum). epilogue: none or relu.
void batch_norm_forward_training(const float* x, float* y, const reference::Dims& dims, const float* weight,
                                 const float* bias, float* running_mean, float* running_var, float* save_mean,
                                 float* save_invstd, double momentum, double eps, Epilogue epilogue = Epilogue::none);

void batch_norm_forward_inference(const float* x, float* y, const reference::Dims& dims, const float* weight,
                                  const float* bias, const float* running_mean, const float* running_var, double eps);

// Training backward: dx through the batch statistics, and grad_weight = sum(dy * xhat), grad_bias = sum(dy).
// relu_output: the ReLU forward's y, whose y > 0 masks dy; null without the epilogue.
void batch_norm_backward(const float* x, const float* dy, float* dx, const reference::Dims& dims, const float* weight,
                         const float* save_mean, const float* save_invstd, float* grad_weight, float* grad_bias,
                         const float* relu_output = nullptr);

}  // namespace fusednorm::bench::naive
