// Runs the kernel this project generated (consumer_batch_norm_nhwc, called directly over halide_buffer_t) and
// the installed runtime's batch_norm_forward on the same input, and compares both with a float64 reference.
// Exits non-zero on a mismatch.
#include <HalideBuffer.h>
#include <fusednorm/batch_norm.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "consumer_batch_norm_nhwc.h"

namespace {

constexpr int N = 4, C = 24, H = 9, W = 11, S = H * W;
constexpr double kEps = 1e-5, kMomentum = 0.1;

// NHWC offset of (n, c, s).
int at(int n, int c, int s) { return (n * S + s) * C + c; }

double max_relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double scale = 1e-30, error = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); i++) error = std::max(error, std::abs(got[i] - want[i]));
  return error / scale;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(N * C * S), weight(C), bias(C), running_mean(C), running_var(C);
  for (float& v : x) v = 3.0f + 2.0f * normal(rng);
  for (int c = 0; c < C; c++) {
    weight[c] = 1.0f + 0.1f * normal(rng);
    bias[c] = normal(rng);
    running_mean[c] = 0.1f * normal(rng);
    running_var[c] = 1.0f + 0.1f * std::abs(normal(rng));
  }

  // float64 reference: batch statistics over N and spatial.
  std::vector<double> y_ref(x.size());
  for (int c = 0; c < C; c++) {
    double sum = 0, squares = 0;
    for (int n = 0; n < N; n++)
      for (int s = 0; s < S; s++) sum += x[at(n, c, s)];
    const double mean = sum / (N * S);
    for (int n = 0; n < N; n++)
      for (int s = 0; s < S; s++) squares += (x[at(n, c, s)] - mean) * (x[at(n, c, s)] - mean);
    const double invstd = 1.0 / std::sqrt(squares / (N * S) + kEps);
    for (int n = 0; n < N; n++)
      for (int s = 0; s < S; s++) y_ref[at(n, c, s)] = (x[at(n, c, s)] - mean) * invstd * weight[c] + bias[c];
  }

  // This project's kernel: x is (c, s, n) innermost first in NHWC, as the generator documents.
  std::vector<float> y(x.size(), NAN), save_mean(C), save_invstd(C), new_mean(C), new_var(C);
  halide_dimension_t dims[3] = {{0, C, 1, 0}, {0, S, C, 0}, {0, N, C * S, 0}};
  Halide::Runtime::Buffer<float> x_buffer(x.data(), 3, dims), y_buffer(y.data(), 3, dims);
  auto per_channel = [](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), C); };
  auto w = per_channel(weight), b = per_channel(bias), rm = per_channel(running_mean), rv = per_channel(running_var);
  auto sm = per_channel(save_mean), si = per_channel(save_invstd), nm = per_channel(new_mean), nv = per_channel(new_var);
  const float correction = float(N * S) / float(N * S - 1);
  int status = consumer_batch_norm_nhwc(x_buffer, rm, rv, float(kMomentum), float(kEps), correction, w, b, y_buffer,
                                        sm, si, nm, nv);
  const double generated_error = max_relative_error(y, y_ref);

  // The installed runtime, same input.
  std::vector<float> y_runtime(x.size(), NAN);
  const std::vector<int64_t> shape{N, C, H, W};
  fusednorm::batch_norm_forward({.input = fusednorm::TensorView::channels_last(x.data(), shape),
                                 .output = fusednorm::TensorView::channels_last(y_runtime.data(), shape),
                                 .weight = fusednorm::TensorView(weight.data(), {C}),
                                 .bias = fusednorm::TensorView(bias.data(), {C})},
                                {.training = true, .eps = kEps});
  const double runtime_error = max_relative_error(y_runtime, y_ref);

  std::printf("consumer_batch_norm_nhwc: status %d, max relative error %.2e\n", status, generated_error);
  std::printf("fusednorm::batch_norm_forward: max relative error %.2e\n", runtime_error);
  const bool ok = status == 0 && generated_error < 1e-5 && runtime_error < 1e-5;
  std::printf("%s\n", ok ? "consumer: OK" : "consumer: MISMATCH");
  return ok ? 0 : 1;
}
