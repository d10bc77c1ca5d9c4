#pragma once
// The BatchNorm algorithm: math only. No parallel / vectorize / compute_at here (schedule_cpu.h holds the
// loops). Logical axes are s (all spatial dimensions, flattened), c (channel) and n (batch); every Func
// over a tensor is defined in the storage order of spec.layout so that the schedule sees memory order.
#include <vector>

#include "Halide.h"
#include "norm_spec.h"

namespace fusednorm {

struct Axes {
  Halide::Var s{"s"}, c{"c"}, n{"n"};
  // Argument order of a (s, c, n) tensor in memory, innermost first.
  std::vector<Halide::Var> storage(Layout layout) const {
    return layout == Layout::nchw ? std::vector<Halide::Var>{s, c, n} : std::vector<Halide::Var>{c, s, n};
  }
};

// Reads a tensor stored in `layout` at logical (s, c, n).
inline Halide::Expr at(const Halide::Func& tensor, Layout layout, Halide::Expr s, Halide::Expr c,
                       Halide::Expr n) {
  return layout == Layout::nchw ? tensor(s, c, n) : tensor(c, s, n);
}

// Per-channel sums over s and n of one or two float32 terms, computed as:
//   row(c, n)  = sum over s of the terms, accumulated in float32 (vectorisable; the schedule may
//                rfactor it into lanes or blocks, which only shortens the float32 chains);
//   total(c)   = sum over n of row(c, n), accumulated in float64.
// The float32 chains are at most one row of S elements and the cross-row merge is exact to float64, so
// the error does not grow with N * S the way a single float32 accumulator would.
struct ChannelSums {
  Halide::Func row{"row_sums"};
  Halide::Func total{"channel_sums"};
  Halide::RDom over_s, over_n;

  ChannelSums(const Axes& a, const std::vector<Halide::Expr>& terms_at_rs, Halide::RDom rs, Halide::Expr batch)
      : over_s(rs), over_n(0, batch, "rn") {
    using namespace Halide;
    const int terms = static_cast<int>(terms_at_rs.size());
    row(a.c, a.n) = Tuple(std::vector<Expr>(terms, 0.0f));
    total(a.c) = Tuple(std::vector<Expr>(terms, cast<double>(0)));
    std::vector<Expr> row_update, total_update;
    for (int i = 0; i < terms; i++) {
      row_update.push_back(row(a.c, a.n)[i] + terms_at_rs[i]);
      total_update.push_back(total(a.c)[i] + cast<double>(row(a.c, over_n)[i]));
    }
    row(a.c, a.n) = Tuple(row_update);
    total(a.c) = Tuple(total_update);
  }
};

// Batch statistics by shifted sums. Each channel is shifted by its first element K(c) = x(0, c, 0):
//   mean = K + sum(x - K) / count,   var = sum((x - K)^2) / count - (sum(x - K) / count)^2.
// x - K is exact for values near K (Sterbenz), and the deviations are of the order of the standard
// deviation, so the subtraction in var does not cancel catastrophically even when the mean is 1e4 times the
// standard deviation (raw sum / sum of squares in float32 would lose every digit there). One pass over x.
struct BatchStatistics {
  Halide::Func shift{"shift"};
  ChannelSums sums;
  // (c): {mean - K as float32, invstd as float32, mean as float64, biased variance as float64}
  Halide::Func stats{"batch_statistics"};

  BatchStatistics(const Axes& a, const Halide::Func& x, Layout layout, Halide::Expr spatial, Halide::Expr batch,
                  Halide::Expr eps)
      : sums(make_sums(a, x, layout, spatial, batch)) {
    using namespace Halide;
    Expr count = cast<double>(spatial) * cast<double>(batch);
    Expr mean_shifted = sums.total(a.c)[0] / count;
    Expr var = max(sums.total(a.c)[1] / count - mean_shifted * mean_shifted, Expr(0.0));
    Expr invstd = Expr(1.0) / sqrt(var + cast<double>(eps));
    stats(a.c) = {cast<float>(mean_shifted), cast<float>(invstd), cast<double>(shift_at(x, layout, a.c)) + mean_shifted,
                  var};
  }

 private:
  static Halide::Expr shift_at(const Halide::Func& x, Layout layout, Halide::Expr c) { return at(x, layout, 0, c, 0); }
  ChannelSums make_sums(const Axes& a, const Halide::Func& x, Layout layout, Halide::Expr spatial, Halide::Expr batch) {
    using namespace Halide;
    shift(a.c) = shift_at(x, layout, a.c);
    RDom rs(0, spatial, "rs");
    Expr d = at(x, layout, rs, a.c, a.n) - shift(a.c);
    return ChannelSums(a, {d, d * d}, rs, batch);
  }
};

// Forward training: y, and per channel {save_mean, save_invstd, new running_mean, new running_var}.
struct ForwardTrainingAlgorithm {
  BatchStatistics statistics;
  Halide::Func scale{"scale"};  // invstd * gamma
  Halide::Func y{"normalized"};
  Halide::Func channel_outputs{"channel_results"};

