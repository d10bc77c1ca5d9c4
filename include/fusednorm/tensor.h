#pragma once
// A non-owning view of a dense float32 tensor: pointer, shape and strides (in elements). FusedNorm never
// copies or allocates behind such a view; a layout the kernels cannot take is refused, not copied.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

#include "fusednorm/kinds.h"

namespace fusednorm {

enum class Device { cpu };

const char* to_string(Layout layout);

// Shape and strides are held in the view itself (at most kMaxDims dimensions): making, copying and passing views
// allocates nothing, so a call through the layers allocates nothing either.
class TensorView {
 public:
  static constexpr size_t kMaxDims = 8;

  TensorView() = default;
  // Strides in elements; empty means contiguous (row-major) over `shape`. Throws fusednorm::Error for more than
  // kMaxDims dimensions, a negative extent, strides of another rank, or an extent beyond int64.
  TensorView(float* data, std::span<const int64_t> shape, std::span<const int64_t> strides = {});
  // The same, for braced lists: TensorView(p, {8, 64}), TensorView(p, shape, {64, 1}).
  TensorView(float* data, std::initializer_list<int64_t> shape, std::initializer_list<int64_t> strides = {})
      : TensorView(data, span_of(shape), span_of(strides)) {}
  TensorView(float* data, std::span<const int64_t> shape, std::initializer_list<int64_t> strides)
      : TensorView(data, shape, span_of(strides)) {}
  TensorView(float* data, std::initializer_list<int64_t> shape, std::span<const int64_t> strides)
      : TensorView(data, span_of(shape), strides) {}

  // A dense channels-last view of logical shape (N, C, *spatial): memory order N, *spatial, C.
  static TensorView channels_last(float* data, std::span<const int64_t> shape);
  static TensorView channels_last(float* data, std::initializer_list<int64_t> shape) {
    return channels_last(data, span_of(shape));
  }
  // A dense view of logical shape (N, C, *spatial) in the given layout.
  static TensorView with_layout(float* data, std::span<const int64_t> shape, Layout layout);
  static TensorView with_layout(float* data, std::initializer_list<int64_t> shape, Layout layout) {
    return with_layout(data, span_of(shape), layout);
  }

  float* data() const { return data_; }
  std::span<const int64_t> shape() const { return {shape_.data(), rank_}; }
  std::span<const int64_t> strides() const { return {strides_.data(), rank_}; }
  int64_t dim() const { return static_cast<int64_t>(rank_); }
  int64_t size(int64_t d) const { return shape_.at(checked_dim(d)); }
  int64_t stride(int64_t d) const { return strides_.at(checked_dim(d)); }
  int64_t numel() const;
  DType dtype() const { return DType::float32; }
  Device device() const { return Device::cpu; }

  bool is_contiguous() const;     // dense nchw (row-major)
  bool is_channels_last() const;  // dense nhwc (PyTorch treats N=1 or spatial 1 as both)

 private:
  static std::span<const int64_t> span_of(std::initializer_list<int64_t> list) { return {list.begin(), list.size()}; }
  size_t checked_dim(int64_t d) const;  // throws std::out_of_range past dim()

  float* data_ = nullptr;
  size_t rank_ = 0;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<int64_t, kMaxDims> strides_{};
};

// "[8, 64, 56, 56]", for error messages.
std::string shape_string(std::span<const int64_t> shape);

}  // namespace fusednorm
