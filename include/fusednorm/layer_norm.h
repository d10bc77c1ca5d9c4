#pragma once
// The functional LayerNorm and RMSNorm APIs, equivalent to PyTorch's native_layer_norm / _fused_rms_norm and
// their backwards (ONNX LayerNormalization with axis = rank - normalized_shape.size(); its Mean and InvStdDev
// outputs are save_mean and save_invstd; ONNX RMSNormalization likewise). The input is float32, dense
// row-major (contiguous); the statistics are over its trailing normalized_shape dimensions, one set per row
// (the product of the leading dimensions).
#include <cstdint>
#include <optional>
#include <vector>

#include "fusednorm/error.h"
#include "fusednorm/tensor.h"

namespace fusednorm {

struct LayerNormOptions {
  std::vector<int64_t> normalized_shape;  // the trailing dimensions of the input, at least one
  double eps = 1e-5;
};

struct LayerNormForwardTensors {
  TensorView input;   // (*, normalized_shape)
  TensorView output;  // same shape; may be the input itself (in place)
  std::optional<TensorView> weight = std::nullopt;  // normalized_shape; absent means 1
  std::optional<TensorView> bias = std::nullopt;    // normalized_shape; absent means 0
  // Written when given: per row, dense, as many elements as rows (PyTorch's shape is (*, 1, ..., 1)).
  std::optional<TensorView> save_mean = std::nullopt;
  std::optional<TensorView> save_invstd = std::nullopt;
};

void layer_norm_forward(const LayerNormForwardTensors& tensors, const LayerNormOptions& options);

struct LayerNormBackwardTensors {
  TensorView grad_output;  // dy
  TensorView input;        // x
  TensorView grad_input;   // dx (written)
  TensorView save_mean;    // from the forward
  TensorView save_invstd;
  std::optional<TensorView> weight = std::nullopt;
  std::optional<TensorView> grad_weight = std::nullopt;  // normalized_shape, written when given
  std::optional<TensorView> grad_bias = std::nullopt;
};

void layer_norm_backward(const LayerNormBackwardTensors& tensors, const LayerNormOptions& options);

struct RMSNormOptions {
  std::vector<int64_t> normalized_shape;
  // PyTorch's eps=None: the float32 machine epsilon (torch.finfo(torch.float32).eps = 2^-23). ONNX's default
  // is 1e-5; pass it explicitly.
  std::optional<double> eps = std::nullopt;
};

struct RMSNormForwardTensors {
  TensorView input;
  TensorView output;
  std::optional<TensorView> weight = std::nullopt;       // normalized_shape; absent means 1
  std::optional<TensorView> save_invstd = std::nullopt;  // per row: 1 / sqrt(mean(x^2) + eps), written when given
};

// y = x / sqrt(mean(x^2) + eps) * weight, per row.
void rms_norm_forward(const RMSNormForwardTensors& tensors, const RMSNormOptions& options);

struct RMSNormBackwardTensors {
  TensorView grad_output;
  TensorView input;
  TensorView grad_input;
  TensorView save_invstd;
  std::optional<TensorView> weight = std::nullopt;
  std::optional<TensorView> grad_weight = std::nullopt;
};

void rms_norm_backward(const RMSNormBackwardTensors& tensors, const RMSNormOptions& options);

}  // namespace fusednorm
