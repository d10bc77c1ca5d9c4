#include "fusednorm/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>

#include "fusednorm/error.h"
#include "runtime/checks.h"

namespace fusednorm {

const char* to_string(Layout layout) { return layout == Layout::nchw ? "nchw" : "nhwc"; }

namespace {
using Extents = std::array<int64_t, TensorView::kMaxDims>;

void contiguous_strides(std::span<const int64_t> shape, Extents& strides) {
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
}

// Channels-last strides of (N, C, *spatial): memory order N, *spatial, C.
void channels_last_strides(std::span<const int64_t> shape, Extents& strides) {
  if (shape.size() < 2) return contiguous_strides(shape, strides);
  int64_t stride = 1;
  strides[1] = stride;
  stride *= shape[1];
  for (size_t i = shape.size(); i-- > 2;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  strides[0] = stride;
}

void check_rank(std::span<const int64_t> shape) {
  if (shape.size() > TensorView::kMaxDims) {
    throw Error(fmt::format("TensorView: shape {} has {} dimensions, expected at most {}", shape_string(shape),
                            shape.size(), TensorView::kMaxDims));
  }
}

}  // namespace

TensorView::TensorView(ElementPointer data, std::span<const int64_t> shape, std::span<const int64_t> strides)
    : data_(data.data), dtype_(data.dtype), rank_(shape.size()) {
  if (!parse_kind<DType>(name(dtype_))) {
    throw Error(
        fmt::format("TensorView: dtype is {}, expected float32, bfloat16 or float16", static_cast<int>(dtype_)));
  }
  check_rank(shape);
  for (int64_t extent : shape) {
    if (extent < 0) throw Error(fmt::format("TensorView: shape {} has a negative extent", shape_string(shape)));
  }
  // From here on, every product of this view's extents fits int64: numel(), the strides, and the kernels' sizes.
  detail::checked_product("TensorView", "shape", shape);
  if (!strides.empty() && strides.size() != shape.size()) {
    throw Error(fmt::format("TensorView: strides [{}] have {} entries, expected {} (one per dimension of shape {})",
                            fmt::join(strides, ", "), strides.size(), shape.size(), shape_string(shape)));
  }
  std::copy(shape.begin(), shape.end(), shape_.begin());
  if (strides.empty()) {
    contiguous_strides(shape, strides_);
  } else {
    std::copy(strides.begin(), strides.end(), strides_.begin());
  }
  // The farthest element from data() must be addressable too: sum over the dimensions of (extent - 1) * |stride|.
  int64_t span = 0;
  for (size_t i = 0; i < rank_; i++) {
    if (shape_[i] == 0) break;
    const int64_t stride = strides_[i];
    const std::optional<int64_t> reach = stride == std::numeric_limits<int64_t>::min()
                                             ? std::nullopt
                                             : detail::multiply(shape_[i] - 1, std::abs(stride));
    if (!reach || __builtin_add_overflow(span, *reach, &span)) {
      throw Error(fmt::format("TensorView: strides [{}] for shape {} reach beyond 2^63 - 1 elements",
                              fmt::join(this->strides(), ", "), shape_string(shape)));
    }
  }
}

TensorView TensorView::channels_last(ElementPointer data, std::span<const int64_t> shape) {
  check_rank(shape);
  Extents strides{};
  channels_last_strides(shape, strides);
  return TensorView(data, shape, std::span<const int64_t>(strides.data(), shape.size()));
}

TensorView TensorView::with_layout(ElementPointer data, std::span<const int64_t> shape, Layout layout) {
  return layout == Layout::nchw ? TensorView(data, shape) : channels_last(data, shape);
}

void TensorView::throw_dtype_mismatch(DType asked) const {
  throw Error(fmt::format("TensorView: data<{}>() of a view of dtype {}, expected data<{}>() or data_ptr()",
                          name(asked), name(dtype_), name(dtype_)));
}

// By hand, on the bits (GCC 12 has no _Float16 in C++ on arm-64): round to nearest even. A NaN keeps the upper
// bits of its payload (so that a 16-bit NaN widened and narrowed again is the same bits), made quiet only where
// they alone would read as infinity.
float to_float(bfloat16 value) { return std::bit_cast<float>(static_cast<uint32_t>(value.bits) << 16); }
bfloat16 to_bfloat16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) {
    const auto upper = static_cast<uint16_t>(bits >> 16);
    return {static_cast<uint16_t>(upper & 0x7f ? upper : upper | 0x40)};
  }
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return {static_cast<uint16_t>((bits + rounding) >> 16)};
}

float to_float(float16 value) {
  const uint32_t sign = static_cast<uint32_t>(value.bits & 0x8000) << 16;
  const uint32_t exponent = (value.bits >> 10) & 0x1f, mantissa = value.bits & 0x3ff;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | mantissa << 13);  // infinity, NaN
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | (exponent + 112) << 23 | mantissa << 13);  // rebias 15 -> 127
}
float16 to_float16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude > 0x7f800000) {  // NaN
    const auto payload = static_cast<uint16_t>((magnitude >> 13) & 0x3ff);
    return {static_cast<uint16_t>(sign | 0x7c00 | (payload ? payload : 0x200))};
  }
  if (magnitude >= 0x477ff000) return {static_cast<uint16_t>(sign | 0x7c00)};  // >= 65520 rounds to infinity
  if (magnitude >= 0x38800000) {  // normal (>= 2^-14): drop 13 bits, rounding to nearest even; rebias 127 -> 15
    const uint32_t rounded = magnitude + 0xfff + ((magnitude >> 13) & 1);
    return {static_cast<uint16_t>(sign | (rounded - 0x38000000) >> 13)};
  }
  // Subnormal or zero: the value in units of 2^-24, from the float's significand shifted right, rounded to
  // nearest even (below 2^-25, and 2^-25 itself, to zero).
  const uint32_t exponent = magnitude >> 23;
  if (exponent < 102) return {sign};
  const uint32_t significand = (magnitude & 0x7fffff) | 0x800000, shift = 126 - exponent;  // 14 to 24
  uint32_t units = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (units & 1))) units++;
  return {static_cast<uint16_t>(sign | units)};
}

size_t TensorView::checked_dim(int64_t d) const {
  if (d < 0 || static_cast<size_t>(d) >= rank_) {
    throw std::out_of_range(fmt::format("TensorView: dimension {} of a view with {}", d, rank_));
  }
  return static_cast<size_t>(d);
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t extent : shape()) n *= extent;
  return n;
}

// PyTorch's rule: a stride of a dimension of size 1 does not matter. Compared dimension by dimension against the
// dense strides, without building them (a call checks its views this way, and a call allocates nothing).
bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = rank_; i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

// Memory order N, *spatial, C.
bool TensorView::is_channels_last() const {
  if (rank_ < 2) return false;
  int64_t expected = 1;
  auto matches = [&](size_t i) {
    const bool ok = shape_[i] == 1 || strides_[i] == expected;
    expected *= shape_[i];
    return ok;
  };
  if (!matches(1)) return false;
  for (size_t i = rank_; i-- > 2;) {
    if (!matches(i)) return false;
  }
  return matches(0);
}

std::string shape_string(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace fusednorm
