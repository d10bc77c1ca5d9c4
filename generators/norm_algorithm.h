#pragma once
// The normalization algorithm, for every member of the family: math only. No parallel / vectorize /
// compute_at here (schedule_cpu.h holds the loops). Tensors have the axes (s, c, n) of norm_spec.h, and every
// Func over a tensor is defined in the storage order of the layout so that the schedule sees memory order.
// Statistics have the axes (g, b): the group of channels and the sample they belong to (b = 0 when they
// reduce the batch).
#include <cmath>
#include <functional>
#include <vector>

#include "Halide.h"
#include "norm_spec.h"

namespace fusednorm {

struct Axes {
  Halide::Var s{"s"}, c{"c"}, n{"n"};
  Halide::Var g{"g"}, b{"b"};
  // Argument order of a (s, c, n) tensor in memory, innermost first.
  std::vector<Halide::Var> storage(Layout layout) const {
    return layout == Layout::nchw ? std::vector<Halide::Var>{s, c, n} : std::vector<Halide::Var>{c, s, n};
  }
};

// The extents of one call and how elements map to their statistics.
struct Problem {
  NormSpec spec;
  Halide::Expr spatial, channels, batch;
  Halide::Expr group_size;  // channels per group: 1, or channels / groups for GroupNorm
  // Length of ChannelSums' float32 chunks; 0: sum_chunk_length(spec). The autoscheduled variants set their own
  // (normalization_generators.cpp, autoscheduled_chunk_length).
  int chunk_length = 0;
  // ChannelSums' tail sums span samples (see there): NCHW statistics over the batch, CPU hand schedules.
  bool tail_spans_samples = false;

