#include "bench/naive_norms.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace fusednorm::bench::naive {
namespace {

// One row (LayerNorm) or group (GroupNorm) as a sequence of runs: `runs` runs of `run_length` contiguous
// elements, `run_stride` apart. Sums add each run into its own float first, then the runs' sums together, so
// that a group of 40960 elements is not one chain of 40960 float additions.
struct Segment {
  const float* base;
  int64_t runs, run_length, run_stride;

  template <typename F>
  float sum(const F& term) const {
    float total = 0;
    for (int64_t r = 0; r < runs; r++) {
      float partial = 0;
      for (int64_t i = r * run_stride; i < r * run_stride + run_length; i++) partial += term(i);
      total += partial;
    }
    return total;
  }
};

// LayerNorm, or RMSNorm when !centred: no mean (0, and save_mean and bias null), so the "variance" is the mean
// square and the backward has no mean(g) term, as the reference has it.
void rows_forward(bool centred, const float* x, float* y, int64_t rows, int64_t features, const float* weight,
                  const float* bias, float* save_mean, float* save_invstd, double eps) {
  const float count = static_cast<float>(features);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float* row = x + r * features;
    const Segment segment{row, 1, features, features};
    const float mean = centred ? segment.sum([&](int64_t i) { return row[i]; }) / count : 0.0f;
    const float variance = segment.sum([&](int64_t i) { return (row[i] - mean) * (row[i] - mean); }) / count;
    const float invstd = 1.0f / std::sqrt(variance + static_cast<float>(eps));
    for (int64_t i = 0; i < features; i++) {
      y[r * features + i] = (row[i] - mean) * invstd * weight[i] + (centred ? bias[i] : 0.0f);
    }
    if (centred) save_mean[r] = mean;
    save_invstd[r] = invstd;
  }
}

// dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) per row, g = dy * weight (RMSNorm: no mean(g) term).
void rows_backward(bool centred, const float* x, const float* dy, float* dx, int64_t rows, int64_t features,
                   const float* weight, const float* save_mean, const float* save_invstd, float* grad_weight,
                   float* grad_bias) {
  const size_t d = static_cast<size_t>(features);
  const float count = static_cast<float>(features);
  std::vector<float> total_weight(d, 0.0f), total_bias(d, 0.0f);
#pragma omp parallel
  {
    std::vector<float> own_weight(d, 0.0f), own_bias(d, 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = x + r * features;
      const float* dyr = dy + r * features;
      const float mean = centred ? save_mean[r] : 0.0f, invstd = save_invstd[r];
      float sum_g = 0, sum_g_xhat = 0;
      for (int64_t i = 0; i < features; i++) {
        const float xhat = (xr[i] - mean) * invstd, g = dyr[i] * weight[i];
        sum_g += g;
        sum_g_xhat += g * xhat;
        own_weight[static_cast<size_t>(i)] += dyr[i] * xhat;
        own_bias[static_cast<size_t>(i)] += dyr[i];
      }
      const float mean_g = centred ? sum_g / count : 0.0f;
      for (int64_t i = 0; i < features; i++) {
        const float xhat = (xr[i] - mean) * invstd;
        dx[r * features + i] = invstd * (dyr[i] * weight[i] - mean_g - xhat * sum_g_xhat / count);
      }
    }
#pragma omp critical
    for (size_t i = 0; i < d; i++) {
      total_weight[i] += own_weight[i];
      total_bias[i] += own_bias[i];
    }
  }
  for (size_t i = 0; i < d; i++) {
    grad_weight[i] = total_weight[i];
    if (centred) grad_bias[i] = total_bias[i];
  }
}

}  // namespace

void layer_norm_forward(const float* x, float* y, int64_t rows, int64_t features, const float* weight,
                        const float* bias, float* save_mean, float* save_invstd, double eps) {
  rows_forward(/*centred=*/true, x, y, rows, features, weight, bias, save_mean, save_invstd, eps);
}

void layer_norm_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t features,
                         const float* weight, const float* save_mean, const float* save_invstd, float* grad_weight,
                         float* grad_bias) {
  rows_backward(/*centred=*/true, x, dy, dx, rows, features, weight, save_mean, save_invstd, grad_weight, grad_bias);
}

void rms_norm_forward(const float* x, float* y, int64_t rows, int64_t features, const float* weight, float* save_invstd,
                      double eps) {
  rows_forward(/*centred=*/false, x, y, rows, features, weight, nullptr, nullptr, save_invstd, eps);
}

