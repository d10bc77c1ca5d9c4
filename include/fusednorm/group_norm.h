#pragma once
// The functional GroupNorm API, equivalent to PyTorch's native_group_norm and native_group_norm_backward (and
// ONNX GroupNormalization from opset 21, whose scale and bias are per channel; opset 18's per-group scale is
// not supported). Inputs are (N, C, *spatial) float32 with 0 to 3 spatial dimensions, dense NCHW or NHWC.
#include <cstdint>
#include <optional>

#include "fusednorm/epilogue.h"
#include "fusednorm/error.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

struct GroupNormOptions {
  int64_t num_groups = 1;  // C must be a multiple of it
  double eps = 1e-5;
  // none, relu, add_relu (residual below) or silu.
  Epilogue epilogue = Epilogue::none;
};

struct GroupNormForwardTensors {
  TensorView input;   // x, (N, C, *spatial)
  TensorView output;  // y, same shape and layout as x; may be x itself (in place)
  std::optional<TensorView> weight = std::nullopt;  // gamma (C); absent means 1
  std::optional<TensorView> bias = std::nullopt;    // beta (C); absent means 0
  // Written when given: the mean and 1 / sqrt(biased variance + eps) of each (sample, group), shape
  // (N, num_groups) (any shape with N * num_groups dense elements).
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
  std::optional<TensorView> residual = std::nullopt;  // z for Epilogue::add_relu, same shape and layout as x
};

// y = epilogue((x - mean) / sqrt(var + eps) * weight + bias), the statistics over the channels of a group and
// the spatial dimensions of one sample. Throws fusednorm::Error on bad arguments, before anything is written.
void group_norm_forward(const GroupNormForwardTensors& tensors, const GroupNormOptions& options);

struct GroupNormBackwardTensors {
  TensorView grad_output;  // dy
  TensorView input;        // x
  TensorView grad_input;   // dx (written)
  TensorView save_mean;    // from the forward, (N, num_groups)
  TensorView save_invstd;
  std::optional<TensorView> weight = std::nullopt;
  std::optional<TensorView> bias = std::nullopt;  // Epilogue::silu with affine: needed to recompute v
  std::optional<TensorView> output = std::nullopt;         // the forward's y: relu, add_relu
  std::optional<TensorView> grad_residual = std::nullopt;  // dz: add_relu (written)
  // Written (not accumulated) when given, (C).
  std::optional<TensorView> grad_weight = std::nullopt;
  std::optional<TensorView> grad_bias = std::nullopt;
};

void group_norm_backward(const GroupNormBackwardTensors& tensors, const GroupNormOptions& options);

}  // namespace fusednorm
