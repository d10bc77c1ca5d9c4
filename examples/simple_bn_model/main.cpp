// The seed's model, Linear(128, 64) -> BatchNorm1d(64) -> ReLU, trained for a few steps on a batch of 32
// with the public API. It prints, per feature, the mean and standard deviation of the BatchNorm output before
// the ReLU (in training they equal beta and gamma up to rounding), then switches to evaluation, where the
// running statistics normalize instead. Exits non-zero if the training statistics do not match.
#include <fusednorm/layers.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr int64_t kBatch = 32, kIn = 128, kFeatures = 64;

// A minimal Linear layer: y = x W^T + b, row-major (N, in) -> (N, out).
struct Linear {
  int64_t in, out;
  std::vector<float> weight, bias;

  Linear(int64_t in_features, int64_t out_features, std::mt19937& rng)
      : in(in_features), out(out_features), weight(static_cast<size_t>(in * out)), bias(static_cast<size_t>(out)) {
    // PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)).
    std::uniform_real_distribution<float> u(-1.0f / std::sqrt(static_cast<float>(in)), 1.0f / std::sqrt(static_cast<float>(in)));
    for (float& w : weight) w = u(rng);
    for (float& b : bias) b = u(rng);
  }

  std::vector<float> forward(const std::vector<float>& x, int64_t batch) const {
    std::vector<float> y(static_cast<size_t>(batch * out));
    for (int64_t n = 0; n < batch; n++)
      for (int64_t o = 0; o < out; o++) {
        double sum = bias[static_cast<size_t>(o)];
        for (int64_t i = 0; i < in; i++) sum += double(x[static_cast<size_t>(n * in + i)]) * weight[static_cast<size_t>(o * in + i)];
        y[static_cast<size_t>(n * out + o)] = static_cast<float>(sum);
      }
    return y;
  }
};

struct ColumnStats {
  double mean, std;
};

// Per-feature mean and (biased) standard deviation of an (N, C) matrix.
ColumnStats column_stats(const std::vector<float>& m, int64_t rows, int64_t cols, int64_t c) {
  double sum = 0, squares = 0;
  for (int64_t n = 0; n < rows; n++) sum += m[static_cast<size_t>(n * cols + c)];
  const double mean = sum / static_cast<double>(rows);
  for (int64_t n = 0; n < rows; n++) {
    double d = m[static_cast<size_t>(n * cols + c)] - mean;
    squares += d * d;
  }
  return {mean, std::sqrt(squares / static_cast<double>(rows))};
}

}  // namespace

int run() {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Linear linear(kIn, kFeatures, rng);
  fusednorm::BatchNorm1d bn(kFeatures);
  // Distinct gamma and beta per feature, so that the printed statistics show them.
  for (int64_t c = 0; c < kFeatures; c++) {
    bn.weight()[static_cast<size_t>(c)] = 0.5f + 0.025f * static_cast<float>(c);
    bn.bias()[static_cast<size_t>(c)] = -1.0f + 0.03f * static_cast<float>(c);
  }

  std::vector<float> x(static_cast<size_t>(kBatch * kIn));
  std::vector<float> h, z(static_cast<size_t>(kBatch * kFeatures)), dz(z.size()), dh(z.size());
  const std::vector<int64_t> shape{kBatch, kFeatures};
  for (int step = 0; step < 5; step++) {
    for (float& v : x) v = 3.0f + 2.0f * normal(rng);
    h = linear.forward(x, kBatch);
    bn.forward(fusednorm::TensorView(h.data(), shape), fusednorm::TensorView(z.data(), shape));
    // Loss = sum(relu(z) * r): the gradient into z is r where z > 0 (the ReLU mask), else 0.
    for (size_t i = 0; i < z.size(); i++) dz[i] = z[i] > 0 ? normal(rng) : 0.0f;
    bn.backward(fusednorm::TensorView(dz.data(), shape), fusednorm::TensorView(dh.data(), shape));
  }

  std::printf("training (batch statistics), BatchNorm output before ReLU, last step:\n");
  std::printf("%8s %10s %10s %10s %10s\n", "feature", "mean", "beta", "std", "gamma");
  double worst = 0;
  for (int64_t c = 0; c < kFeatures; c++) {
    ColumnStats s = column_stats(z, kBatch, kFeatures, c);
    const double gamma = bn.weight()[static_cast<size_t>(c)], beta = bn.bias()[static_cast<size_t>(c)];
    // The output's std is gamma * sqrt(var / (var + eps)), a hair under gamma.
    worst = std::max({worst, std::abs(s.mean - beta), std::abs(s.std - gamma) / gamma});
    if (c < 8 || c == kFeatures - 1) std::printf("%8lld %10.5f %10.5f %10.5f %10.5f\n", (long long)c, s.mean, beta, s.std, gamma);
    if (c == 8) std::printf("%8s\n", "...");
  }
  std::printf("largest deviation from (beta, gamma): %.2e\n", worst);
  std::printf("num_batches_tracked: %lld, grad_weight[0..2]: %.4f %.4f %.4f\n", (long long)bn.num_batches_tracked(),
              bn.grad_weight()[0], bn.grad_weight()[1], bn.grad_weight()[2]);

  bn.eval();
  h = linear.forward(x, kBatch);
  bn.forward(fusednorm::TensorView(h.data(), shape), fusednorm::TensorView(z.data(), shape));
  std::printf("\nevaluation (running statistics):\n");
  std::printf("%8s %14s %14s %14s %14s\n", "feature", "running_mean", "running_var", "batch mean", "output mean");
  for (int64_t c = 0; c < 4; c++) {
    ColumnStats in = column_stats(h, kBatch, kFeatures, c), out = column_stats(z, kBatch, kFeatures, c);
    std::printf("%8lld %14.5f %14.5f %14.5f %14.5f\n", (long long)c, bn.running_mean()[static_cast<size_t>(c)],
                bn.running_var()[static_cast<size_t>(c)], in.mean, out.mean);
  }
  if (worst > 1e-3) {
    std::fprintf(stderr, "simple_bn_model: BatchNorm output statistics deviate from (beta, gamma) by %.2e\n", worst);
    return 1;
  }
  return 0;
}

int main() {
  try {
    return run();
  } catch (const fusednorm::Error& e) {
    std::fprintf(stderr, "simple_bn_model: %s\n", e.what());
    return 1;
  }
}