void rms_norm_backward(const float* x, const float* dy, float* dx, int64_t rows, int64_t features, const float* weight,
                       const float* save_invstd, float* grad_weight) {
  rows_backward(/*centred=*/false, x, dy, dx, rows, features, weight, nullptr, save_invstd, grad_weight, nullptr);
}

namespace {

// The elements of group g of sample n: NCHW, one run of (C / groups) x S; NHWC, S runs of C / groups channels.
// channel_of(i): the channel of the element at offset i from the segment's base.
struct Group {
  Segment segment;
  int64_t first_channel;
  const reference::Dims* d;

  int64_t channel_of(int64_t i) const { return first_channel + (d->layout == Layout::nchw ? i / d->s : i % d->c); }
};

Group group_of(const float* data, const reference::Dims& d, int64_t groups, int64_t n, int64_t g) {
  const int64_t per_group = d.c / groups, first = g * per_group;
  if (d.layout == Layout::nchw) return {{data + d.offset(n, first, 0), 1, per_group * d.s, 0}, first, &d};
  return {{data + d.offset(n, first, 0), d.s, per_group, d.c}, first, &d};
}

template <typename F>
void for_each_in(const Segment& s, const F& f) {
  for (int64_t r = 0; r < s.runs; r++) {
    for (int64_t i = r * s.run_stride; i < r * s.run_stride + s.run_length; i++) f(i);
  }
}

}  // namespace

void group_norm_forward(const float* x, float* y, const reference::Dims& d, int64_t groups, const float* weight,
                        const float* bias, float* save_mean, float* save_invstd, double eps) {
  const float count = static_cast<float>(d.c / groups * d.s);
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < d.n * groups; ng++) {
    const int64_t n = ng / groups, g = ng % groups;
    const Group group = group_of(x, d, groups, n, g);
    const float* in = group.segment.base;
    float* out = y + (in - x);
    const float mean = group.segment.sum([&](int64_t i) { return in[i]; }) / count;
    const float variance = group.segment.sum([&](int64_t i) { return (in[i] - mean) * (in[i] - mean); }) / count;
    const float invstd = 1.0f / std::sqrt(variance + static_cast<float>(eps));
    for_each_in(group.segment, [&](int64_t i) {
      const int64_t c = group.channel_of(i);
      out[i] = (in[i] - mean) * invstd * weight[c] + bias[c];
    });
    save_mean[ng] = mean;
    save_invstd[ng] = invstd;
  }
}

// dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) per group, g = dy * weight; grad_weight and grad_bias
// per (sample, channel) first, then over the samples.
void group_norm_backward(const float* x, const float* dy, float* dx, const reference::Dims& d, int64_t groups,
                         const float* weight, const float* save_mean, const float* save_invstd, float* grad_weight,
                         float* grad_bias) {
  const float count = static_cast<float>(d.c / groups * d.s);
  std::vector<float> sample_weight(static_cast<size_t>(d.n * d.c), 0.0f), sample_bias(sample_weight.size(), 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < d.n * groups; ng++) {
    const int64_t n = ng / groups, g = ng % groups;
    const Group group = group_of(x, d, groups, n, g);
    const float* in = group.segment.base;
    const float* grad = dy + (in - x);
    float* out = dx + (in - x);
    const float mean = save_mean[ng], invstd = save_invstd[ng];
    auto xhat = [&](int64_t i) { return (in[i] - mean) * invstd; };
    const float sum_g = group.segment.sum([&](int64_t i) { return grad[i] * weight[group.channel_of(i)]; });
    const float sum_g_xhat =
        group.segment.sum([&](int64_t i) { return grad[i] * weight[group.channel_of(i)] * xhat(i); });
    for_each_in(group.segment, [&](int64_t i) {
      const int64_t c = group.channel_of(i);
      out[i] = invstd * (grad[i] * weight[c] - sum_g / count - xhat(i) * sum_g_xhat / count);
      sample_weight[static_cast<size_t>(n * d.c + c)] += grad[i] * xhat(i);
      sample_bias[static_cast<size_t>(n * d.c + c)] += grad[i];
    });
  }
  for (int64_t c = 0; c < d.c; c++) {
    float w = 0, b = 0;
    for (int64_t n = 0; n < d.n; n++) {
      w += sample_weight[static_cast<size_t>(n * d.c + c)];
      b += sample_bias[static_cast<size_t>(n * d.c + c)];
    }
    grad_weight[c] = w;
    grad_bias[c] = b;
  }
}

}  // namespace fusednorm::bench::naive
