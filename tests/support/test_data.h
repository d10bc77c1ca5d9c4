#pragma once
// What the test suites share besides the float64 reference: reproducible random data, poisoned outputs, the
// one error metric every comparison uses, and the instruction-set guard. Header-only, like the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "fusednorm/dispatch.h"
#include "fusednorm/tensor.h"
#include "support/batch_norm_reference.h"

namespace fusednorm::test {

// Relative error allowed for float32 storage (docs/USAGE.md, "Numerics").
constexpr double kFloat32Tolerance = 1e-5;

// 16-bit storage (bfloat16, float16), independently of the runtime's conversions: the inputs are rounded to the
// storage type before the reference sees them, so the reference and the kernel start from the same values and
// only the output's rounding separates them. The kernel computes in float32 (error at most kFloat32Tolerance of
// the tensor's scale) and rounds each output to nearest, adding at most the unit roundoff u of the type times
// the element's magnitude, itself at most the scale: u = 2^-8 for bfloat16 (8 significant bits), 2^-11 for
// float16 (11). An output in the storage type is held to kFloat32Tolerance + u; the statistics and parameter
// gradients, float32, to kFloat32Tolerance (their inputs are exact). Float16 subnormals (below 2^-14) carry an
// absolute error of at most 2^-25, far below u of any tensor scale the tests use.
constexpr double unit_roundoff(DType dtype) {
  return dtype == DType::bfloat16 ? 0x1p-8 : dtype == DType::float16 ? 0x1p-11 : 0.0;
}
// `base`: the bound before the rounding (kFloat32Tolerance, or a gradient check's truncation).
constexpr double storage_tolerance(DType dtype, double base = kFloat32Tolerance) {
  return base + unit_roundoff(dtype) * (1 + base);
}

// The bits of v rounded to nearest even in the 16-bit type, and back, independently of the runtime's bit
// manipulation: bfloat16 on the float32 bits (its upper half, NaN kept NaN); float16 by arithmetic in double,
// where every step is exact but the one rounding, which the hardware does to nearest even.
namespace detail {
// 2^k, for |k| < 1023.
inline double pow2(int k) { return std::bit_cast<double>(static_cast<uint64_t>(1023 + k) << 52); }
// x rounded to an integer, to nearest even, for 0 <= x < 2^51: adding 2^52 leaves no bit below the units.
inline double round_to_integer(double x) { return (x + 0x1p52) - 0x1p52; }
}  // namespace detail

inline uint16_t to_bits(DType dtype, float v) {
  if (dtype == DType::float16) {
    const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
    const double a = std::abs(static_cast<double>(v));
    if (std::isnan(v)) return sign | 0x7e00;
    if (a >= 65520.0) return sign | 0x7c00;  // 65504 and half its ulp: to infinity
    // Subnormal: a count of 2^-24 (1024 of them, if it rounds up, is the smallest normal's encoding).
    if (a < 0x1p-14) return static_cast<uint16_t>(sign | static_cast<int>(detail::round_to_integer(a * 0x1p24)));
    // Normal: a = m 2^e, m in [1, 2); 11 significant bits, the leading one implicit. A carry (m rounds to 2)
    // adds one to the exponent field, which is the right encoding.
    const int e = static_cast<int>((std::bit_cast<uint32_t>(v) >> 23) & 0xff) - 127;
    const int significand = static_cast<int>(detail::round_to_integer(a * detail::pow2(10 - e)));  // [1024, 2048]
    return static_cast<uint16_t>(sign | (((e + 15) << 10) + significand - 1024));
  }
  const uint32_t u = std::bit_cast<uint32_t>(v);
  if (std::isnan(v)) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
inline float from_bits(DType dtype, uint16_t bits) {
  if (dtype == DType::float16) {
    const double sign = bits & 0x8000 ? -1.0 : 1.0;
    const int exponent = (bits >> 10) & 0x1f, fraction = bits & 0x3ff;
    if (exponent == 0x1f) {
      return static_cast<float>(fraction ? std::numeric_limits<double>::quiet_NaN()
                                         : sign * std::numeric_limits<double>::infinity());
    }
    if (exponent == 0) return static_cast<float>(sign * fraction * 0x1p-24);
    return static_cast<float>(sign * (1024 + fraction) * detail::pow2(exponent - 25));
  }
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}
// v as the storage type holds it (float32: v itself).
inline float stored(DType dtype, double v) {
  const float f = static_cast<float>(v);
  return dtype == DType::float32 ? f : from_bits(dtype, to_bits(dtype, f));
}
inline void round_to(DType dtype, std::vector<float>& values) {
  for (float& v : values) v = stored(dtype, v);
}

// A seed from a case's name (FNV-1a): every case gets its own data, and a failing case reproduces alone.
inline uint64_t seed_for(std::string_view name) {
  uint64_t hash = 14695981039346656037ull;
  for (char ch : name) hash = (hash ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return hash;
}

// The seed of the running test, from its full name (suite, test, parameter).
inline uint64_t seed_for_current_test() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return seed_for(std::string(info->test_suite_name()) + "." + info->name());
}

// splitmix64: fast enough to fill ResNet-sized tensors, and the same numbers with every standard library
// (std::normal_distribution is not specified bit for bit).
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi).
  double uniform(double lo = 0.0, double hi = 1.0) {
    return lo + (hi - lo) * static_cast<double>(next() >> 11) * 0x1.0p-53;
  }
  // Zero mean, unit variance (uniform on [-sqrt(3), sqrt(3)]).
  double standard() { return uniform(-std::sqrt(3.0), std::sqrt(3.0)); }

