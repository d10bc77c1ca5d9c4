#pragma once
// The BatchNorm algorithm: math only. No parallel / vectorize / compute_at here (schedule_cpu.h holds the
// loops). Logical axes are s (all spatial dimensions, flattened), c (channel) and n (batch); every Func
// over a tensor is defined in the storage order of spec.layout so that the schedule sees memory order.
#include <cmath>
#include <functional>
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

// Terms per element of a reduction, at spatial position s (of channel c and sample n of the Axes).
using TermsAt = std::function<std::vector<Halide::Expr>(Halide::Expr s)>;

// Length of the float32 accumulation chunks along s. The float32 chains are then at most this long (shorter
// still when the schedule splits a chunk into vector lanes), whatever S is: at S = 2048 x 2048 a single
// float32 chain per row lost 1e-4 of y.
constexpr int kSumChunk = 4096;

// Per-channel sums over s and n of float32 terms, in two precisions:
//   chunk(c, k, n) = sum over s in [k B, k B + B) of the terms, float32     (B = kSumChunk, k < S / B)
//   tail(c, n)     = sum over the last S mod B elements of the row, float32
//   total(c)       = sum over k and n of chunk, plus sum over n of tail, float64
// Full chunks have a constant extent, so the schedule can vectorise them without a tail of its own; the
// float64 merge keeps the error from growing with N * S the way one float32 accumulator would.
struct ChannelSums {
  Halide::Func chunk{"chunk_sums"};
  Halide::Func tail{"tail_sums"};
  Halide::Func total{"channel_sums"};
  Halide::RDom over_chunk, over_tail, over_chunks_and_n, over_n;

  ChannelSums(const Axes& a, const TermsAt& terms_at, Halide::Expr spatial, Halide::Expr batch)
      : over_chunk(0, kSumChunk, "rchunk"),
        over_tail(spatial / kSumChunk * kSumChunk, spatial % kSumChunk, "rtail"),
        over_chunks_and_n(0, spatial / kSumChunk, 0, batch, "rk"),
        over_n(0, batch, "rn") {
    using namespace Halide;
    Var k("k");
    const std::vector<Expr> chunk_terms = terms_at(k * kSumChunk + over_chunk.x);
    const std::vector<Expr> tail_terms = terms_at(over_tail.x);
    const int terms = static_cast<int>(chunk_terms.size());
    chunk(a.c, k, a.n) = Tuple(std::vector<Expr>(terms, 0.0f));
    tail(a.c, a.n) = Tuple(std::vector<Expr>(terms, 0.0f));
    total(a.c) = Tuple(std::vector<Expr>(terms, cast<double>(0)));
    std::vector<Expr> chunk_update, tail_update, from_chunks, from_tails;
    for (int i = 0; i < terms; i++) {
      chunk_update.push_back(chunk(a.c, k, a.n)[i] + chunk_terms[i]);
      tail_update.push_back(tail(a.c, a.n)[i] + tail_terms[i]);
      from_chunks.push_back(total(a.c)[i] + cast<double>(chunk(a.c, over_chunks_and_n.x, over_chunks_and_n.y)[i]));
      from_tails.push_back(total(a.c)[i] + cast<double>(tail(a.c, over_n)[i]));
    }
    chunk(a.c, k, a.n) = Tuple(chunk_update);
    tail(a.c, a.n) = Tuple(tail_update);
    total(a.c) = Tuple(from_chunks);
    total(a.c) = Tuple(from_tails);
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
    auto deviations = [&](Expr s) {
      Expr d = at(x, layout, s, a.c, a.n) - shift(a.c);
      return std::vector<Expr>{d, d * d};
    };
    return ChannelSums(a, deviations, spatial, batch);
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
  // A float32 centre per channel close to the mean, on the grid of the channel's largest values (see below).
  Halide::Func centre{"centre"};
  ChannelSums sums;
  Halide::Func grads{"channel_grads"};  // (c): {dgamma, dbeta, mean(dy), mean(dy * xhat)} in float32
  Halide::Func dx{"input_gradient"};

  // sum(dy * (x - mean)) is accumulated as sum(dy * (x - centre)) - (mean - centre) * sum(dy). When the mean is
  // not a multiple of the spacing of x's float32 values, x - mean rounds the same way for every x of one
  // binade, and with a dy whose mean is not zero those errors add up instead of cancelling (grad_weight was
  // off by 4e-5 at 2 x 2 x 2048 x 2048). The centre is the mean rounded to a multiple of the spacing of
  // values up to |mean| + 8 sigma, so x - centre is exact for them; the remainder enters once, in float64.
  BackwardAlgorithm(const Axes& a, const NormSpec& spec, const Halide::Func& x, const Halide::Func& dy,
                    Halide::Expr spatial, Halide::Expr batch, const Halide::Func& mean, const Halide::Func& invstd,
                    const Halide::Func& gamma, Halide::Expr training)
      : sums(make_sums(a, spec, x, dy, spatial, batch, centre_of(a, mean, invstd))) {
    using namespace Halide;
    Expr count = cast<double>(spatial) * cast<double>(batch);
    Expr sum_dy = sums.total(a.c)[1];
    Expr centre_offset = cast<double>(mean(a.c)) - cast<double>(centre(a.c));
    Expr sum_dy_xhat = (sums.total(a.c)[0] - centre_offset * sum_dy) * cast<double>(invstd(a.c));
    grads(a.c) = {cast<float>(sum_dy_xhat), cast<float>(sum_dy), cast<float>(sum_dy / count),
                  cast<float>(sum_dy_xhat / count)};

    Expr xhat = (at(x, spec.layout, a.s, a.c, a.n) - mean(a.c)) * invstd(a.c);
    Expr g = at(dy, spec.layout, a.s, a.c, a.n);
    Expr centred = g - grads(a.c)[2] - xhat * grads(a.c)[3];
    dx(a.storage(spec.layout)) = select(training, centred, g) * (invstd(a.c) * gamma(a.c));
  }

 private:
  Halide::Func centre_of(const Axes& a, const Halide::Func& mean, const Halide::Func& invstd) {
    using namespace Halide;
    Expr m = cast<double>(mean(a.c));
    Expr top = max(abs(m) + Expr(8.0) / cast<double>(invstd(a.c)), Expr(1e-30));
    Expr spacing = pow(Expr(2.0), floor(log(top) / Expr(std::log(2.0))) - Expr(23.0));
    centre(a.c) = cast<float>(round(m / spacing) * spacing);
    return centre;
  }

  static ChannelSums make_sums(const Axes& a, const NormSpec& spec, const Halide::Func& x, const Halide::Func& dy,
                               Halide::Expr spatial, Halide::Expr batch, const Halide::Func& centre) {
    using namespace Halide;
    auto gradient_terms = [&](Expr s) {
      Expr g = at(dy, spec.layout, s, a.c, a.n);
      return std::vector<Expr>{g * (at(x, spec.layout, s, a.c, a.n) - centre(a.c)), g};
    };
    return ChannelSums(a, gradient_terms, spatial, batch);
  }
};

}  // namespace fusednorm
