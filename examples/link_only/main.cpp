// A BatchNorm2d forward in training through the installed runtime: each channel of the output has mean 0 and
// (biased) variance 1 - eps/(var+eps) ~ 1. Exits non-zero when it does not, or when the version macros disagree
// with the library's package.
#include <fusednorm/layers.h>
#include <fusednorm/version.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  constexpr int64_t N = 4, C = 3, H = 5, W = 7, S = H * W;
  std::vector<float> x(N * C * S), y(x.size(), NAN);
  for (size_t i = 0; i < x.size(); i++) x[i] = 10.0f + static_cast<float>((i * 7919) % 101) / 10.0f;
  fusednorm::BatchNorm2d bn(C);
  bn.forward(fusednorm::TensorView(x.data(), {N, C, H, W}), fusednorm::TensorView(y.data(), {N, C, H, W}));
  bool ok = true;
  for (int64_t c = 0; c < C; c++) {
    double sum = 0, squares = 0;
    for (int64_t n = 0; n < N; n++)
      for (int64_t s = 0; s < S; s++) sum += y[(n * C + c) * S + s];
    const double mean = sum / (N * S);
    for (int64_t n = 0; n < N; n++)
      for (int64_t s = 0; s < S; s++) squares += (y[(n * C + c) * S + s] - mean) * (y[(n * C + c) * S + s] - mean);
    const double variance = squares / (N * S);
    std::printf("channel %lld: mean %.2e, variance %.6f\n", static_cast<long long>(c), mean, variance);
    ok = ok && std::abs(mean) < 1e-5 && std::abs(variance - 1.0) < 1e-3;
  }
  std::printf("FusedNorm %s (%d)\n", FUSEDNORM_VERSION_STRING, FUSEDNORM_VERSION);
  std::printf("%s\n", ok ? "link_only: OK" : "link_only: MISMATCH");
  return ok ? 0 : 1;
}