  Problem(const NormSpec& spec, Halide::Expr spatial, Halide::Expr channels, Halide::Expr batch,
          Halide::Expr groups)
      : spec(spec), spatial(spatial), channels(channels), batch(batch) {
    group_size = spec.norm == Norm::group ? channels / groups : Halide::Expr(1);
  }
  Halide::Expr group_of(Halide::Expr c) const { return spec.norm == Norm::group ? c / group_size : c; }
  Halide::Expr sample_of(Halide::Expr n) const { return spec.reduces_batch() ? Halide::Expr(0) : n; }
  Halide::Expr statistics_batch() const { return spec.reduces_batch() ? Halide::Expr(1) : batch; }
  // Elements behind one statistic, in float64.
  Halide::Expr count() const {
    using Halide::cast;
    Halide::Expr samples = spec.reduces_batch() ? batch : Halide::Expr(1);
    return cast<double>(spatial) * cast<double>(group_size) * cast<double>(samples);
  }
};

// Reads a tensor stored in `layout` at logical (s, c, n), as float32 whatever the storage type.
inline Halide::Expr at(const Halide::Func& tensor, Layout layout, Halide::Expr s, Halide::Expr c, Halide::Expr n) {
  Halide::Expr e = layout == Layout::nchw ? tensor(s, c, n) : tensor(c, s, n);
  return e.type() == Halide::Float(32) ? e : Halide::cast<float>(e);
}

// A float32 value as the storage type holds it. Halide 21's float16 conversion where the target has no instruction
// for it (arm-64 without arm_fp16) turned NaN into infinity, so a float16 NaN is selected explicitly (0x7e00).
inline Halide::Expr stored(const NormSpec& spec, Halide::Expr v) {
  if (spec.dtype != DType::float16) return Halide::cast(spec.storage_type(), v);
  const Halide::Expr nan = Halide::reinterpret(Halide::Float(16), Halide::cast(Halide::UInt(16), 0x7e00));
  return Halide::select(Halide::is_nan(v), nan, Halide::cast(Halide::Float(16), v));
}

// Defines f(args) from one value or several (a Tuple); Halide takes a single value only as an Expr.
inline void define(Halide::FuncRef ref, const std::vector<Halide::Expr>& values) {
  if (values.size() == 1) {
    ref = values[0];
  } else {
    ref = Halide::Tuple(values);
  }
}
// Element i of f(args), whether f has one value or several.
inline Halide::Expr element(const Halide::FuncRef& ref, int i) {
  return ref.size() == 1 ? Halide::Expr(ref) : Halide::Expr(ref[i]);
}

// f(g, b) as read per channel, f(group_of(c), b). For GroupNorm a Func of its own over (c, b), which the CPU
// schedule computes per block: a vector across channels (NHWC) then loads it, where it gathered each lane at
// c / group_size. Otherwise (one channel per group) f itself.
inline Halide::Func per_channel(const Problem& p, const Axes& a, const Halide::Func& per_group, const char* name) {
  if (p.spec.norm != Norm::group) return per_group;
  Halide::Func f(name);
  f(a.c, a.b) = per_group(p.group_of(a.c), a.b);
  return f;
}

// Terms per element of a reduction, at spatial position s (of channel c and sample n of the Axes).
using TermsAt = std::function<std::vector<Halide::Expr>(Halide::Expr s)>;

// Length of the float32 accumulation chunks along s. The float32 chains are then at most this long, whatever S
// is: at S = 2048 x 2048 a single float32 chain per row lost 1e-4 of y. In NCHW the schedule splits each chunk
// into vector lanes (chains of 4096 / 16); in NHWC the vectors run across channels and each channel's chain is
// the whole chunk, so the chunks are shorter there: with 4096, GroupNorm NHWC at a mean 1e4 times the standard
// deviation lost 2e-5 of y on 13 x 17 (one chain of 221), against 6e-7 in NCHW. 16-bit inputs sit on a grid
// coarse against their sum, so the float32 roundings of a chain stop averaging out: rows of 4096 bfloat16 values
// (mean up to 4 sigma) lost 1.5e-5 of invstd in NCHW chains of 4096 / 8, against 2.5e-6 for the same values
// unrounded; a simulation of those chains gave 9e-6 at 4096 and 2.8e-6 at 1024. So 1024 for 16-bit NCHW.
inline int sum_chunk_length(const NormSpec& spec) {
  if (spec.layout == Layout::nhwc) return kNhwcSumChunkRows;
  return spec.dtype == DType::float32 ? 4096 : 1024;
}
inline int sum_chunk_length(const Problem& p) {
  return p.chunk_length > 0 ? p.chunk_length : sum_chunk_length(p.spec);
}

// Sums over s of float32 terms for each (channel, sample), in two precisions:
//   chunk(c, k, n) = sum over s in [k B, k B + B) of the terms, float32     (B = sum_chunk_length, k < S / B)
//   tail(c, n)     = sum over the last S mod B elements of the row, float32
//   total(c, n)    = sum over k of chunk, plus tail, float64
// Full chunks have a constant extent, so the schedule can vectorise them without a tail of its own; the
// float64 merge keeps the error from growing with S the way one float32 accumulator would.
// With Problem::tail_spans_samples, tail(c, m) sums the tails of samples m M to m M + M - 1 (M = B / (S mod B), at
// least 1: at most B elements, as a chunk) and total(c, m M) counts it: the rows' float32 partials are added across
// their vector lanes once per M rows instead of once per row (schedule_sums_over_contiguous_s).
struct ChannelSums {
  Halide::Func chunk{"chunk_sums"};
  Halide::Func tail{"tail_sums"};
  Halide::Func total{"channel_sums"};
  Halide::RDom over_chunk, over_tail, over_chunks;
  int terms;

