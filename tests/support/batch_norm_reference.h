#pragma once
// The float64 reference for BatchNorm: tests/support/norm_reference.h with per-channel statistics (over N and
// spatial), under the names and argument lists the BatchNorm suites and the benchmark use. Tensors are
// (N, C, S) with S all spatial dimensions flattened, stored in `layout`; results come back in the same layout
// so they compare element by element.
#include <cmath>
#include <cstdint>
#include <vector>

#include "fusednorm/tensor.h"
#include "support/norm_reference.h"

namespace fusednorm::reference {

// y, and per channel mean, biased_var, invstd and (when tracked) running_mean, running_var.
using ForwardTraining = Forward;

// running_mean / running_var may be null (not tracked); weight / bias null mean 1 / 0.
inline ForwardTraining batch_norm_forward_training(const float* x, const Dims& d, const float* weight,
                                                   const float* bias, const float* running_mean,
                                                   const float* running_var, double momentum, double eps,
                                                   bool unbiased_running_var = true) {
  const Running running{running_mean, running_var, momentum, unbiased_running_var};
  return forward(x, Grouping::batch(d), {weight, bias}, eps, Epilogue::none, nullptr,
                 running_mean ? &running : nullptr);
}

inline std::vector<double> batch_norm_forward_inference(const float* x, const Dims& d, const float* weight,
                                                        const float* bias, const float* running_mean,
                                                        const float* running_var, double eps) {
  std::vector<double> mean, invstd;
  for (int64_t c = 0; c < d.c; c++) {
    mean.push_back(running_mean[c]);
    invstd.push_back(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
  }
  return normalize(x, Grouping::batch(d), mean.data(), invstd.data(), {weight, bias});
}

// mean / invstd: the statistics the forward used (batch ones in training, running ones in evaluation).
inline Backward batch_norm_backward(const float* x, const float* dy, const Dims& d, const float* weight,
                                    const double* mean, const double* invstd, bool training) {
  return backward(x, dy, Grouping::batch(d), mean, invstd, {weight, nullptr}, training);
}

}  // namespace fusednorm::reference
