// SyncBatchNorm: BatchNorm's checks, then the split kernels (fusednorm/kinds.h) around one allgather per call.
//   forward:  statistics (this member's K, mean - K and variance per channel) -> allgather -> Chan's combine in
//             rank order -> forward_inference with the whole batch's statistics -> saved and running statistics.
//   backward: backward_reduce (this member's sum(g * xhat), sum(g)) -> allgather -> sums in rank order ->
//             backward_elementwise.
// The normalize step is BatchNorm's inference kernel, with the mean split into a float32 part m1 = float(mean) that
// x - m1 subtracts exactly near it and the remainder m2 = mean - m1 moved into the bias: y = (x - m1) * scale +
// (bias - m2 * scale). With the mean rounded to float32 instead, y of inputs whose mean is 1e4 times their standard
// deviation was off by up to 2e-4 of its scale (tests/sync_batch_norm_test, hard numerics).
// The host's part (the combine, the per-channel arithmetic) is the same on every backend: per-channel tensors and the
// kernels' per-channel results cross through the BackendContext's copies (memcpy on the CPU; stream-ordered copies on
// CUDA, where the host waits for the statistics as PyTorch's CUDA SyncBatchNorm does).
#include "fusednorm/sync_batch_norm.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/functional.h"
#include "runtime/norm_common.h"
#include "runtime/norm_kernels.h"
#include "runtime/sync_batch_norm.h"

namespace fusednorm {

namespace {

constexpr const char* kFunction = "sync_batch_norm";

detail::KernelSettings settings(const BatchNormOptions& options) {
  return {.norm = Norm::batch, .epilogue = options.epilogue, .eps = options.eps, .training = options.training};
}

// Host copies of per-channel values, through the backend that holds them.
std::vector<float> to_host(detail::BackendContext& backend, const float* from, int64_t size) {
  std::vector<float> v(static_cast<size_t>(size));
  backend.to_host(v.data(), from, size * static_cast<int64_t>(sizeof(float)));
  return v;
}
// float32 values in memory of the backend's (scratch, valid until the backend's call ends).
float* to_backend(detail::BackendContext& backend, const std::vector<float>& values) {
  float* to = backend.scratch(static_cast<int64_t>(values.size()));
  backend.to_device(to, values.data(), static_cast<int64_t>(values.size() * sizeof(float)));
  return to;
}

// A per-channel tensor's values as float32 (widened where 16-bit), or `identity` where absent.
std::vector<float> values_of(const TensorView* t, int64_t size, float identity, detail::BackendContext& backend) {
  if (!t) return std::vector<float>(static_cast<size_t>(size), identity);
  if (t->dtype() == DType::float32) return to_host(backend, t->data<float>(), size);
  std::vector<uint16_t> bits(static_cast<size_t>(size));
  backend.to_host(bits.data(), t->data_ptr(), size * 2);
  std::vector<float> v(static_cast<size_t>(size));
  for (size_t i = 0; i < bits.size(); i++) {
    v[i] = t->dtype() == DType::bfloat16 ? to_float(bfloat16{bits[i]}) : to_float(float16{bits[i]});
  }
  return v;
}

// float32 values into a tensor of any dtype (rounded to nearest even where 16-bit).
void store(const TensorView* t, const std::vector<float>& values, detail::BackendContext& backend) {
  if (!t) return;
  const int64_t size = static_cast<int64_t>(values.size());
  if (t->dtype() == DType::float32) return backend.to_device(t->data_ptr(), values.data(), size * 4);
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); i++) {
    bits[i] = t->dtype() == DType::bfloat16 ? to_bfloat16(values[i]).bits : to_float16(values[i]).bits;
  }
  backend.to_device(t->data_ptr(), bits.data(), size * 2);
}

// Every member's `values`, in rank order, checked to be what the communicator promised.
std::vector<double> allgather(Communicator& group, const std::vector<double>& values) {
  const int size = group.size();
  if (size < 1) throw Error(fmt::format("{}: the communicator has size {}, expected at least 1", kFunction, size));
  std::vector<double> gathered(static_cast<size_t>(size) * values.size());
  group.allgather(values, gathered);
  return gathered;
}

// The whole batch's statistics per channel, from every member's {count, then per channel K, mean - K, variance}.
struct BatchStatistics {
  double count = 0;
  std::vector<double> mean, var;  // biased
};

