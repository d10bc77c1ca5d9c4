#include "bench/naive_batch_norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fusednorm::bench::naive {
namespace {

// NCHW: each channel is N contiguous planes of S elements, so a thread takes whole channels.
// NHWC: each of the N x S rows holds all channels contiguously, so a thread takes a contiguous range of
// channels and walks every row, accumulating its channels side by side.
struct ChannelRange {
  int64_t begin, end;
};

ChannelRange this_threads_channels(int64_t channels) {
  const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
  return {channels * thread / threads, channels * (thread + 1) / threads};
}

double count_per_channel(const reference::Dims& d) { return static_cast<double>(d.n * d.s); }

// The per-channel sums the forward needs, in double.
void channel_mean_and_variance_nchw(const float* x, const reference::Dims& d, int64_t c, double& mean,
                                    double& variance) {
  double sum = 0;
  for (int64_t n = 0; n < d.n; n++) {
    const float* plane = x + (n * d.c + c) * d.s;
    for (int64_t s = 0; s < d.s; s++) sum += plane[s];
  }
  mean = sum / count_per_channel(d);
  double squares = 0;
  for (int64_t n = 0; n < d.n; n++) {
    const float* plane = x + (n * d.c + c) * d.s;
    for (int64_t s = 0; s < d.s; s++) {
      const double deviation = plane[s] - mean;
      squares += deviation * deviation;
    }
  }
  variance = squares / count_per_channel(d);
}

void channel_mean_and_variance_nhwc(const float* x, const reference::Dims& d, ChannelRange range,
                                    std::vector<double>& mean, std::vector<double>& variance) {
  const int64_t rows = d.n * d.s;
  std::vector<double> sum(static_cast<size_t>(d.c), 0.0), squares(static_cast<size_t>(d.c), 0.0);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = range.begin; c < range.end; c++) sum[c] += x[r * d.c + c];
  }
  for (int64_t c = range.begin; c < range.end; c++) mean[c] = sum[c] / count_per_channel(d);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = range.begin; c < range.end; c++) {
      const double deviation = x[r * d.c + c] - mean[c];
      squares[c] += deviation * deviation;
    }
  }
  for (int64_t c = range.begin; c < range.end; c++) variance[c] = squares[c] / count_per_channel(d);
}

// The epilogue after the affine step: ReLU or nothing.
float activate(float v, bool relu) { return relu ? std::max(v, 0.0f) : v; }

// y = (x - mean) * scale + bias with scale = invstd * weight, in float: the statistics are the careful part.
void normalize_nchw(const float* x, float* y, const reference::Dims& d, int64_t c, float mean, float scale, float bias,
                    bool relu = false) {
  for (int64_t n = 0; n < d.n; n++) {
    const int64_t plane = (n * d.c + c) * d.s;
    for (int64_t s = 0; s < d.s; s++) y[plane + s] = activate((x[plane + s] - mean) * scale + bias, relu);
  }
}

void normalize_nhwc(const float* x, float* y, const reference::Dims& d, ChannelRange range, const float* mean,
                    const float* scale, const float* bias, bool relu = false) {
  for (int64_t r = 0; r < d.n * d.s; r++) {
    for (int64_t c = range.begin; c < range.end; c++) {
      y[r * d.c + c] = activate((x[r * d.c + c] - mean[c]) * scale[c] + bias[c], relu);
    }
  }
}

// Saves the batch statistics and updates the running ones (PyTorch: unbiased variance in the running average).
void commit_statistics(const reference::Dims& d, int64_t c, double mean, double variance, double eps, double momentum,
                       float* running_mean, float* running_var, float* save_mean, float* save_invstd) {
  const double count = count_per_channel(d);
  save_mean[c] = static_cast<float>(mean);
  save_invstd[c] = static_cast<float>(1.0 / std::sqrt(variance + eps));
  running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * mean);
  running_var[c] = static_cast<float>((1 - momentum) * running_var[c] + momentum * variance * count / (count - 1));
}

}  // namespace

void batch_norm_forward_training(const float* x, float* y, const reference::Dims& d, const float* weight,
                                 const float* bias, float* running_mean, float* running_var, float* save_mean,
                                 float* save_invstd, double momentum, double eps, Epilogue epilogue) {
  const bool relu = epilogue == Epilogue::relu;
  if (d.layout == Layout::nchw) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.c; c++) {
      double mean = 0, variance = 0;
      channel_mean_and_variance_nchw(x, d, c, mean, variance);
      commit_statistics(d, c, mean, variance, eps, momentum, running_mean, running_var, save_mean, save_invstd);
      normalize_nchw(x, y, d, c, save_mean[c], save_invstd[c] * weight[c], bias[c], relu);
    }
    return;
  }
  std::vector<double> mean(static_cast<size_t>(d.c)), variance(static_cast<size_t>(d.c));
  std::vector<float> scale(static_cast<size_t>(d.c));