  // y = ((x - K) - (mean - K)) * invstd * gamma + beta: normalising the shifted value keeps the float32
  // rounding of the mean (about 6e-8 of |mean|) out of y. strict_float stops Halide's simplifier from
  // reassociating it into x - (K + (mean - K)), which would bring that rounding back.
  ForwardTrainingAlgorithm(const Axes& a, const NormSpec& spec, const Halide::Func& x, Halide::Expr spatial,
                           Halide::Expr batch, const Halide::Func& gamma, const Halide::Func& beta,
                           const Halide::Func& running_mean, const Halide::Func& running_var, Halide::Expr momentum,
                           Halide::Expr eps, Halide::Expr running_var_correction)
      : statistics(a, x, spec.layout, spatial, batch, eps) {
    using namespace Halide;
    const Func& st = statistics.stats;
    scale(a.c) = st(a.c)[1] * gamma(a.c);
    Expr d = at(x, spec.layout, a.s, a.c, a.n) - statistics.shift(a.c);
    y(a.storage(spec.layout)) = strict_float(d - st(a.c)[0]) * scale(a.c) + beta(a.c);

    Expr m = cast<double>(momentum);
    Expr new_mean = (Expr(1.0) - m) * cast<double>(running_mean(a.c)) + m * st(a.c)[2];
    Expr new_var = (Expr(1.0) - m) * cast<double>(running_var(a.c)) + m * st(a.c)[3] * cast<double>(running_var_correction);
    channel_outputs(a.c) = {cast<float>(st(a.c)[2]), st(a.c)[1], cast<float>(new_mean), cast<float>(new_var)};
  }
};

// Forward inference from given statistics: y = (x - mean) * (invstd * gamma) + beta.
struct ForwardInferenceAlgorithm {
  Halide::Func scale{"scale"};
  Halide::Func y{"normalized"};

  ForwardInferenceAlgorithm(const Axes& a, const NormSpec& spec, const Halide::Func& x, const Halide::Func& gamma,
                            const Halide::Func& beta, const Halide::Func& running_mean,
                            const Halide::Func& running_var, Halide::Expr eps) {
    using namespace Halide;
    scale(a.c) = cast<float>(Expr(1.0) / sqrt(cast<double>(running_var(a.c)) + cast<double>(eps))) * gamma(a.c);
    y(a.storage(spec.layout)) = (at(x, spec.layout, a.s, a.c, a.n) - running_mean(a.c)) * scale(a.c) + beta(a.c);
  }
};

// Backward. With xhat = (x - mean) * invstd and the per-channel means over s and n,
//   training:   dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
//   evaluation: dx = gamma * invstd * dy        (the statistics are constants)
//   dgamma = sum(dy * xhat),  dbeta = sum(dy).
// sum(dy * xhat) is computed as invstd * sum(dy * (x - mean)), one multiply per channel instead of per element.
struct BackwardAlgorithm {
  ChannelSums sums;
  Halide::Func grads{"channel_grads"};  // (c): {dgamma, dbeta, mean(dy), mean(dy * xhat)} in float32
  Halide::Func dx{"input_gradient"};

  BackwardAlgorithm(const Axes& a, const NormSpec& spec, const Halide::Func& x, const Halide::Func& dy,
                    Halide::Expr spatial, Halide::Expr batch, const Halide::Func& mean, const Halide::Func& invstd,
                    const Halide::Func& gamma, Halide::Expr training)
      : sums(make_sums(a, spec, x, dy, spatial, batch, mean)) {
    using namespace Halide;
    Expr count = cast<double>(spatial) * cast<double>(batch);
    Expr sum_dy = sums.total(a.c)[1];
    Expr sum_dy_xhat = sums.total(a.c)[0] * cast<double>(invstd(a.c));
    grads(a.c) = {cast<float>(sum_dy_xhat), cast<float>(sum_dy), cast<float>(sum_dy / count),
                  cast<float>(sum_dy_xhat / count)};

    Expr xhat = (at(x, spec.layout, a.s, a.c, a.n) - mean(a.c)) * invstd(a.c);
    Expr g = at(dy, spec.layout, a.s, a.c, a.n);
    Expr centred = g - grads(a.c)[2] - xhat * grads(a.c)[3];
    dx(a.storage(spec.layout)) = select(training, centred, g) * (invstd(a.c) * gamma(a.c));
  }

 private:
  static ChannelSums make_sums(const Axes& a, const NormSpec& spec, const Halide::Func& x, const Halide::Func& dy,
                               Halide::Expr spatial, Halide::Expr batch, const Halide::Func& mean) {
    using namespace Halide;
    RDom rs(0, spatial, "rs");
    Expr g = at(dy, spec.layout, rs, a.c, a.n);
    return ChannelSums(a, {g * (at(x, spec.layout, rs, a.c, a.n) - mean(a.c)), g}, rs, batch);
  }
};

}  // namespace fusednorm