// Chan, Golub and LeVeque's pairwise combine, in rank order: the same on every member. Means are kept relative to
// the first member's K (float32 values, so K_r - K is exact in double) so that a mean far from zero keeps the
// digits of mean - K.
BatchStatistics combine(const std::vector<double>& gathered, int members, int64_t channels) {
  const size_t stride = 1 + 3 * static_cast<size_t>(channels), c_count = static_cast<size_t>(channels);
  BatchStatistics r;
  r.mean.assign(c_count, 0.0);
  r.var.assign(c_count, 0.0);
  std::vector<double> reference(c_count, 0.0), m2(c_count, 0.0);
  bool first = true;
  for (int member = 0; member < members; member++) {
    const double* part = gathered.data() + static_cast<size_t>(member) * stride;
    const double n_b = part[0];
    if (n_b == 0) continue;
    const double n = r.count + n_b;
    for (size_t c = 0; c < c_count; c++) {
      const double k = part[1 + c], centred_mean = part[1 + c_count + c], var = part[1 + 2 * c_count + c];
      if (first) reference[c] = k;
      const double mean_b = (k - reference[c]) + centred_mean;
      const double delta = mean_b - r.mean[c];
      r.mean[c] += delta * (n_b / n);
      m2[c] += var * n_b + delta * delta * (r.count * n_b / n);
    }
    r.count = n;
    first = false;
  }
  for (size_t c = 0; c < c_count; c++) {
    r.mean[c] += reference[c];
    r.var[c] = r.count > 0 ? m2[c] / r.count : 0.0;
  }
  return r;
}

void forward_training(const BatchNormForwardTensors& t, const detail::TensorRefs& all, Communicator& group,
                      const BatchNormOptions& options, const detail::Geometry& g, detail::BackendContext& backend) {
  const double momentum = detail::batch_norm_momentum(kFunction, t, options);
  detail::check_forward_disjoint(kFunction, all, /*commits_running=*/true);
  const int64_t channels = g.channels;
  const size_t c_count = static_cast<size_t>(channels);
  detail::KernelSettings s = settings(options);

  std::vector<double> mine(1 + 3 * c_count, 0.0);
  mine[0] = static_cast<double>(g.count());
  if (g.elements() > 0) {
    float* partial = backend.scratch(3 * channels);
    const detail::TensorRefs x_only{all.input};
    detail::run_statistics(kFunction, x_only, s, g, partial, backend);
    const std::vector<float> host = to_host(backend, partial, 3 * channels);
    for (size_t i = 0; i < 3 * c_count; i++) mine[1 + i] = host[i];
  }
  const BatchStatistics stats = combine(allgather(group, mine), group.size(), channels);
  if (stats.count <= 1) {
    throw Error(fmt::format("{}: Expected more than 1 value per channel when training, got input size {} and {} "
                            "value(s) per channel in the whole batch",
                            kFunction, g.shape(), stats.count));
  }

  // The inference kernel's running_mean, running_var and bias: m1, the variance, bias - m2 * scale (its scale).
  const float eps = static_cast<float>(options.eps);
  const std::vector<float> weight = values_of(all.weight, channels, 1.0f, backend);
  const std::vector<float> bias = values_of(all.bias, channels, 0.0f, backend);
  std::vector<float> mean_high(c_count), var(c_count), shifted_bias(c_count), save_mean(c_count), save_invstd(c_count);
  for (size_t c = 0; c < c_count; c++) {
    mean_high[c] = static_cast<float>(stats.mean[c]);
    var[c] = static_cast<float>(stats.var[c]);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps)) * weight[c];
    shifted_bias[c] = static_cast<float>(bias[c] - (stats.mean[c] - mean_high[c]) * scale);
    save_mean[c] = mean_high[c];
    save_invstd[c] = static_cast<float>(1.0 / std::sqrt(stats.var[c] + eps));
  }
  if (g.elements() > 0) {
    const TensorView mean_view(to_backend(backend, mean_high), {channels});
    const TensorView var_view(to_backend(backend, var), {channels});
    const TensorView bias_view(to_backend(backend, shifted_bias), {channels});
    detail::TensorRefs normalize{all.input, all.output, all.residual, all.weight, &bias_view, &mean_view, &var_view};
    detail::run_forward_inference(kFunction, normalize, s, g, backend);
  }

  // The kernel succeeded: only now is the caller's state changed, the same way on every member.
  store(all.save_mean, save_mean, backend);
  store(all.save_invstd, save_invstd, backend);
  if (!t.running_mean) return;
  // As the training kernels compute it: momentum and the correction as float32, the update in float64.
  const double m = static_cast<float>(momentum);
  const double correction =
      options.running_variance_update == RunningVarianceUpdate::unbiased
          ? static_cast<double>(static_cast<float>(stats.count / (stats.count - 1.0)))
          : 1.0;
  std::vector<float> running_mean = to_host(backend, t.running_mean->data(), channels);
  std::vector<float> running_var = to_host(backend, t.running_var->data(), channels);
  for (size_t c = 0; c < c_count; c++) {
    running_mean[c] = static_cast<float>((1.0 - m) * running_mean[c] + m * stats.mean[c]);
    running_var[c] = static_cast<float>((1.0 - m) * running_var[c] + m * stats.var[c] * correction);
  }
  store(&*t.running_mean, running_mean, backend);
  store(&*t.running_var, running_var, backend);
  if (t.num_batches_tracked) *t.num_batches_tracked += 1;
}