#pragma omp parallel
  {
    const ChannelRange range = this_threads_channels(d.c);
    channel_mean_and_variance_nhwc(x, d, range, mean, variance);
    for (int64_t c = range.begin; c < range.end; c++) {
      commit_statistics(d, c, mean[c], variance[c], eps, momentum, running_mean, running_var, save_mean, save_invstd);
      scale[c] = save_invstd[c] * weight[c];
    }
    normalize_nhwc(x, y, d, range, save_mean, scale.data(), bias, relu);
  }
}

void batch_norm_forward_inference(const float* x, float* y, const reference::Dims& d, const float* weight,
                                  const float* bias, const float* running_mean, const float* running_var, double eps) {
  std::vector<float> scale(static_cast<size_t>(d.c));
  for (int64_t c = 0; c < d.c; c++) {
    scale[c] = static_cast<float>(weight[c] / std::sqrt(static_cast<double>(running_var[c]) + eps));
  }
  if (d.layout == Layout::nchw) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.c; c++) normalize_nchw(x, y, d, c, running_mean[c], scale[c], bias[c]);
    return;
  }
#pragma omp parallel
  normalize_nhwc(x, y, d, this_threads_channels(d.c), running_mean, scale.data(), bias);
}

// dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * invstd * weight, with xhat = (x - mean) * invstd; the two
// means come from sums in double, which are also grad_bias and grad_weight. With the ReLU, dy is first masked by
// the forward's y > 0.
void batch_norm_backward(const float* x, const float* dy, float* dx, const reference::Dims& d, const float* weight,
                         const float* save_mean, const float* save_invstd, float* grad_weight, float* grad_bias,
                         const float* relu_output) {
  const double count = count_per_channel(d);
  const size_t channels = static_cast<size_t>(d.c);
  std::vector<double> sum_dy(channels, 0.0), sum_dy_xhat(channels, 0.0);
  std::vector<float> mean_dy(channels), mean_dy_xhat(channels);
  auto finish_sums = [&](int64_t c) {
    grad_bias[c] = static_cast<float>(sum_dy[c]);
    grad_weight[c] = static_cast<float>(sum_dy_xhat[c]);
    mean_dy[c] = static_cast<float>(sum_dy[c] / count);
    mean_dy_xhat[c] = static_cast<float>(sum_dy_xhat[c] / count);
  };
  auto grad = [&](int64_t i) { return relu_output && !(relu_output[i] > 0) ? 0.0f : dy[i]; };
  auto accumulate = [&](int64_t c, int64_t i) {
    const float g = grad(i);
    sum_dy[c] += g;
    sum_dy_xhat[c] += static_cast<double>(g) * (x[i] - save_mean[c]) * save_invstd[c];
  };
  auto write_dx = [&](int64_t c, int64_t i) {
    const float xhat = (x[i] - save_mean[c]) * save_invstd[c];
    dx[i] = (grad(i) - mean_dy[c] - xhat * mean_dy_xhat[c]) * save_invstd[c] * weight[c];
  };

  if (d.layout == Layout::nchw) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < d.c; c++) {
      for (int64_t n = 0; n < d.n; n++) {
        for (int64_t i = (n * d.c + c) * d.s; i < (n * d.c + c + 1) * d.s; i++) accumulate(c, i);
      }
      finish_sums(c);
      for (int64_t n = 0; n < d.n; n++) {
        for (int64_t i = (n * d.c + c) * d.s; i < (n * d.c + c + 1) * d.s; i++) write_dx(c, i);
      }
    }
    return;
  }
#pragma omp parallel
  {
    const ChannelRange range = this_threads_channels(d.c);
    for (int64_t r = 0; r < d.n * d.s; r++) {
      for (int64_t c = range.begin; c < range.end; c++) accumulate(c, r * d.c + c);
    }
    for (int64_t c = range.begin; c < range.end; c++) finish_sums(c);
    for (int64_t r = 0; r < d.n * d.s; r++) {
      for (int64_t c = range.begin; c < range.end; c++) write_dx(c, r * d.c + c);
    }
  }
}

}  // namespace fusednorm::bench::naive