  ChannelSums(const Axes& a, const TermsAt& terms_at, const Problem& p)
      : over_chunk(0, sum_chunk_length(p), "rchunk"),
        over_tail(p.tail_spans_samples
                      ? Halide::RDom(first_of_tail(p), p.spatial % sum_chunk_length(p), 0, tail_samples(p), "rtail")
                      : Halide::RDom(first_of_tail(p), p.spatial % sum_chunk_length(p), "rtail")),
        over_chunks(0, p.spatial / sum_chunk_length(p), "rk") {
    using namespace Halide;
    const int chunk_length = sum_chunk_length(p);
    Var k("k");
    const std::vector<Expr> chunk_terms = terms_at(k * chunk_length + over_chunk.x);
    std::vector<Expr> tail_terms = terms_at(over_tail.x);
    const Expr samples = p.tail_spans_samples ? tail_samples(p) : Expr(1);
    if (p.tail_spans_samples) {
      // The sample of the tail's second dimension; clamped as well as excluded, as bounds inference does not see
      // through the where.
      Expr n = a.n * samples + over_tail.y;
      for (Expr& e : tail_terms) e = Internal::substitute(a.n.name(), min(n, p.batch - 1), e);
      over_tail.where(n < p.batch);
    }
    terms = static_cast<int>(chunk_terms.size());
    define(chunk(a.c, k, a.n), std::vector<Expr>(terms, 0.0f));
    define(tail(a.c, a.n), std::vector<Expr>(terms, 0.0f));
    std::vector<Expr> chunk_update, tail_update, from_tail, from_chunks;
    for (int i = 0; i < terms; i++) {
      chunk_update.push_back(element(chunk(a.c, k, a.n), i) + chunk_terms[i]);
      tail_update.push_back(element(tail(a.c, a.n), i) + tail_terms[i]);
    }
    define(chunk(a.c, k, a.n), chunk_update);
    define(tail(a.c, a.n), tail_update);
    for (int i = 0; i < terms; i++) {
      Expr t = cast<double>(element(tail(a.c, a.n / samples), i));
      from_tail.push_back(p.tail_spans_samples ? select(a.n % samples == 0, t, cast<double>(0)) : t);
    }
    define(total(a.c, a.n), from_tail);
    for (int i = 0; i < terms; i++) {
      from_chunks.push_back(element(total(a.c, a.n), i) + cast<double>(element(chunk(a.c, over_chunks.x, a.n), i)));
    }
    define(total(a.c, a.n), from_chunks);
  }

  static Halide::Expr first_of_tail(const Problem& p) {
    return p.spatial / sum_chunk_length(p) * sum_chunk_length(p);
  }
  // M: as many samples' tails as make a chunk's length of elements, at least one.
  static Halide::Expr tail_samples(const Problem& p) {
    return Halide::max(1, sum_chunk_length(p) / Halide::max(p.spatial % sum_chunk_length(p), 1));
  }
};

// Sums of ChannelSums::total over the channels of each group, and over the samples when the statistics reduce
// the batch, each channel's sums times factor(c) first: (g, b) in float64.
struct GroupSums {
  Halide::Func sums{"group_sums"};
  Halide::RDom over;  // (channel in group, sample)

  GroupSums(const Axes& a, const Problem& p, const ChannelSums& channel,
            const std::function<Halide::Expr(Halide::Expr c)>& factor)
      : over(0, p.group_size, 0, p.spec.reduces_batch() ? p.batch : Halide::Expr(1), "rgroup") {
    using namespace Halide;
    Expr c = a.g * p.group_size + over.x;
    Expr n = p.spec.reduces_batch() ? Expr(over.y) : Expr(a.b);
    define(sums(a.g, a.b), std::vector<Expr>(channel.terms, cast<double>(0)));
    std::vector<Expr> update;
    for (int i = 0; i < channel.terms; i++) {
      Expr term = element(channel.total(c, n), i);
      update.push_back(element(sums(a.g, a.b), i) + (factor ? term * cast<double>(factor(c)) : term));
    }
    define(sums(a.g, a.b), update);
  }
};

// Statistics by shifted sums. Each group is shifted by its first element K:
//   mean = K + sum(x - K) / count,   var = sum((x - K)^2) / count - (sum(x - K) / count)^2.
// x - K is exact for values near K (Sterbenz), and the deviations are of the order of the standard
// deviation, so the subtraction in var does not cancel catastrophically even when the mean is 1e4 times the
// standard deviation (raw sum / sum of squares in float32 would lose every digit there). One pass over x.
// RMSNorm has no mean: K = 0 and the one sum is of x^2.
struct Statistics {
  Halide::Func shift{"shift"};  // (g, b)
  Halide::Func channel_shift;   // (c, b): per_channel(shift)
  ChannelSums channel_sums;
  GroupSums group_sums;
  // (g, b): {mean - K as float32, invstd as float32, mean as float64, biased variance (RMS: mean square) as
  // float64}
  Halide::Func stats{"statistics"};

