#pragma once
// Shape arithmetic that cannot wrap. Every shape a caller gives is checked here once (TensorView's constructor, a
// layer's feature shape, a state-dict tensor), so that every product of its extents taken later fits int64: an
// overflow is a fusednorm::Error naming the shape, never a wrapped int64 (a shape [1, 3, 6148914691236517207] wrapped
// to 5 elements and reached the kernels).
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace fusednorm::detail {

// a * b for a, b >= 0, or nothing when it exceeds 2^63 - 1.
std::optional<int64_t> multiply(int64_t a, int64_t b);

// The product of the extents of `shape` (each >= 0). Throws Error("{context}: {what} {shape} has more than
// 2^63 - 1 elements") when the product of its non-zero extents does not fit: a zero extent makes the product 0, but
// the strides of the other extents would still wrap.
int64_t checked_product(std::string_view context, std::string_view what, std::span<const int64_t> shape);

}  // namespace fusednorm::detail
