#pragma once
// The float64 reference for the whole normalization family (BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
// RMSNorm) and the epilogues, written from the definitions, independently of the kernels' algorithm: two-pass
// mean and variance in double, y from them, and the backward's closed form derived below. Shared by the tests
// and the benchmark's verification; tests/support/batch_norm_reference.h is BatchNorm's view of it.
//
// One algorithm serves every norm: a Grouping says which elements share statistics and which weight each
// element takes, and nothing else differs (RMSNorm's statistics are not centred: its "variance" is the mean
// square). Tensors are (N, C, S) with S all spatial dimensions flattened, stored in `layout`; LayerNorm and
// RMSNorm see their input as (rows, D, 1), D the product of normalized_shape. Results come back in the
// input's layout so they compare element by element.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fusednorm/epilogue.h"
#include "fusednorm/tensor.h"

namespace fusednorm::reference {

struct Dims {
  int64_t n, c, s;
  Layout layout;
  int64_t numel() const { return n * c * s; }
  int64_t offset(int64_t in, int64_t ic, int64_t is) const {
    return layout == Layout::nchw ? (in * c + ic) * s + is : (in * s + is) * c + ic;
  }
};

enum class Norm { batch, instance, group, layer, rms };

// Which elements share statistics. The statistics are (G, B) with G innermost, as the kernels store them
// (docs/KERNELS.md): statistic (g, b) is at g + G * b. So a (N, C) or (N, groups) tensor of saved statistics
// is in the same order. The weight (and bias) of an element is that of its channel c: per channel for the
// channel norms, per normalized element for LayerNorm and RMSNorm (their c is the index within the row).
struct Grouping {
  Norm norm;
  Dims d;
  int64_t groups = 1;  // GroupNorm: C / groups consecutive channels per group

  static Grouping batch(const Dims& d) { return {Norm::batch, d}; }
  static Grouping instance(const Dims& d) { return {Norm::instance, d}; }
  static Grouping group(const Dims& d, int64_t groups) { return {Norm::group, d, groups}; }
  // LayerNorm or RMSNorm over rows of `features` elements (the product of normalized_shape).
  static Grouping rows(Norm norm, int64_t rows, int64_t features) { return {norm, {rows, features, 1, Layout::nchw}}; }