  Statistics(const Axes& a, const Problem& p, const Halide::Func& x, Halide::Expr eps)
      : channel_sums(make_sums(a, p, x)), group_sums(a, p, channel_sums, nullptr) {
    using namespace Halide;
    Expr count = p.count();
    const FuncRef sums = group_sums.sums(a.g, a.b);
    if (p.spec.centred()) {
      Expr mean_shifted = element(sums, 0) / count;
      Expr var = max(element(sums, 1) / count - mean_shifted * mean_shifted, Expr(0.0));
      Expr invstd = Expr(1.0) / sqrt(var + cast<double>(eps));
      stats(a.g, a.b) = {cast<float>(mean_shifted), cast<float>(invstd),
                         cast<double>(shift(a.g, a.b)) + mean_shifted, var};
    } else {
      Expr mean_square = element(sums, 0) / count;
      Expr invstd = Expr(1.0) / sqrt(mean_square + cast<double>(eps));
      stats(a.g, a.b) = {0.0f, cast<float>(invstd), cast<double>(0), mean_square};
    }
  }

 private:
  ChannelSums make_sums(const Axes& a, const Problem& p, const Halide::Func& x) {
    using namespace Halide;
    const Layout layout = p.spec.layout;
    if (p.spec.centred()) {
      shift(a.g, a.b) = at(x, layout, 0, a.g * p.group_size, a.b);
    } else {
      shift(a.g, a.b) = 0.0f;
    }
    channel_shift = per_channel(p, a, shift, "channel_shift");
    auto deviations = [&](Expr s) {
      Expr value = at(x, layout, s, a.c, a.n);
      if (!p.spec.centred()) return std::vector<Expr>{value * value};
      Expr d = value - channel_shift(a.c, p.sample_of(a.n));
      return std::vector<Expr>{d, d * d};
    };
    return ChannelSums(a, deviations, p);
  }
};

// The affine parameters as Funcs of the axis they follow (c, or s for LayerNorm and RMSNorm).
struct Affine {
  Halide::Func weight, bias;

  // At element (s, c): the parameter for the axis it follows.
  Halide::Expr weight_at(const NormSpec& spec, Halide::Expr s, Halide::Expr c) const {
    return spec.affine_per_element() ? weight(s) : weight(c);
  }
  Halide::Expr bias_at(const NormSpec& spec, Halide::Expr s, Halide::Expr c) const {
    return spec.affine_per_element() ? bias(s) : bias(c);
  }
  // The part of the scale that is constant per channel: the weight when it follows c, else 1.
  Halide::Expr channel_weight(const NormSpec& spec, Halide::Expr c) const {
    return spec.affine_per_element() ? Halide::Expr(1.0f) : weight(c);
  }
  Halide::Expr element_weight(const NormSpec& spec, Halide::Expr s) const {
    return spec.affine_per_element() ? weight(s) : Halide::Expr(1.0f);
  }
};

// y from the normalized value v (and the residual z for add_relu). A NaN v stays NaN, as torch.relu keeps it:
// Halide simplifies select(v < 0, 0, v) to max(v, 0), which gives 0 for NaN on x86 (the fuzz target call found
// it), so NaN is selected explicitly. is_nan evaluates its argument strictly; v is made strict for both uses so
// that it is computed once.
inline Halide::Expr relu(const Halide::Expr& v) {
  const Halide::Expr strict = Halide::strict_float(v);
  return Halide::select(Halide::is_nan(strict), strict, Halide::max(strict, 0.0f));
}

inline Halide::Expr apply_epilogue(Epilogue epilogue, Halide::Expr v, Halide::Expr z) {
  using namespace Halide;
  switch (epilogue) {
    case Epilogue::relu: return relu(v);
    case Epilogue::add_relu: return relu(v + z);
    case Epilogue::silu: return v / (1.0f + exp(-v));
    case Epilogue::none: break;
  }
  return v;
}

// Forward training: y, the saved statistics per (g, b), and the new running statistics per channel.
struct ForwardTrainingAlgorithm {
  Statistics statistics;
  // (c, b): {K, mean - K, invstd * weight(c)}: what y needs per channel, gathered from the groups.
  Halide::Func coefficients{"channel_coefficients"};
  Halide::Func y{"normalized"};
  Halide::Func saved_statistics{"saved_statistics_values"};    // (g, b): {mean, invstd}, or {invstd} for RMS
  Halide::Func running_statistics{"running_statistics_values"};  // (c): {new running mean, new running var}

