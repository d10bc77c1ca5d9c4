// The functional InstanceNorm entry points. With each sample's own statistics (use_input_stats) the instance
// kernels run; with the running statistics the batch kernels do (forward_inference, and the backward with
// training = false), whose per-channel math is the same (docs/KERNELS.md).
#include "fusednorm/instance_norm.h"

#include <fmt/format.h>

#include "runtime/functional.h"
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm {

namespace detail {

namespace {

constexpr const char* kFunction = "instance_norm";

detail::KernelSettings settings(const InstanceNormOptions& options) {
  return {.norm = options.use_input_stats ? Norm::instance : Norm::batch,
          .eps = options.eps,
          .momentum = static_cast<float>(options.momentum),
          .training = options.use_input_stats};
}

}  // namespace

void instance_norm_forward(const InstanceNormForwardTensors& t, const InstanceNormOptions& options,
                           BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g =
      detail::check_channels_call(kFunction, all, Direction::forward_training, Norm::instance);
  detail::check_both_or_neither(kFunction, "running_mean", all.running_mean, "running_var", all.running_var);
  detail::check_eps(kFunction, options.eps);
  if (options.use_input_stats) {
    // PyTorch's _verify_spatial_size: one value per (sample, channel) has no variance to normalize by.
    detail::check_more_than_one(kFunction, g.spatial, "spatial element", g);
    detail::check_momentum(kFunction, options.momentum);
  } else {
    if (!t.running_mean) {
      throw Error(
          fmt::format("{}: running_mean and running_var are absent, expected both: use_input_stats = false "
                      "normalizes with the running statistics",
                      kFunction));
    }
    if (t.save_mean || t.save_invstd) {
      throw Error(
          fmt::format("{}: {} is given, expected none: use_input_stats = false normalizes with the running "
                      "statistics and saves no statistics of its own",
                      kFunction, t.save_mean ? "save_mean" : "save_invstd"));
    }
  }

  detail::KernelSettings s = settings(options);
  if (!options.use_input_stats) {
    detail::run_forward_inference(kFunction, all, s, g, backend);
    return;
  }
  // PyTorch's instance_norm runs batch_norm over the (1, N x C, *spatial) view: the running variance is updated
  // with each sample's unbiased variance, over the S values of one (sample, channel).
  const double count = static_cast<double>(g.spatial);
  s.running_var_correction = static_cast<float>(count / (count - 1.0));
  detail::run_forward_training(kFunction, all, s, g, backend);
}

void instance_norm_backward(const InstanceNormBackwardTensors& t, const InstanceNormOptions& options,
                            BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g =
      detail::check_channels_call(kFunction, all, Direction::backward, Norm::instance);
  detail::check_backward_statistics(kFunction, all, options.use_input_stats, options.eps, "use_input_stats");
  detail::run_backward(kFunction, all, settings(options), g, backend);
}

}  // namespace detail

void instance_norm_forward(const InstanceNormForwardTensors& t, const InstanceNormOptions& options) {
  detail::on_cpu(&detail::instance_norm_forward, t, options);
}

void instance_norm_backward(const InstanceNormBackwardTensors& t, const InstanceNormOptions& options) {
  detail::on_cpu(&detail::instance_norm_backward, t, options);
}

}  // namespace fusednorm