 private:
  uint64_t state_;
};

// Values in [lo, hi), e.g. weights in [0.5, 2) or biases in [-1, 1).
inline std::vector<float> random_vector(int64_t size, Random& rng, double lo, double hi) {
  std::vector<float> v(static_cast<size_t>(size));
  for (float& value : v) value = static_cast<float>(rng.uniform(lo, hi));
  return v;
}

// x of (N, C, S) stored in d.layout. Each channel has its own mean (in [-2, 2)) and spread (in [0.5, 2)),
// so a kernel that mixes channels up, or normalises with another channel's statistics, is caught.
inline std::vector<float> random_input(const reference::Dims& d, Random& rng) {
  std::vector<double> mean(static_cast<size_t>(d.c)), spread(static_cast<size_t>(d.c));
  for (int64_t c = 0; c < d.c; c++) {
    mean[static_cast<size_t>(c)] = rng.uniform(-2.0, 2.0);
    spread[static_cast<size_t>(c)] = rng.uniform(0.5, 2.0);
  }
  std::vector<float> x(static_cast<size_t>(d.numel()));
  for (int64_t n = 0; n < d.n; n++)
    for (int64_t c = 0; c < d.c; c++)
      for (int64_t s = 0; s < d.s; s++) {
        x[static_cast<size_t>(d.offset(n, c, s))] =
            static_cast<float>(mean[static_cast<size_t>(c)] + spread[static_cast<size_t>(c)] * rng.standard());
      }
  return x;
}

// The hard numerics' input: each channel's mean 1e4 times its standard deviation (of either sign), the standard
// deviations from 1e-2 to 1e2 across channels. Raw sums of x and x^2 in float32 would lose every digit of the
// variance here.
inline void mean_ten_thousand_sigma(std::vector<float>& x, const reference::Dims& d, Random& rng) {
  for (int64_t c = 0; c < d.c; c++) {
    const double spread = std::pow(10.0, rng.uniform(-2.0, 2.0));
    const double mean = (c % 2 ? -1e4 : 1e4) * spread;
    for (int64_t n = 0; n < d.n; n++)
      for (int64_t s = 0; s < d.s; s++)
        x[static_cast<size_t>(d.offset(n, c, s))] = static_cast<float>(mean + spread * rng.standard());
  }
}

