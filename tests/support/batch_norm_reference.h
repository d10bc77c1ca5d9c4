#pragma once
// The float64 reference for BatchNorm, written from the definitions (two-pass mean and variance in double),
// independently of the kernels' algorithm. Shared by the tests and the benchmark's verification.
// Tensors are (N, C, S) with S all spatial dimensions flattened, stored in `layout`; results come back in
// the same layout so they compare element by element.
#include <cmath>
#include <cstdint>
#include <vector>

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

struct ForwardTraining {
  std::vector<double> y, mean, biased_var, invstd, running_mean, running_var;
};

// running_mean / running_var may be null (not tracked); weight / bias null mean 1 / 0.
inline ForwardTraining batch_norm_forward_training(const float* x, const Dims& d, const float* weight,
                                                   const float* bias, const float* running_mean,
                                                   const float* running_var, double momentum, double eps,
                                                   bool unbiased_running_var = true) {
  ForwardTraining r;
  r.y.resize(d.numel());
  const double count = static_cast<double>(d.n * d.s);
  for (int64_t c = 0; c < d.c; c++) {
    double sum = 0;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++) sum += x[d.offset(n, c, s)];
    const double mean = sum / count;
    double squares = 0;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++) {
        double dev = x[d.offset(n, c, s)] - mean;
        squares += dev * dev;
      }
    const double var = squares / count;
    const double invstd = 1.0 / std::sqrt(var + eps);
    const double w = weight ? weight[c] : 1.0, b = bias ? bias[c] : 0.0;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++) {
        int64_t i = d.offset(n, c, s);
        r.y[i] = (x[i] - mean) * invstd * w + b;
      }
    r.mean.push_back(mean);
    r.biased_var.push_back(var);
    r.invstd.push_back(invstd);
    if (running_mean) {
      const double batch_var = unbiased_running_var ? var * count / (count - 1) : var;
      r.running_mean.push_back((1 - momentum) * running_mean[c] + momentum * mean);
      r.running_var.push_back((1 - momentum) * running_var[c] + momentum * batch_var);
    }
  }
  return r;
}

inline std::vector<double> batch_norm_forward_inference(const float* x, const Dims& d, const float* weight,
                                                        const float* bias, const float* running_mean,
                                                        const float* running_var, double eps) {
  std::vector<double> y(d.numel());
  for (int64_t n = 0; n < d.n; n++)
    for (int64_t c = 0; c < d.c; c++)
      for (int64_t s = 0; s < d.s; s++) {
        int64_t i = d.offset(n, c, s);
        double w = weight ? weight[c] : 1.0, b = bias ? bias[c] : 0.0;
        y[i] = (x[i] - running_mean[c]) / std::sqrt(static_cast<double>(running_var[c]) + eps) * w + b;
      }
  return y;
}

struct Backward {
  std::vector<double> dx, dweight, dbias;
};

// mean / invstd: the statistics the forward used (batch ones in training, running ones in evaluation).
inline Backward batch_norm_backward(const float* x, const float* dy, const Dims& d, const float* weight,
                                    const double* mean, const double* invstd, bool training) {
  Backward r;
  r.dx.resize(d.numel());
  const double count = static_cast<double>(d.n * d.s);
  for (int64_t c = 0; c < d.c; c++) {
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++) {
        int64_t i = d.offset(n, c, s);
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - mean[c]) * invstd[c];
      }
    const double w = weight ? weight[c] : 1.0;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++) {
        int64_t i = d.offset(n, c, s);
        double xhat = (x[i] - mean[c]) * invstd[c];
        double g = training ? dy[i] - sum_dy / count - xhat * sum_dy_xhat / count : dy[i];
        r.dx[i] = g * invstd[c] * w;
      }
    r.dweight.push_back(sum_dy_xhat);
    r.dbias.push_back(sum_dy);
  }
  return r;
}

}  // namespace fusednorm::reference
