#include "fusednorm/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <limits>

#include "fusednorm/error.h"
#include "runtime/checks.h"

namespace fusednorm {

const char* to_string(Layout layout) { return layout == Layout::nchw ? "nchw" : "nhwc"; }

namespace {
std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

// Channels-last strides of (N, C, *spatial): memory order N, *spatial, C.
std::vector<int64_t> channels_last_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  if (shape.size() < 2) return contiguous_strides(shape);
  int64_t stride = 1;
  strides[1] = stride;
  stride *= shape[1];
  for (size_t i = shape.size(); i-- > 2;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  strides[0] = stride;
  return strides;
}

}  // namespace

TensorView::TensorView(float* data, std::vector<int64_t> shape, std::vector<int64_t> strides)
    : data_(data), shape_(std::move(shape)), strides_(std::move(strides)) {
  for (int64_t extent : shape_) {
    if (extent < 0) throw Error(fmt::format("TensorView: shape {} has a negative extent", shape_string(shape_)));
  }
  // From here on, every product of this view's extents fits int64: numel(), the strides, and the kernels' sizes.
  detail::checked_product("TensorView", "shape", shape_);
  if (strides_.empty()) strides_ = contiguous_strides(shape_);
  if (strides_.size() != shape_.size()) {
    throw Error(fmt::format("TensorView: strides [{}] have {} entries, expected {} (one per dimension of shape {})",
                            fmt::join(strides_, ", "), strides_.size(), shape_.size(), shape_string(shape_)));
  }
  // The farthest element from data() must be addressable too: sum over the dimensions of (extent - 1) * |stride|.
  int64_t span = 0;
  for (size_t i = 0; i < shape_.size(); i++) {
    if (shape_[i] == 0) break;
    const int64_t stride = strides_[i];
    const std::optional<int64_t> reach = stride == std::numeric_limits<int64_t>::min()
                                             ? std::nullopt
                                             : detail::multiply(shape_[i] - 1, std::abs(stride));
    if (!reach || __builtin_add_overflow(span, *reach, &span)) {
      throw Error(fmt::format("TensorView: strides [{}] for shape {} reach beyond 2^63 - 1 elements",
                              fmt::join(strides_, ", "), shape_string(shape_)));
    }
  }
}

TensorView TensorView::channels_last(float* data, std::vector<int64_t> shape) {
  std::vector<int64_t> strides = channels_last_strides(shape);
  return TensorView(data, std::move(shape), std::move(strides));
}

TensorView TensorView::with_layout(float* data, std::vector<int64_t> shape, Layout layout) {
  return layout == Layout::nchw ? TensorView(data, std::move(shape)) : channels_last(data, std::move(shape));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t extent : shape_) n *= extent;
  return n;
}

// PyTorch's rule: a stride of a dimension of size 1 does not matter. Compared dimension by dimension against the
// dense strides, without building them (a call checks its views this way, and a call allocates nothing).
bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

// Memory order N, *spatial, C.
bool TensorView::is_channels_last() const {
  if (shape_.size() < 2) return false;
  int64_t expected = 1;
  auto matches = [&](size_t i) {
    const bool ok = shape_[i] == 1 || strides_[i] == expected;
    expected *= shape_[i];
    return ok;
  };
  if (!matches(1)) return false;
  for (size_t i = shape_.size(); i-- > 2;) {
    if (!matches(i)) return false;
  }
  return matches(0);
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace fusednorm
