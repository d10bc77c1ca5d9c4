// Runs the kernels this project generated with fusednorm_add_kernel() (GroupNorm + SiLU, NHWC): forward and
// backward in float32 through the installed runtime's functional API, which registered them and must run them
// rather than its own, and the forward with float16 storage both raw over halide_buffer_t and through the API on
// float16 tensors (the same bits). Compares them with a float64 reference, and checks that bad arguments to the
// generated kernels, caught by the API's checks or by the kernel itself, arrive as fusednorm::Error. Exits non-zero
// otherwise.
#include <HalideBuffer.h>
#include <fusednorm/dispatch.h>
#include <fusednorm/group_norm.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "unet_group_norm_silu_f16_forward_training.h"

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

// Whether `call` throws fusednorm::Error whose message has `expected` in it.
bool refused(const char* what, const std::function<void()>& call, const std::string& expected) {
  try {
    call();
  } catch (const fusednorm::Error& e) {
    const bool ok = std::string(e.what()).find(expected) != std::string::npos;
    std::printf("%s: fusednorm::Error: %s%s\n", what, e.what(), ok ? "" : " (expected it to mention that)");
    return ok;
  }
  std::printf("%s: no error\n", what);
  return false;
}

bool ran(const char* kernel) {
  const std::string report = fusednorm::last_dispatch_report();
  const bool ok = report.find(std::string("ran ") + kernel + " ") != std::string::npos;
  if (!ok) std::printf("dispatch did not run %s: %s\n", kernel, report.c_str());
  return ok;
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
  using fusednorm::TensorView;
  const std::vector<int64_t> shape{N, C, H, W};
  const fusednorm::GroupNormOptions options{.num_groups = G, .eps = kEps, .epilogue = fusednorm::Epilogue::silu};

  // The generated kernels are among the variants, and the functional API runs them.
  bool listed = false;
  for (const fusednorm::VariantInfo& v : fusednorm::variants()) listed |= v.name == "unet_group_norm_silu_backward";
  std::vector<float> y(x.size(), NAN), dx(x.size(), NAN), mean(G * N, NAN), invstd(G * N, NAN);
  std::vector<float> dweight(C, NAN), dbias(C, NAN);
  fusednorm::group_norm_forward({.input = TensorView::channels_last(x.data(), shape),
                                 .output = TensorView::channels_last(y.data(), shape),
                                 .weight = TensorView(weight.data(), {C}),
                                 .bias = TensorView(bias.data(), {C}),
                                 .save_mean = TensorView(mean.data(), {N, G}),
                                 .save_invstd = TensorView(invstd.data(), {N, G})},
                                options);
  const bool forward_ran = ran("unet_group_norm_silu_forward_training");
  fusednorm::group_norm_backward({.grad_output = TensorView::channels_last(dy.data(), shape),
                                  .input = TensorView::channels_last(x.data(), shape),
                                  .grad_input = TensorView::channels_last(dx.data(), shape),
                                  .save_mean = TensorView(mean.data(), {N, G}),
                                  .save_invstd = TensorView(invstd.data(), {N, G}),
                                  .weight = TensorView(weight.data(), {C}),
                                  .bias = TensorView(bias.data(), {C}),
                                  .grad_weight = TensorView(dweight.data(), {C}),
                                  .grad_bias = TensorView(dbias.data(), {C})},
                                 options);
  const bool backward_ran = ran("unet_group_norm_silu_backward");
  const double y_error = max_relative_error(y, want.y), dx_error = max_relative_error(dx, want.dx);
  const double dweight_error = max_relative_error(dweight, want.dweight);
  const double dbias_error = max_relative_error(dbias, want.dbias);

  // The raw escape hatch: float16 storage, x rounded to half, statistics in float32; the bound for 16-bit storage
  // is 1e-2 (docs/USAGE.md, "Numerics"). (c, s, n) innermost first in NHWC, statistics (group, sample) (docs/KERNELS.md).
  halide_dimension_t dims[3] = {{0, C, 1, 0}, {0, S, C, 0}, {0, N, C * S, 0}};
  auto vector = [](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), int(v.size())); };
  auto statistic = [](std::vector<float>& v) { return Halide::Runtime::Buffer<float>(v.data(), G, N); };
  std::vector<_Float16> x16(x.begin(), x.end()), y16(x.size(), _Float16(NAN));
  Halide::Runtime::Buffer<_Float16> x16b(x16.data(), 3, dims), y16b(y16.data(), 3, dims);
  std::vector<float> mean16(G * N), invstd16(G * N);
  auto wb = vector(weight), bb = vector(bias), m16b = statistic(mean16), i16b = statistic(invstd16);
  const int status = unet_group_norm_silu_f16_forward_training(x16b, float(kEps), G, wb, bb, y16b, m16b, i16b);
  const double y16_error = max_relative_error(y16, want.y);

  // The float16 kernel through the API, on float16 tensors: registered like the float32 ones, it runs ahead of the
  // package's own float16 kernels, and writes what the raw call wrote.
  std::vector<_Float16> y16_api(x.size(), _Float16(NAN));
  std::vector<float> mean16_api(G * N, NAN), invstd16_api(G * N, NAN);
  fusednorm::group_norm_forward(
      {.input = TensorView::channels_last(reinterpret_cast<fusednorm::float16*>(x16.data()), shape),
       .output = TensorView::channels_last(reinterpret_cast<fusednorm::float16*>(y16_api.data()), shape),
       .weight = TensorView(weight.data(), {C}),
       .bias = TensorView(bias.data(), {C}),
       .save_mean = TensorView(mean16_api.data(), {N, G}),
       .save_invstd = TensorView(invstd16_api.data(), {N, G})},
      options);
  const bool forward16_ran = ran("unet_group_norm_silu_f16_forward_training");
  const bool same_as_raw = std::memcmp(y16_api.data(), y16.data(), y16.size() * sizeof(_Float16)) == 0 &&
                           mean16_api == mean16 && invstd16_api == invstd16;

  // Bad arguments for the generated kernels: the API's checks, and one only the kernel makes. It is built for
  // `host`, without large_buffers, so a tensor of 2^31 elements (mapped, never touched) fails Halide's argument
  // check inside the kernel, which must come back as fusednorm::Error rather than Halide's abort. (The built-in
  // kernels have large_buffers and would take it.)
  std::vector<float> short_weight(C - 1, 1.0f);
  bool errors = refused("weight of C-1 elements",
                        [&] {
                          fusednorm::group_norm_forward({.input = TensorView::channels_last(x.data(), shape),
                                                         .output = TensorView::channels_last(y.data(), shape),
                                                         .weight = TensorView(short_weight.data(), {C - 1})},
                                                        options);
                        },
                        "weight");
  errors &= refused("num_groups 5 with C 24",
                    [&] {
                      fusednorm::group_norm_forward({.input = TensorView::channels_last(x.data(), shape),
                                                     .output = TensorView::channels_last(y.data(), shape)},
                                                    {.num_groups = 5, .epilogue = fusednorm::Epilogue::silu});
                    },
                    "num_groups");
  // Two samples of C * spatial > 2^30 elements: each within what the API allows a kernel dimension, together
  // beyond the 2^31 - 1 elements a Halide buffer without large_buffers may span.
  const int64_t spatial = (int64_t{1} << 30) / C + 1;
  const size_t bytes = static_cast<size_t>(2 * C * spatial) * sizeof(float);
  void* big_x = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  void* big_y = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (big_x == MAP_FAILED || big_y == MAP_FAILED) {
    std::printf("mmap of 2 x %zu bytes failed\n", bytes);
    return 1;
  }
  const std::vector<int64_t> big_shape{2, C, spatial, 1};
  errors &= refused("2^31 elements on a kernel without large_buffers",
                    [&] {
                      fusednorm::group_norm_forward(
                          {.input = TensorView::channels_last(static_cast<float*>(big_x), big_shape),
                           .output = TensorView::channels_last(static_cast<float*>(big_y), big_shape),
                           .weight = TensorView(weight.data(), {C}),
                           .bias = TensorView(bias.data(), {C})},
                          options);
                    },
                    "unet_group_norm_silu_forward_training");
  munmap(big_x, bytes);
  munmap(big_y, bytes);

  std::printf("variants() lists unet_group_norm_silu_backward: %s; the API ran the generated forward: %s, "
              "backward: %s\n",
              listed ? "yes" : "no", forward_ran ? "yes" : "no", backward_ran ? "yes" : "no");
  std::printf("unet_group_norm_silu through the API: max relative error y %.2e, dx %.2e, dweight %.2e, dbias %.2e\n",
              y_error, dx_error, dweight_error, dbias_error);
  std::printf("unet_group_norm_silu_f16 (raw call, float16 storage): status %d, y %.2e\n", status, y16_error);
  std::printf("unet_group_norm_silu_f16 through the API on float16 tensors: ran %s, the raw call's results: %s\n",
              forward16_ran ? "yes" : "no", same_as_raw ? "yes" : "no");
  const bool ok = listed && forward_ran && backward_ran && errors && status == 0 && y_error < 1e-5 &&
                  dx_error < 1e-5 && dweight_error < 1e-5 && dbias_error < 1e-5 && y16_error < 1e-2 &&
                  forward16_ran && same_as_raw;
  std::printf("%s\n", ok ? "consumer: OK" : "consumer: MISMATCH");
  return ok ? 0 : 1;
}