void backward_training(const detail::TensorRefs& all, Communicator& group, const BatchNormOptions& options,
                       const detail::Geometry& g, detail::BackendContext& backend) {
  detail::check_backward_statistics(kFunction, all, /*batch_statistics=*/true, options.eps, "training");
  detail::check_backward_disjoint(kFunction, all);
  const int64_t channels = g.channels;
  const size_t c_count = static_cast<size_t>(channels);
  const detail::KernelSettings s = settings(options);
  const float* mean = all.save_mean->data();
  const float* invstd = all.save_invstd->data();

  // This member's sum(g * xhat) and sum(g): its parameter gradients too.
  std::vector<float> sum_g_xhat(c_count, 0.0f), sum_g(c_count, 0.0f);
  if (g.elements() > 0) {
    float* sums = backend.scratch(2 * channels);
    detail::run_backward_reduce(kFunction, all, s, g, mean, invstd, sums, sums + channels, backend);
    const std::vector<float> host = to_host(backend, sums, 2 * channels);
    std::copy_n(host.begin(), c_count, sum_g_xhat.begin());
    std::copy_n(host.begin() + static_cast<std::ptrdiff_t>(c_count), c_count, sum_g.begin());
  }
  std::vector<double> mine(1 + 2 * c_count);
  mine[0] = static_cast<double>(g.count());
  for (size_t c = 0; c < c_count; c++) {
    mine[1 + c] = sum_g_xhat[c];
    mine[1 + c_count + c] = sum_g[c];
  }
  const std::vector<double> gathered = allgather(group, mine);
  double count = 0;
  std::vector<double> total_g_xhat(c_count, 0.0), total_g(c_count, 0.0);
  for (int member = 0; member < group.size(); member++) {
    const double* part = gathered.data() + static_cast<size_t>(member) * mine.size();
    count += part[0];
    for (size_t c = 0; c < c_count; c++) {
      total_g_xhat[c] += part[1 + c];
      total_g[c] += part[1 + c_count + c];
    }
  }
  if (count <= 1) {
    throw Error(fmt::format("{}: Expected more than 1 value per channel when training, got input size {} and {} "
                            "value(s) per channel in the whole batch",
                            kFunction, g.shape(), count));
  }
  if (g.elements() > 0) {
    const std::vector<float> weight = values_of(all.weight, channels, 1.0f, backend);
    std::vector<float> h_mean(c_count), h_xhat_mean(c_count);
    for (size_t c = 0; c < c_count; c++) {
      h_mean[c] = static_cast<float>(weight[c] * total_g[c] / count);
      h_xhat_mean[c] = static_cast<float>(weight[c] * total_g_xhat[c] / count);
    }
    detail::run_backward_elementwise(kFunction, all, s, g, mean, invstd, to_backend(backend, h_mean),
                                     to_backend(backend, h_xhat_mean), backend);
  }
  store(all.grad_weight, sum_g_xhat, backend);
  store(all.grad_bias, sum_g, backend);
}

}  // namespace

namespace detail {

void sync_batch_norm_forward(const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options,
                             BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const Geometry g = check_channels_call(kFunction, all, Direction::forward_training, Norm::batch, options.epilogue, 1,
                                         /*allow_empty=*/true);
  check_both_or_neither(kFunction, "running_mean", all.running_mean, "running_var", all.running_var);
  check_eps(kFunction, options.eps);
  if (options.training) return forward_training(t, all, group, options, g, backend);
  if (!t.running_mean) {
    throw Error(fmt::format("{}: running_mean and running_var are absent, expected both: evaluation (training = "
                            "false) normalizes with the running statistics",
                            kFunction));
  }
  if (g.elements() > 0) batch_norm_forward(t, options, backend);
}

void sync_batch_norm_backward(const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& options,
                              BackendContext& backend) {
  const TensorRefs all = refs_of(t);
  const Geometry g = check_channels_call(kFunction, all, Direction::backward, Norm::batch, options.epilogue, 1,
                                         /*allow_empty=*/true);
  if (options.training) return backward_training(all, group, options, g, backend);
  check_backward_statistics(kFunction, all, /*batch_statistics=*/false, options.eps, "training");
  if (g.elements() > 0) {
    batch_norm_backward(t, options, backend);
  } else {
    store(all.grad_weight, std::vector<float>(static_cast<size_t>(g.channels), 0.0f), backend);
    store(all.grad_bias, std::vector<float>(static_cast<size_t>(g.channels), 0.0f), backend);
  }
}

}  // namespace detail

void sync_batch_norm_forward(const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options) {
  detail::CpuContext cpu;
  detail::sync_batch_norm_forward(t, group, options, cpu);
}

void sync_batch_norm_backward(const BatchNormBackwardTensors& t, Communicator& group,
                              const BatchNormOptions& options) {
  detail::CpuContext cpu;
  detail::sync_batch_norm_backward(t, group, options, cpu);
}

}  // namespace fusednorm
