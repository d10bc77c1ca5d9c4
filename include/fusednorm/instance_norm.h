#pragma once
// The functional InstanceNorm API, equivalent to PyTorch's instance_norm (and ONNX InstanceNormalization, which
// has no running statistics). Inputs are (N, C, *spatial) float32 with 0 to 3 spatial dimensions, dense NCHW
// or NHWC.
#include <cstdint>
#include <optional>

#include "fusednorm/error.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

struct InstanceNormOptions {
  // PyTorch's use_input_stats: true normalizes with each (sample, channel)'s own statistics (training, or
  // track_running_stats = false); false with the running statistics, which must then be given.
  bool use_input_stats = true;
  double eps = 1e-5;
  // running = (1 - momentum) * running + momentum * (the mean over samples of the per-sample statistic), with
  // the unbiased variance. PyTorch's InstanceNorm passes momentum=None as 0 (no cumulative average).
  double momentum = 0.1;
};

struct InstanceNormForwardTensors {
  TensorView input;   // x, (N, C, *spatial)
  TensorView output;  // y, same shape and layout; may be x itself (in place)
  std::optional<TensorView> weight = std::nullopt;  // (C)
  std::optional<TensorView> bias = std::nullopt;    // (C)
  // Both or neither: read when !use_input_stats, updated in place when use_input_stats.
  std::optional<TensorView> running_mean = std::nullopt;
  std::optional<TensorView> running_var = std::nullopt;
  // use_input_stats only, written when given: (N, C) mean and 1 / sqrt(biased variance + eps).
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
};

void instance_norm_forward(const InstanceNormForwardTensors& tensors, const InstanceNormOptions& options = {});

struct InstanceNormBackwardTensors {
  TensorView grad_output;  // dy
  TensorView input;        // x
  TensorView grad_input;   // dx (written)
  std::optional<TensorView> weight = std::nullopt;
  // use_input_stats: the forward's save_mean and save_invstd (N, C); otherwise running_mean and running_var.
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
  std::optional<TensorView> running_mean = std::nullopt;
  std::optional<TensorView> running_var = std::nullopt;
  std::optional<TensorView> grad_weight = std::nullopt;  // (C), written when given
  std::optional<TensorView> grad_bias = std::nullopt;
};

void instance_norm_backward(const InstanceNormBackwardTensors& tensors, const InstanceNormOptions& options = {});

}  // namespace fusednorm
