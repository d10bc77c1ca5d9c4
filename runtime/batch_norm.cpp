// The functional BatchNorm entry points: validate everything first (nothing is written before the kernel
// runs), then the kernels (runtime/norm_kernels.h) run over the caller's memory and the running statistics are
// committed.
#include "fusednorm/batch_norm.h"

#include <fmt/format.h>

#include <limits>

#include "runtime/functional.h"
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"

namespace fusednorm {

namespace detail {

double batch_norm_momentum(const char* function, const BatchNormForwardTensors& t, const BatchNormOptions& options) {
  if (options.momentum) {
    detail::check_momentum(function, *options.momentum, " (or std::nullopt for a cumulative moving average)");
  }
  if (t.running_mean && !options.momentum && !t.num_batches_tracked) {
    throw Error(
        fmt::format("{}: num_batches_tracked is null, expected a counter: momentum is std::nullopt "
                    "(cumulative moving average, momentum = 1 / num_batches_tracked)",
                    function));
  }
  if (t.num_batches_tracked &&
      (*t.num_batches_tracked < 0 || *t.num_batches_tracked == std::numeric_limits<int64_t>::max())) {
    throw Error(fmt::format("{}: num_batches_tracked is {}, expected 0 to 2^63 - 2 (it counts this batch too)",
                            function, *t.num_batches_tracked));
  }
  if (options.momentum) return *options.momentum;
  return t.num_batches_tracked ? 1.0 / static_cast<double>(*t.num_batches_tracked + 1) : 0.0;
}

namespace {

constexpr const char* kFunction = "batch_norm";

detail::KernelSettings settings(const BatchNormOptions& options) {
  return {.norm = Norm::batch, .epilogue = options.epilogue, .eps = options.eps, .training = options.training};
}

void forward_training(const BatchNormForwardTensors& t, const TensorRefs& all, const BatchNormOptions& options,
                      const Geometry& g, BackendContext& backend) {
  detail::check_more_than_one(kFunction, g.count(), "value per channel", g);
  detail::KernelSettings s = settings(options);
  s.momentum = static_cast<float>(batch_norm_momentum(kFunction, t, options));
  const double count = static_cast<double>(g.count());
  if (options.running_variance_update == RunningVarianceUpdate::unbiased) {
    s.running_var_correction = static_cast<float>(count / (count - 1.0));
  }
  detail::run_forward_training(kFunction, all, s, g, backend);
  if (t.running_mean && t.num_batches_tracked) *t.num_batches_tracked += 1;
}

}  // namespace

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& options, BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g = detail::check_channels_call(kFunction, all, Direction::forward_training,
                                                         Norm::batch, options.epilogue);
  detail::check_both_or_neither(kFunction, "running_mean", all.running_mean, "running_var", all.running_var);
  detail::check_eps(kFunction, options.eps);
  if (options.training) {
    forward_training(t, all, options, g, backend);
    return;
  }
  if (!t.running_mean) {
    throw Error(
        fmt::format("{}: running_mean and running_var are absent, expected both: evaluation (training = "
                    "false) normalizes with the running statistics",
                    kFunction));
  }
  detail::run_forward_inference(kFunction, all, settings(options), g, backend);
}

void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& options,
                         BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const detail::Geometry g =
      detail::check_channels_call(kFunction, all, Direction::backward, Norm::batch, options.epilogue);
  // As the training forward refuses it: one value per channel has no batch statistics to differentiate.
  if (options.training) detail::check_more_than_one(kFunction, g.count(), "value per channel", g);
  detail::check_backward_statistics(kFunction, all, options.training, options.eps, "training");
  detail::run_backward(kFunction, all, settings(options), g, backend);
}

}  // namespace detail

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& options) {
  detail::on_cpu(&detail::batch_norm_forward, t, options);
}

void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& options) {
  detail::on_cpu(&detail::batch_norm_backward, t, options);
}

}  // namespace fusednorm
