#include "fusednorm/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
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

TensorView::TensorView(float* data, std::span<const int64_t> shape, std::span<const int64_t> strides)
    : data_(data), rank_(shape.size()) {
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

TensorView TensorView::channels_last(float* data, std::span<const int64_t> shape) {
  check_rank(shape);
  Extents strides{};
  channels_last_strides(shape, strides);
  return TensorView(data, shape, std::span<const int64_t>(strides.data(), shape.size()));
}

TensorView TensorView::with_layout(float* data, std::span<const int64_t> shape, Layout layout) {
  return layout == Layout::nchw ? TensorView(data, shape) : channels_last(data, shape);
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