  // y = ((x - K) - (mean - K)) * invstd * weight + bias: normalising the shifted value keeps the float32
  // rounding of the mean (about 6e-8 of |mean|) out of y. strict_float stops Halide's simplifier from
  // reassociating it into x - (K + (mean - K)), which would bring that rounding back.
  ForwardTrainingAlgorithm(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& z,
                           const Affine& affine, const Halide::Func& running_mean, const Halide::Func& running_var,
                           Halide::Expr momentum, Halide::Expr eps, Halide::Expr running_var_correction)
      : statistics(a, p, x, eps) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    const Func& st = statistics.stats;
    Expr group = p.group_of(a.c);
    coefficients(a.c, a.b) = {statistics.shift(group, a.b), st(group, a.b)[0],
                              st(group, a.b)[1] * affine.channel_weight(spec, a.c)};

    Expr b = p.sample_of(a.n);
    Expr d = at(x, spec.layout, a.s, a.c, a.n) - coefficients(a.c, b)[0];
    Expr normalized = spec.centred() ? strict_float(d - coefficients(a.c, b)[1]) : d;
    Expr v = normalized * coefficients(a.c, b)[2] * affine.element_weight(spec, a.s) + affine.bias_at(spec, a.s, a.c);
    Expr residual = spec.epilogue == Epilogue::add_relu ? at(z, spec.layout, a.s, a.c, a.n) : Expr();
    y(a.storage(spec.layout)) = stored(spec, apply_epilogue(spec.epilogue, v, residual));

    if (spec.centred()) {
      saved_statistics(a.g, a.b) = {cast<float>(st(a.g, a.b)[2]), st(a.g, a.b)[1]};
    } else {
      saved_statistics(a.g, a.b) = st(a.g, a.b)[1];
    }

    if (spec.has_running_statistics()) {
      // The batch's statistic of a channel is the mean over its samples' (InstanceNorm, as PyTorch averages
      // the per-sample running statistics it computes), or its one value (BatchNorm).
      RDom samples(0, p.statistics_batch(), "rsample");
      Func batch_values("batch_values");
      batch_values(a.c) = {cast<double>(0), cast<double>(0)};
      batch_values(a.c) = {batch_values(a.c)[0] + st(a.c, samples)[2], batch_values(a.c)[1] + st(a.c, samples)[3]};
      Expr samples_count = cast<double>(p.statistics_batch());
      Expr m = cast<double>(momentum);
      Expr new_mean = (Expr(1.0) - m) * cast<double>(running_mean(a.c)) + m * batch_values(a.c)[0] / samples_count;
      Expr new_var = (Expr(1.0) - m) * cast<double>(running_var(a.c)) +
                     m * batch_values(a.c)[1] / samples_count * cast<double>(running_var_correction);
      running_statistics(a.c) = {cast<float>(new_mean), cast<float>(new_var)};
      running_batch_values = batch_values;
    }
  }

  Halide::Func running_batch_values;  // (c), when there are running statistics
};

// Forward inference from given per-channel statistics (BatchNorm, and InstanceNorm with running statistics):
// y = (x - mean) * (invstd * weight) + bias.
struct ForwardInferenceAlgorithm {
  Halide::Func scale{"scale"};
  Halide::Func y{"normalized"};

  ForwardInferenceAlgorithm(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& z,
                            const Affine& affine, const Halide::Func& running_mean, const Halide::Func& running_var,
                            Halide::Expr eps) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    scale(a.c) = cast<float>(Expr(1.0) / sqrt(cast<double>(running_var(a.c)) + cast<double>(eps))) *
                 affine.channel_weight(spec, a.c);
    Expr v = (at(x, spec.layout, a.s, a.c, a.n) - running_mean(a.c)) * scale(a.c) + affine.bias_at(spec, a.s, a.c);
    Expr residual = spec.epilogue == Epilogue::add_relu ? at(z, spec.layout, a.s, a.c, a.n) : Expr();
    y(a.storage(spec.layout)) = stored(spec, apply_epilogue(spec.epilogue, v, residual));
  }
};

