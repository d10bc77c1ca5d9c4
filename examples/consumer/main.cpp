// Runs the kernels this project generated (GroupNorm + SiLU, NHWC: forward and backward in float32, forward with
// float16 storage), called directly over halide_buffer_t, and the installed runtime's group_norm_forward on the
// same input, and compares them with a float64 reference. Exits non-zero on a mismatch.
#include <HalideBuffer.h>
#include <fusednorm/group_norm.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "unet_group_norm_silu_backward.h"
#include "unet_group_norm_silu_f16_forward_training.h"
#include "unet_group_norm_silu_forward_training.h"

namespace {

constexpr int N = 3, C = 24, G = 6, H = 9, W = 11, S = H * W, Cg = C / G;
constexpr double kEps = 1e-5;

// NHWC offset of (n, c, s).
int at(int n, int c, int s) { return (n * S + s) * C + c; }

template <typename T>
double max_relative_error(const std::vector<T>& got, const std::vector<double>& want) {
  double scale = 1e-30, error = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); i++) error = std::max(error, std::abs(double(got[i]) - want[i]));
  return error / scale;
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

struct Reference {
  std::vector<double> y, dx, dweight, dbias;
};

// GroupNorm + SiLU and its gradient, from the definitions, in float64.
Reference reference(const std::vector<float>& x, const std::vector<float>& dy, const std::vector<float>& weight,
                    const std::vector<float>& bias) {
  Reference r{std::vector<double>(x.size()), std::vector<double>(x.size()), std::vector<double>(C, 0.0),
              std::vector<double>(C, 0.0)};
  const double count = Cg * S;
  for (int n = 0; n < N; n++) {
    for (int g = 0; g < G; g++) {
      double sum = 0, squares = 0;
      for (int c = g * Cg; c < (g + 1) * Cg; c++)
        for (int s = 0; s < S; s++) sum += x[at(n, c, s)];
      const double mean = sum / count;
      for (int c = g * Cg; c < (g + 1) * Cg; c++)
        for (int s = 0; s < S; s++) squares += (x[at(n, c, s)] - mean) * (x[at(n, c, s)] - mean);
      const double invstd = 1.0 / std::sqrt(squares / count + kEps);
      // dL/dxhat = h; dx = invstd * (h - mean(h) - xhat * mean(h * xhat)) over the group.
      std::vector<double> h(Cg * S), xhat(Cg * S);
      double mean_h = 0, mean_h_xhat = 0;
      for (int c = g * Cg; c < (g + 1) * Cg; c++) {
        for (int s = 0; s < S; s++) {
          const int i = at(n, c, s), k = (c - g * Cg) * S + s;
          xhat[k] = (x[i] - mean) * invstd;
          const double v = xhat[k] * weight[c] + bias[c];
          r.y[i] = v * sigmoid(v);
          const double dv = dy[i] * sigmoid(v) * (1 + v * (1 - sigmoid(v)));
          r.dweight[c] += dv * xhat[k];
          r.dbias[c] += dv;
          h[k] = dv * weight[c];
          mean_h += h[k] / count;
          mean_h_xhat += h[k] * xhat[k] / count;
        }
      }
      for (int c = g * Cg; c < (g + 1) * Cg; c++) {
        for (int s = 0; s < S; s++) {
          const int k = (c - g * Cg) * S + s;
          r.dx[at(n, c, s)] = invstd * (h[k] - mean_h - xhat[k] * mean_h_xhat);
        }
      }
    }
  }
  return r;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(N * C * S), dy(x.size()), weight(C), bias(C);
  for (float& v : x) v = 3.0f + 2.0f * normal(rng);
  for (float& v : dy) v = normal(rng);
  for (int c = 0; c < C; c++) {
    weight[c] = 1.0f + 0.1f * normal(rng);
    bias[c] = normal(rng);
  }
  const Reference want = reference(x, dy, weight, bias);

  // This project's kernels: tensors are (c, s, n) innermost first in NHWC, statistics (group, sample)
  // (docs/KERNELS.md).
  halide_dimension_t dims[3] = {{0, C, 1, 0}, {0, S, C, 0}, {0, N, C * S, 0}};
  auto tensor = [&](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), 3, dims); };
  auto vector = [](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), int(v.size())); };
  auto statistic = [](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), G, N); };
  std::vector<float> y(x.size(), NAN), dx(x.size(), NAN), mean(G * N, NAN), invstd(G * N, NAN);
  std::vector<float> dweight(C, NAN), dbias(C, NAN);
  auto xb = tensor(x), yb = tensor(y), dyb = tensor(dy), dxb = tensor(dx);
  auto wb = vector(weight), bb = vector(bias), dwb = vector(dweight), dbb = vector(dbias);
  auto mb = statistic(mean), ib = statistic(invstd);
  int status = unet_group_norm_silu_forward_training(xb, float(kEps), G, wb, bb, yb, mb, ib);
  status |= unet_group_norm_silu_backward(xb, dyb, mb, ib, G, wb, bb, dxb, dwb, dbb);
  const double y_error = max_relative_error(y, want.y), dx_error = max_relative_error(dx, want.dx);
  const double dweight_error = max_relative_error(dweight, want.dweight);
  const double dbias_error = max_relative_error(dbias, want.dbias);

  // float16 storage: x rounded to half, statistics in float32; the bound for 16-bit storage is 1e-2 (README.md).
  std::vector<_Float16> x16(x.begin(), x.end()), y16(x.size(), _Float16(NAN));
  Halide::Runtime::Buffer<_Float16> x16b(x16.data(), 3, dims), y16b(y16.data(), 3, dims);
  std::vector<float> mean16(G * N), invstd16(G * N);
  auto m16b = statistic(mean16), i16b = statistic(invstd16);
  status |= unet_group_norm_silu_f16_forward_training(x16b, float(kEps), G, wb, bb, y16b, m16b, i16b);
  const double y16_error = max_relative_error(y16, want.y);

  // The installed runtime on the same input: group_norm_forward with the SiLU epilogue.
  std::vector<float> y_runtime(x.size(), NAN);
  const std::vector<int64_t> shape{N, C, H, W};
  fusednorm::group_norm_forward({.input = fusednorm::TensorView::channels_last(x.data(), shape),
                                 .output = fusednorm::TensorView::channels_last(y_runtime.data(), shape),
                                 .weight = fusednorm::TensorView(weight.data(), {C}),
                                 .bias = fusednorm::TensorView(bias.data(), {C})},
                                {.num_groups = G, .eps = kEps, .epilogue = fusednorm::Epilogue::silu});
  const double runtime_error = max_relative_error(y_runtime, want.y);

  std::printf("unet_group_norm_silu: status %d, max relative error y %.2e, dx %.2e, dweight %.2e, dbias %.2e\n",
              status, y_error, dx_error, dweight_error, dbias_error);
  std::printf("unet_group_norm_silu_f16 (float16 storage): y %.2e\n", y16_error);
  std::printf("fusednorm::group_norm_forward: y %.2e\n", runtime_error);
  const bool ok = status == 0 && y_error < 1e-5 && dx_error < 1e-5 && dweight_error < 1e-5 && dbias_error < 1e-5 &&
                  y16_error < 1e-2 && runtime_error < 1e-5;
  std::printf("%s\n", ok ? "consumer: OK" : "consumer: MISMATCH");
  return ok ? 0 : 1;
}