// An output buffer before the call: every element NaN, so one the kernel did not write fails the comparison.
inline std::vector<float> poisoned(int64_t size) {
  return std::vector<float>(static_cast<size_t>(size), std::numeric_limits<float>::quiet_NaN());
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

inline reference::Dims dims_of(const std::vector<int64_t>& shape, Layout layout) {
  int64_t spatial = 1;
  for (size_t d = 2; d < shape.size(); d++) spatial *= shape[d];
  return {shape.at(0), shape.at(1), spatial, layout};
}

// The error metric of every comparison against the float64 reference, per tensor:
//
//   relative_error(got, ref) = max_i |got_i - ref_i| / max(max_i |ref_i|, 1e-30)
//
// the largest error as a fraction of the tensor's scale, so that elements near zero (y near the mean, the
// gradient of a channel with little signal) are not judged against their own tiny magnitude. Any got_i that
// is not finite where ref_i is finite fails outright, whatever the tolerance: that is also how an element the
// kernel never wrote (poisoned with NaN) shows. Where ref_i is NaN (a NaN input), got_i must be NaN too.
//
// Per-channel statistics whose channels differ in scale by orders of magnitude (the hard-numerics inputs) use
// the per-element form instead, |got_i - ref_i| / max(|ref_i|, 1e-30) for every i.
enum class Scale { tensor, element };

// The comparison behind close() and close_statistic(): element i's error over denominator(i).
template <typename T, typename Denominator>
::testing::AssertionResult close_over(const std::string& name, const std::vector<T>& got,
                                      const std::vector<double>& ref, double tolerance, const Denominator& denominator,
                                      const std::string& scale_note) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure() << name << ": " << got.size() << " elements, reference has " << ref.size();
  }
  int64_t mismatched = 0, first_mismatched = -1, worst = -1;
  double worst_error = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double g = static_cast<double>(got[i]);
    const bool special_ok = std::isnan(ref[i]) ? std::isnan(g) : g == ref[i];
    if (std::isfinite(ref[i]) ? !std::isfinite(g) : !special_ok) {
      if (mismatched++ == 0) first_mismatched = static_cast<int64_t>(i);
      continue;
    }
    if (!std::isfinite(ref[i])) continue;
    const double error = std::abs(g - ref[i]) / denominator(i);
    if (error > worst_error || worst < 0) {
      worst_error = error;
      worst = static_cast<int64_t>(i);
    }
  }
  std::ostringstream message;
  message.precision(9);
  if (mismatched > 0) {
    const size_t i = static_cast<size_t>(first_mismatched);
    message << name << ": " << mismatched << " of " << got.size()
            << " elements are not finite where the reference is (unwritten?), or finite where it is not; first at "
            << i << ": got " << got[i] << ", expected " << ref[i];
    return ::testing::AssertionFailure() << message.str();
  }
  if (worst >= 0 && worst_error > tolerance) {
    const size_t i = static_cast<size_t>(worst);
    message << name << ": relative error " << worst_error << " > " << tolerance << " at element " << i << ": got "
            << got[i] << ", expected " << ref[i] << scale_note;
    return ::testing::AssertionFailure() << message.str();
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult close(const std::string& name, const std::vector<T>& got, const std::vector<double>& ref,
                                 double tolerance = kFloat32Tolerance, Scale scale = Scale::tensor) {
  constexpr double kTiny = 1e-30;
  double ref_max = 0;
  for (double r : ref) {
    if (std::isfinite(r)) ref_max = std::max(ref_max, std::abs(r));
  }
  if (scale == Scale::element) {
    return close_over(name, got, ref, tolerance, [&](size_t i) { return std::max(std::abs(ref[i]), kTiny); }, "");
  }
  std::ostringstream note;
  note.precision(9);
  note << " (tensor scale " << ref_max << ")";
  return close_over(name, got, ref, tolerance, [&](size_t) { return std::max(ref_max, kTiny); }, note.str());
}

// A mean (saved or running) per statistic, each element's error over its statistic's own scale, |mean| + sigma
// (sigma = 1 / reference invstd): a mean computed from float32 values carries their rounding, about 6e-8 of that
// scale, so a mean near zero cannot be close to itself in relative terms, and its channels' scales can differ by
// orders of magnitude (the hard-numerics inputs), so the largest mean is no scale either.
template <typename T>
::testing::AssertionResult close_statistic(const std::string& name, const std::vector<T>& got,
                                           const std::vector<double>& ref, const std::vector<double>& ref_invstd,
                                           double tolerance = kFloat32Tolerance) {
  if (ref_invstd.size() != ref.size()) {
    return ::testing::AssertionFailure() << name << ": " << ref.size() << " elements, invstd has " << ref_invstd.size();
  }
  return close_over(
      name, got, ref, tolerance,
      [&](size_t i) { return std::max(std::abs(ref[i]) + 1.0 / ref_invstd[i], 1e-30); }, " (scale |mean| + sigma)");
}

// Limits dispatch to one instruction set for a scope, and lifts the limit after (set_max_isa("")).
class ScopedMaxIsa {
 public:
  explicit ScopedMaxIsa(const std::string& isa) { set_max_isa(isa); }
  ~ScopedMaxIsa() { set_max_isa(""); }
  ScopedMaxIsa(const ScopedMaxIsa&) = delete;
  ScopedMaxIsa& operator=(const ScopedMaxIsa&) = delete;
};

// Makes dispatch run one schedule ("hand", "Adams2019", ...) for a scope, and the hand schedule after.
class ScopedSchedule {
 public:
  explicit ScopedSchedule(const std::string& schedule) { set_schedule(schedule); }
  ~ScopedSchedule() { set_schedule("hand"); }
  ScopedSchedule(const ScopedSchedule&) = delete;
  ScopedSchedule& operator=(const ScopedSchedule&) = delete;
};

// A parameter name gtest accepts: letters, digits and underscores ("resnet50.conv1" -> "resnet50_conv1").
inline std::string identifier(std::string text) {
  for (char& ch : text) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return text;
}

}  // namespace fusednorm::test