// Backward. With xhat = (x - mean) * invstd, h = dL/dxhat = weight * g (g: dy through the epilogue's
// derivative) and means over the elements of each statistic,
//   training:   dx = invstd * (h - mean(h) - xhat * mean(h * xhat))      (RMSNorm: no mean(h) term)
//   evaluation: dx = invstd * h                                          (the statistics are constants)
//   dweight = sum(g * xhat), dbias = sum(g), over the elements each parameter touches.
// When the weight follows the channel, the sums over s are kept per (channel, sample) without it; the
// statistic's sums multiply each channel's by its weight, and dweight, dbias are their sums over samples.
// When it follows s (LayerNorm, RMSNorm), h's sums are taken directly and dweight, dbias are column sums over
// the rows.
struct BackwardAlgorithm {
  Halide::Func mean_in;  // the mean input (declared first: make_sums() uses it during construction)
  // (g, b): a float32 centre close to the mean, on the grid of the group's largest values (see below).
  Halide::Func centre{"centre"};
  Halide::Func channel_centre;  // (c, b): per_channel(centre)
  ChannelSums channel_sums;
  GroupSums group_sums;
  // (c, b): {mean, invstd, weight(c), mean(h), mean(h * xhat)}.
  Halide::Func coefficients{"gradient_coefficients"};
  Halide::Func dx{"input_gradient"};
  Halide::Func dz{"residual_gradient"};      // add_relu
  // (c, or s when the weight follows s): {dweight, dbias}, or {dweight} for RMS; float64 sums, float32 results.
  Halide::Func param_sums{"param_grad_sums"};
  Halide::Func param_grads{"param_grad_values"};
  Halide::Var param_axis;
  Halide::RDom over_rows;  // param_sums' reduction when the weight follows s

  // sum(h * (x - mean)) is accumulated as sum(h * (x - centre)) - (mean - centre) * sum(h). When the mean is
  // not a multiple of the spacing of x's float32 values, x - mean rounds the same way for every x of one
  // binade, and with a dy whose mean is not zero those errors add up instead of cancelling (grad_weight was
  // off by 4e-5 at 2 x 2 x 2048 x 2048). The centre is the mean rounded to a multiple of the spacing of
  // values up to |mean| + 8 sigma, so x - centre is exact for them; the remainder enters once, in float64.
  // parameter_sums: whether param_sums and param_grads are defined (the affine backward; backward_reduce, which
  // takes no weight and outputs the sums alone).
  BackwardAlgorithm(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& dy,
                    const Halide::Func& y, const Halide::Func& mean, const Halide::Func& invstd,
                    const Affine& affine, Halide::Expr training, bool parameter_sums)
      : channel_sums(make_sums(a, p, x, dy, y, mean, invstd, affine)),
        group_sums(a, p, channel_sums,
                   p.spec.affine_per_element() ? std::function<Halide::Expr(Halide::Expr)>()
                                               : [&](Halide::Expr c) { return affine.weight(c); }) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    Expr count = p.count();
    const FuncRef sums = group_sums.sums(a.g, a.b);
    Expr group_invstd = cast<double>(invstd(a.g, a.b));
    Expr mean_h = spec.centred() ? element(sums, 1) / count : Expr(0.0);
    Expr sum_h_xhat = spec.centred() ? (element(sums, 0) - offset(a.g, a.b) * element(sums, 1)) * group_invstd
                                     : element(sums, 0) * group_invstd;
    Func group_terms("group_gradient_terms");
    group_terms(a.g, a.b) = {cast<float>(mean_h), cast<float>(sum_h_xhat / count)};

    Expr group = p.group_of(a.c);
    coefficients(a.c, a.b) = {spec.centred() ? mean(group, a.b) : Expr(0.0f), invstd(group, a.b),
                              affine.channel_weight(spec, a.c), select(training, group_terms(group, a.b)[0], 0.0f),
                              select(training, group_terms(group, a.b)[1], 0.0f)};
    terms = group_terms;

    define_input_gradients(a, p, x, dy, y, mean, invstd, affine, coefficients, dx, dz);

