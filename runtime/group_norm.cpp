// The functional GroupNorm entry points: validate everything first (nothing is written before the kernel runs),
// then the kernels (runtime/norm_kernels.h) run over the caller's memory.
#include "fusednorm/group_norm.h"

#include <fmt/format.h>

#include "runtime/functional.h"
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm {

namespace detail {

namespace {

constexpr const char* kFunction = "group_norm";

detail::KernelSettings settings(const GroupNormOptions& options) {
  return {.norm = Norm::group, .epilogue = options.epilogue, .eps = options.eps, .groups = options.num_groups};
}

}  // namespace

void group_norm_forward(const GroupNormForwardTensors& t, const GroupNormOptions& options, BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g = detail::check_channels_call(kFunction, all, Direction::forward_training,
                                                         Norm::group, options.epilogue, options.num_groups);
  detail::check_eps(kFunction, options.eps);
  detail::run_forward_training(kFunction, all, settings(options), g, backend);
}

void group_norm_backward(const GroupNormBackwardTensors& t, const GroupNormOptions& options,
                         BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g = detail::check_channels_call(kFunction, all, Direction::backward,
                                                         Norm::group, options.epilogue, options.num_groups);
  // SiLU's derivative needs v = xhat * weight + bias, recomputed in the backward; no other epilogue reads bias.
  if (t.bias && options.epilogue != Epilogue::silu) {
    throw Error(
        fmt::format("{}: bias is given, expected none: epilogue {} does not use it in the backward (only "
                    "silu's recomputes its input from it)",
                    kFunction, to_string(options.epilogue)));
  }
  detail::run_backward(kFunction, all, settings(options), g, backend);
}

}  // namespace detail

void group_norm_forward(const GroupNormForwardTensors& t, const GroupNormOptions& options) {
  detail::on_cpu(&detail::group_norm_forward, t, options);
}

void group_norm_backward(const GroupNormBackwardTensors& t, const GroupNormOptions& options) {
  detail::on_cpu(&detail::group_norm_backward, t, options);
}

}  // namespace fusednorm