  // G, the statistics of one sample (row).
  int64_t per_sample() const {
    switch (norm) {
      case Norm::batch:
      case Norm::instance: return d.c;
      case Norm::group: return groups;
      case Norm::layer:
      case Norm::rms: return 1;
    }
    return 0;
  }
  // G * B: how many statistics there are.
  int64_t count() const { return norm == Norm::batch ? d.c : per_sample() * d.n; }
  // The statistic that element (n, c, any s) belongs to.
  int64_t index(int64_t n, int64_t c) const {
    switch (norm) {
      case Norm::batch: return c;
      case Norm::instance: return c + d.c * n;
      case Norm::group: return c / (d.c / groups) + groups * n;
      case Norm::layer:
      case Norm::rms: return n;
    }
    return 0;
  }
  // How many elements each statistic is over.
  int64_t members() const { return d.numel() / count(); }
  // RMSNorm normalizes by the root mean square: no mean is subtracted.
  bool centred() const { return norm != Norm::rms; }
};

// Calls f(i, c, k) for every element: its offset i, its channel c (which weight and bias it takes) and its
// statistic k, samples outermost and each statistic's elements in storage order within a channel.
template <typename F>
void for_each_element(const Grouping& g, const F& f) {
  for (int64_t n = 0; n < g.d.n; n++)
    for (int64_t c = 0; c < g.d.c; c++) {
      const int64_t k = g.index(n, c);
      for (int64_t s = 0; s < g.d.s; s++) f(g.d.offset(n, c, s), c, k);
    }
}

// The per-channel (per-element for rows) parameters; null means weight 1, bias 0.
struct Affine {
  const float* weight = nullptr;
  const float* bias = nullptr;
  double weight_at(int64_t c) const { return weight ? weight[c] : 1.0; }
  double bias_at(int64_t c) const { return bias ? bias[c] : 0.0; }
};

// Running statistics to update (BatchNorm and InstanceNorm in training), per channel:
//   running = (1 - momentum) * running + momentum * batch,
// where batch is the mean over the B samples of the channel's statistics (B = 1 for BatchNorm; N for
// InstanceNorm, as PyTorch's InstanceNorm averages its per-sample statistics), the variance times
// members / (members - 1) when unbiased (PyTorch) and as is when biased (ONNX BatchNormalization).
struct Running {
  const float* mean;
  const float* var;
  double momentum = 0.1;
  bool unbiased = true;
};

inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// y from v = xhat * weight + bias, and the residual z (add_relu only).
inline double apply_epilogue(Epilogue epilogue, double v, double z) {
  switch (epilogue) {
    case Epilogue::none: return v;
    case Epilogue::relu: return std::max(v, 0.0);
    case Epilogue::add_relu: return std::max(v + z, 0.0);
    case Epilogue::silu: return v * sigmoid(v);
  }
  return v;
}

// dL/dv from dL/dy. relu and add_relu take the mask from the forward's y (y > 0), as the kernels do, so the
// reference and the kernel agree on which elements pass even where v (+ z) is within rounding of 0. silu:
// d(v s)/dv = s + v s (1 - s), s = sigmoid(v).
inline double epilogue_gradient(Epilogue epilogue, double dy, double v, double y) {
  switch (epilogue) {
    case Epilogue::none: return dy;
    case Epilogue::relu:
    case Epilogue::add_relu: return y > 0 ? dy : 0.0;
    case Epilogue::silu: {
      const double s = sigmoid(v);
      return dy * s * (1 + v * (1 - s));
    }
  }
  return dy;
}

struct Forward {
  std::vector<double> y;
  // Per statistic (Grouping::count()): the mean (0 for RMSNorm), the biased variance (RMSNorm: the mean
  // square) and invstd = 1 / sqrt(biased_var + eps).
  std::vector<double> mean, biased_var, invstd;
  // Per channel, when Running was given.
  std::vector<double> running_mean, running_var;
};

// y = epilogue(xhat * weight + bias, z), xhat = (x - mean[statistic]) * invstd[statistic]; mean null means 0.
// The forward in evaluation is this with the running statistics and Grouping::batch (per channel).
inline std::vector<double> normalize(const float* x, const Grouping& g, const double* mean, const double* invstd,
                                     const Affine& affine, Epilogue epilogue = Epilogue::none,
                                     const float* z = nullptr) {
  std::vector<double> y(static_cast<size_t>(g.d.numel()));
  for_each_element(g, [&](int64_t i, int64_t c, int64_t k) {
    const double v = (x[i] - (mean ? mean[k] : 0.0)) * invstd[k] * affine.weight_at(c) + affine.bias_at(c);
    y[static_cast<size_t>(i)] = apply_epilogue(epilogue, v, z ? z[i] : 0.0);
  });
  return y;
}

// The forward with the input's own statistics (training; InstanceNorm with use_input_stats; GroupNorm,
// LayerNorm and RMSNorm always).
inline Forward forward(const float* x, const Grouping& g, const Affine& affine, double eps,
                       Epilogue epilogue = Epilogue::none, const float* z = nullptr, const Running* running = nullptr) {
  const size_t count = static_cast<size_t>(g.count());
  const double members = static_cast<double>(g.members());
  Forward r;
  r.mean.assign(count, 0.0);
  r.biased_var.assign(count, 0.0);
  if (g.centred()) {
    for_each_element(g, [&](int64_t i, int64_t, int64_t k) { r.mean[static_cast<size_t>(k)] += x[i]; });
    for (double& m : r.mean) m /= members;
  }
  for_each_element(g, [&](int64_t i, int64_t, int64_t k) {
    const double deviation = x[i] - r.mean[static_cast<size_t>(k)];
    r.biased_var[static_cast<size_t>(k)] += deviation * deviation;
  });
  for (double& v : r.biased_var) v /= members;
  for (double v : r.biased_var) r.invstd.push_back(1.0 / std::sqrt(v + eps));
  r.y = normalize(x, g, r.mean.data(), r.invstd.data(), affine, epilogue, z);

  if (running) {
    const int64_t per_sample = g.per_sample(), samples = g.count() / per_sample;
    const double correction = running->unbiased ? members / (members - 1) : 1.0;
    for (int64_t c = 0; c < per_sample; c++) {
      double mean = 0, var = 0;
      for (int64_t b = 0; b < samples; b++) {
        mean += r.mean[static_cast<size_t>(c + per_sample * b)];
        var += r.biased_var[static_cast<size_t>(c + per_sample * b)] * correction;
      }
      const double m = running->momentum;
      r.running_mean.push_back((1 - m) * running->mean[c] + m * mean / static_cast<double>(samples));
      r.running_var.push_back((1 - m) * running->var[c] + m * var / static_cast<double>(samples));
    }
  }
  return r;
}

struct Backward {
  std::vector<double> dx;
  std::vector<double> dweight, dbias;  // per channel (per normalized element for rows)
  std::vector<double> dz;              // Epilogue::add_relu: the residual's gradient
};

// The gradients of forward() (through_statistics: mean and invstd are the input's own, so dx carries the
// terms through them) or of normalize() with fixed statistics (BatchNorm and InstanceNorm in evaluation).
// mean / invstd: what the forward used (mean null for RMSNorm); y: the forward's output, for the relu and
// add_relu masks; affine.bias: for silu, which recomputes v.
//
// With g = dL/dv * weight (the gradient reaching xhat) and xhat = (x - mean) * invstd over a statistic of M
// elements, d mean / dx_i = 1 / M and d invstd / dx_i = -invstd^3 (x_i - mean) / M, so
//   dx_i = invstd * (g_i - mean_j(g_j) - xhat_i * mean_j(g_j * xhat_j));
// RMSNorm has no mean, so no mean_j(g_j) term: d invstd / dx_i = -invstd^3 x_i / M gives the rest unchanged.
inline Backward backward(const float* x, const float* dy, const Grouping& g, const double* mean, const double* invstd,
                         const Affine& affine, bool through_statistics, Epilogue epilogue = Epilogue::none,
                         const float* y = nullptr) {
  const size_t numel = static_cast<size_t>(g.d.numel()), count = static_cast<size_t>(g.count());
  Backward r;
  r.dx.resize(numel);
  r.dweight.assign(static_cast<size_t>(g.d.c), 0.0);
  r.dbias.assign(static_cast<size_t>(g.d.c), 0.0);
  if (epilogue == Epilogue::add_relu) r.dz.resize(numel);
  auto xhat = [&](int64_t i, int64_t k) { return (x[i] - (mean ? mean[k] : 0.0)) * invstd[k]; };
  std::vector<double> grad_xhat(numel), sum_g(count, 0.0), sum_g_xhat(count, 0.0);
  for_each_element(g, [&](int64_t i, int64_t c, int64_t k) {
    const size_t e = static_cast<size_t>(i), ch = static_cast<size_t>(c), st = static_cast<size_t>(k);
    const double w = affine.weight_at(c), h = xhat(i, k);
    const double dv = epilogue_gradient(epilogue, dy[i], h * w + affine.bias_at(c), y ? y[i] : 0.0);
    if (epilogue == Epilogue::add_relu) r.dz[e] = dv;
    r.dweight[ch] += dv * h;
    r.dbias[ch] += dv;
    grad_xhat[e] = dv * w;
    sum_g[st] += dv * w;
    sum_g_xhat[st] += dv * w * h;
  });
  const double members = static_cast<double>(g.members());
  for_each_element(g, [&](int64_t i, int64_t, int64_t k) {
    const size_t e = static_cast<size_t>(i), st = static_cast<size_t>(k);
    const double mean_g = g.centred() ? sum_g[st] / members : 0.0, mean_g_xhat = sum_g_xhat[st] / members;
    r.dx[e] =
        through_statistics ? invstd[k] * (grad_xhat[e] - mean_g - xhat(i, k) * mean_g_xhat) : invstd[k] * grad_xhat[e];
  });
  return r;
}

// A float64 central difference dL/dv for an input v stored as float32: v is moved by about h each way, and
// the step is the difference of the two rounded values, so the rounding of v +- h does not enter the quotient.
// For the gradient checks, whose loss is the reference forward.
template <typename Loss>
double central_difference(float& v, const Loss& loss, double h = 1e-3) {
  const float original = v;
  const float plus = static_cast<float>(original + h), minus = static_cast<float>(original - h);
  v = plus;
  const double loss_plus = loss();
  v = minus;
  const double loss_minus = loss();
  v = original;
  return (loss_plus - loss_minus) / (static_cast<double>(plus) - static_cast<double>(minus));
}

}  // namespace fusednorm::reference
