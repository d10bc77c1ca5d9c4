// The functional LayerNorm and RMSNorm entry points. The kernels see the input as rows: (D, 1, R) with D the
// elements of normalized_shape and R the product of the leading dimensions (docs/KERNELS.md), so the input must
// be dense row-major; the statistics are (1, R) and the parameters follow the D elements of a row.
#include "fusednorm/layer_norm.h"

#include "runtime/functional.h"
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm {

namespace detail {

namespace {

template <typename Tensors>
void forward(const char* function, Norm norm, const Tensors& t, const std::vector<int64_t>& normalized_shape,
             double eps, BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const Geometry g = check_rows_call(function, all, normalized_shape);
  check_eps(function, eps);
  run_forward_training(function, all, {.norm = norm, .eps = eps}, g, backend);
}

template <typename Tensors>
void backward(const char* function, Norm norm, const Tensors& t, const std::vector<int64_t>& normalized_shape,
              BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const Geometry g = check_rows_call(function, all, normalized_shape);
  run_backward(function, all, {.norm = norm}, g, backend);
}

}  // namespace

void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& o, BackendContext& backend) {
  forward("layer_norm", Norm::layer, t, o.normalized_shape, o.eps, backend);
}

void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& o, BackendContext& backend) {
  backward("layer_norm", Norm::layer, t, o.normalized_shape, backend);
}

void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& o, BackendContext& backend) {
  forward("rms_norm", Norm::rms, t, o.normalized_shape, o.eps.value_or(kRmsNormDefaultEps), backend);
}

void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& o, BackendContext& backend) {
  backward("rms_norm", Norm::rms, t, o.normalized_shape, backend);
}

}  // namespace detail

void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& options) {
  detail::on_cpu(&detail::layer_norm_forward, t, options);
}

void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& options) {
  detail::on_cpu(&detail::layer_norm_backward, t, options);
}

void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& options) {
  detail::on_cpu(&detail::rms_norm_forward, t, options);
}

void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& options) {
  detail::on_cpu(&detail::rms_norm_backward, t, options);
}

}  // namespace fusednorm
