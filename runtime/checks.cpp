#include "runtime/checks.h"

#include <fmt/format.h>

#include "fusednorm/error.h"
#include "fusednorm/tensor.h"

namespace fusednorm::detail {

std::optional<int64_t> multiply(int64_t a, int64_t b) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

int64_t checked_product(std::string_view context, std::string_view what, std::span<const int64_t> shape) {
  int64_t nonzero = 1;
  bool empty = false;
  for (int64_t extent : shape) {
    if (extent == 0) {
      empty = true;
      continue;
    }
    const std::optional<int64_t> next = multiply(nonzero, extent);
    if (!next) {
      throw Error(fmt::format("{}: {} {} has more than 2^63 - 1 elements (the product of its extents wraps)", context,
                              what, shape_string(shape)));
    }
    nonzero = *next;
  }
  return empty ? 0 : nonzero;
}

}  // namespace fusednorm::detail