    if (!parameter_sums) return;
    if (spec.affine_per_element()) {
      // Column sums over the rows, in float64: R is up to millions of rows.
      over_rows = RDom(0, p.batch, "rrow");
      Expr row = over_rows.x;
      Expr g_row = gradient_through_epilogue(a, p, x, dy, y, mean, invstd, affine, a.s, row);
      Expr mean_row = spec.centred() ? mean(0, row) : Expr(0.0f);
      Expr xhat_row = (at(x, spec.layout, a.s, 0, row) - mean_row) * invstd(0, row);
      std::vector<Expr> terms_row = {cast<double>(g_row * xhat_row)};
      if (spec.has_bias()) terms_row.push_back(cast<double>(g_row));
      define_sum(param_sums, a.s, terms_row);
      param_axis = a.s;
    } else {
      // dweight(c) = sum over samples of invstd * (sum(g * (x - centre)) - (mean - centre) * sum(g)).
      RDom samples(0, p.batch, "rsample");
      Expr sb = p.sample_of(samples);
      Expr grp = p.group_of(a.c);
      const Tuple channel(channel_sums.total(a.c, samples));
      Expr dweight = cast<double>(invstd(grp, sb)) * (channel[0] - offset(grp, sb) * channel[1]);
      define_sum(param_sums, a.c, {dweight, channel[1]});
      param_axis = a.c;
    }
    std::vector<Expr> grads;
    for (int i = 0; i < (spec.has_bias() ? 2 : 1); i++) grads.push_back(cast<float>(element(param_sums(param_axis), i)));
    define(param_grads(param_axis), grads);
  }

  Halide::Func terms;  // (g, b): the group's {mean(h), mean(h * xhat)}, for the schedule

  // dx (and dz for add_relu) from coefficients(c, b) = {mean, invstd, weight(c), mean(h), mean(h * xhat)}:
  // dx = invstd * ((h - mean(h)) - xhat * mean(h * xhat)). h and mean(h) are subtracted before the scaling, as the
  // forward subtracts the mean before it, so that they cancel exactly where they are equal (a LayerNorm row of one
  // element has dx = 0). Scaled first, invstd * h and invstd * mean(h) were rounded apart (and on CUDA one of them
  // fused into an FMA): dx of 2e-5 where 0 is exact, and 6e-5 of dx's scale for GroupNorm groups of two elements
  // (H200, 2026-12-04).
  static void define_input_gradients(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& dy,
                                     const Halide::Func& y, const Halide::Func& mean, const Halide::Func& invstd,
                                     const Affine& affine, const Halide::Func& coefficients, Halide::Func dx,
                                     Halide::Func dz) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    Expr b = p.sample_of(a.n);
    Expr xhat = (at(x, spec.layout, a.s, a.c, a.n) - coefficients(a.c, b)[0]) * coefficients(a.c, b)[1];
    Expr g = gradient_through_epilogue(a, p, x, dy, y, mean, invstd, affine, a.s);
    Expr h = g * coefficients(a.c, b)[2] * affine.element_weight(spec, a.s);
    dx(a.storage(spec.layout)) =
        stored(spec, coefficients(a.c, b)[1] * ((h - coefficients(a.c, b)[3]) - xhat * coefficients(a.c, b)[4]));
    if (spec.epilogue == Epilogue::add_relu) dz(a.storage(spec.layout)) = stored(spec, g);
  }

 private:
  // f(axis) = sum of the terms over their RDom, in float64.
  static void define_sum(Halide::Func f, Halide::Var axis, const std::vector<Halide::Expr>& terms) {
    using namespace Halide;
    define(f(axis), std::vector<Expr>(terms.size(), cast<double>(0)));
    std::vector<Expr> update;
    for (size_t i = 0; i < terms.size(); i++) update.push_back(element(f(axis), static_cast<int>(i)) + terms[i]);
    define(f(axis), update);
  }

  Halide::Expr offset(Halide::Expr g, Halide::Expr b) const {
    return Halide::cast<double>(mean_in(g, b)) - Halide::cast<double>(centre(g, b));
  }

  // g at (s, a.c, n): dy times the epilogue's derivative at this element.
  static Halide::Expr gradient_through_epilogue(const Axes& a, const Problem& p, const Halide::Func& x,
                                                const Halide::Func& dy, const Halide::Func& y,
                                                const Halide::Func& mean, const Halide::Func& invstd,
                                                const Affine& affine, Halide::Expr s, Halide::Expr n = Halide::Expr()) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    if (!n.defined()) n = a.n;
    // LayerNorm's and RMSNorm's rows have the one channel 0; their column sums have no c to use.
    Expr c = spec.affine_per_element() ? Expr(0) : Expr(a.c);
    Expr grad = at(dy, spec.layout, s, c, n);
    switch (spec.epilogue) {
      case Epilogue::relu:
      case Epilogue::add_relu:
        // The mask is y > 0, as torch's threshold_backward takes it from the output.
        return select(at(y, spec.layout, s, c, n) > 0.0f, grad, 0.0f);
      case Epilogue::silu: {
        Expr group = p.group_of(c), b = p.sample_of(n);
        Expr mean_value = spec.centred() ? mean(group, b) : Expr(0.0f);
        Expr v = (at(x, spec.layout, s, c, n) - mean_value) * invstd(group, b) * affine.weight_at(spec, s, c) +
                 affine.bias_at(spec, s, c);
        Expr sigmoid = 1.0f / (1.0f + exp(-v));
        return grad * sigmoid * (1.0f + v * (1.0f - sigmoid));
      }
      case Epilogue::none: break;
    }
    return grad;
  }

  ChannelSums make_sums(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& dy,
                        const Halide::Func& y, const Halide::Func& mean, const Halide::Func& invstd,
                        const Affine& affine) {
    using namespace Halide;
    const NormSpec& spec = p.spec;
    mean_in = mean;
    if (spec.centred()) {
      Expr m = cast<double>(mean(a.g, a.b));
      Expr top = max(abs(m) + Expr(8.0) / cast<double>(invstd(a.g, a.b)), Expr(1e-30));
      // 2^(floor(log2(top)) - 23) from top's exponent bits: exact, and no pow and log per (group, block) (they
      // were 8% of a BatchNorm1d [32, 64] forward + backward).
      Expr exponent_bits = reinterpret(UInt(64), top) & Internal::make_const(UInt(64), uint64_t{0x7FF0000000000000});
      Expr power_of_two = reinterpret(Float(64), exponent_bits);
      Expr spacing = power_of_two * Expr(0x1p-23);
      centre(a.g, a.b) = cast<float>(round(m / spacing) * spacing);
    } else {
      centre(a.g, a.b) = 0.0f;
    }
    channel_centre = per_channel(p, a, centre, "channel_centre");
    auto gradient_terms = [&, spec](Expr s) {
      Expr h = gradient_through_epilogue(a, p, x, dy, y, mean, invstd, affine, s) * affine.element_weight(spec, s);
      Expr d = at(x, spec.layout, s, a.c, a.n) - channel_centre(a.c, p.sample_of(a.n));
      if (!spec.centred()) return std::vector<Expr>{h * d};
      return std::vector<Expr>{h * d, h};
    };
    return ChannelSums(a, gradient_terms, p);
  }
};

// The backward's elementwise half with the means of h and h * xhat given per channel (SyncBatchNorm: over every
// process's batch, runtime/sync_batch_norm.cpp): dx and dz as BackwardAlgorithm computes them. BatchNorm's only.
struct BackwardElementwiseAlgorithm {
  Halide::Func coefficients{"gradient_coefficients"};  // (c, b): as BackwardAlgorithm's
  Halide::Func dx{"input_gradient"};
  Halide::Func dz{"residual_gradient"};  // add_relu

  BackwardElementwiseAlgorithm(const Axes& a, const Problem& p, const Halide::Func& x, const Halide::Func& dy,
                               const Halide::Func& y, const Halide::Func& mean, const Halide::Func& invstd,
                               const Affine& affine, const Halide::Func& h_mean, const Halide::Func& h_xhat_mean) {
    coefficients(a.c, a.b) = {mean(a.c, a.b), invstd(a.c, a.b), affine.channel_weight(p.spec, a.c), h_mean(a.c, a.b),
                              h_xhat_mean(a.c, a.b)};
    BackwardAlgorithm::define_input_gradients(a, p, x, dy, y, mean, invstd, affine, coefficients, dx, dz);
  }
};

}  // namespace fusednorm
