#pragma once
// The functional BatchNorm API, equivalent to PyTorch's native_batch_norm and native_batch_norm_backward.
// Inputs are (N, C, *spatial) float32 with 0 to 3 spatial dimensions, dense NCHW or NHWC; per-channel
// tensors are 1-D with C elements. Every output is written by the kernel into memory the caller owns.
#include <cstdint>
#include <optional>

#include "fusednorm/epilogue.h"
#include "fusednorm/error.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

// How the running variance is updated in training.
//   unbiased: with the unbiased batch variance (count / (count - 1) times the biased), as PyTorch does.
//   biased:   with the biased batch variance, as ONNX BatchNormalization's training mode does.
enum class RunningVarianceUpdate { unbiased, biased };

struct BatchNormOptions {
  bool training = true;
  double eps = 1e-5;
  // The weight of the new batch statistic in the running average:
  //   running = (1 - momentum) * running + momentum * batch.
  // std::nullopt is PyTorch's momentum=None: a cumulative moving average, momentum = 1 / num_batches_tracked
  // (num_batches_tracked is incremented first, and is then required).
  std::optional<double> momentum = 0.1;
  RunningVarianceUpdate running_variance_update = RunningVarianceUpdate::unbiased;
  // Fused after the affine step: none, relu or add_relu (the residual is BatchNormForwardTensors::residual).
  Epilogue epilogue = Epilogue::none;
};

struct BatchNormForwardTensors {
  TensorView input;   // x, (N, C, *spatial)
  TensorView output;  // y, same shape and layout as x
  std::optional<TensorView> weight = std::nullopt;  // gamma (C); absent means 1
  std::optional<TensorView> bias = std::nullopt;    // beta (C); absent means 0
  // Read in evaluation; updated in place in training (when given). Both or neither.
  std::optional<TensorView> running_mean = std::nullopt;
  std::optional<TensorView> running_var = std::nullopt;
  // Incremented in training when running statistics are given (PyTorch's num_batches_tracked); required
  // when momentum is std::nullopt.
  int64_t* num_batches_tracked = nullptr;
  // Training only, optional: the batch mean and 1 / sqrt(biased batch variance + eps), for the backward.
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
  // z, same shape and layout as x: required by Epilogue::add_relu, refused otherwise.
  std::optional<TensorView> residual = std::nullopt;
};

// y = (x - mean) / sqrt(var + eps) * weight + bias, per channel. In training, mean and var are the batch
// statistics over N and spatial; in evaluation, the running statistics (which must then be given).
// Throws fusednorm::Error on bad arguments, before anything is written.
void batch_norm_forward(const BatchNormForwardTensors& tensors, const BatchNormOptions& options = {});

struct BatchNormBackwardTensors {
  TensorView grad_output;  // dy, same shape as x
  TensorView input;        // x
  TensorView grad_input;   // dx (written), same shape and layout as x
  std::optional<TensorView> weight = std::nullopt;  // gamma (C); absent means 1
  // training: the save_mean / save_invstd of the forward. evaluation: running_mean / running_var.
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
  std::optional<TensorView> running_mean = std::nullopt;
  std::optional<TensorView> running_var = std::nullopt;
  // Written (not accumulated) when given: sum(dy * xhat) and sum(dy) per channel.
  std::optional<TensorView> grad_weight = std::nullopt;
  std::optional<TensorView> grad_bias = std::nullopt;
  // Epilogue::relu and add_relu: the forward's y, whose sign is the mask (required, refused otherwise).
  std::optional<TensorView> output = std::nullopt;
  // Epilogue::add_relu: dz, the residual's gradient (written, required).
  std::optional<TensorView> grad_residual = std::nullopt;
};

// The gradients of batch_norm_forward. Uses options.training (batch statistics were used, so dx carries the
// terms through mean and variance) and options.eps (evaluation only); momentum is ignored.
void batch_norm_backward(const BatchNormBackwardTensors& tensors, const BatchNormOptions& options = {});

}  // namespace fusednorm
