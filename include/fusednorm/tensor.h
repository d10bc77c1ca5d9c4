#pragma once
// A non-owning view of a dense tensor of float32, bfloat16 or float16: pointer, element type, shape and strides
// (in elements). FusedNorm never copies or allocates behind such a view; a layout the kernels cannot take is
// refused, not copied.
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

#include "fusednorm/kinds.h"

namespace fusednorm {

enum class Device { cpu };

const char* to_string(Layout layout);

// The 16-bit storage types, as PyTorch stores them: the bits of a bfloat16 (float32's upper half) or of an IEEE
// binary16. A buffer of uint16_t from elsewhere is viewed through a cast: reinterpret_cast<bfloat16*>(p).
struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};
// Conversions: exact to float; from float rounded to nearest even (NaN stays NaN, overflow becomes infinity).
float to_float(bfloat16 value);
float to_float(float16 value);
bfloat16 to_bfloat16(float value);
float16 to_float16(float value);

// The element types a view can have, and the DType of each.
template <typename T>
concept Element = std::same_as<T, float> || std::same_as<T, bfloat16> || std::same_as<T, float16>;
template <Element T>
inline constexpr DType dtype_of = std::same_as<T, float>      ? DType::float32
                                  : std::same_as<T, bfloat16> ? DType::bfloat16
                                                              : DType::float16;
// Bytes per element: 4 or 2.
constexpr int64_t element_size(DType dtype) { return dtype == DType::float32 ? 4 : 2; }

// A pointer with its element type, from a typed pointer (float* is float32, as nullptr is) or a void* and the
// dtype of its elements.
struct ElementPointer {
  ElementPointer(std::nullptr_t) {}
  template <Element T>
  ElementPointer(T* p) : data(p), dtype(dtype_of<T>) {}
  ElementPointer(void* p, DType d) : data(p), dtype(d) {}
  void* data = nullptr;
  DType dtype = DType::float32;
};

// Shape and strides are held in the view itself (at most kMaxDims dimensions): making, copying and passing views
// allocates nothing, so a call through the layers allocates nothing either.
class TensorView {
 public:
  static constexpr size_t kMaxDims = 8;

  TensorView() = default;
  // Strides in elements; empty means contiguous (row-major) over `shape`. Throws fusednorm::Error for more than
  // kMaxDims dimensions, a negative extent, strides of another rank, or an extent beyond int64. The pointer's
  // element type is the view's dtype: float*, bfloat16*, float16*, or {void*, dtype} (ElementPointer).
  TensorView(ElementPointer data, std::span<const int64_t> shape, std::span<const int64_t> strides = {});
  // The same, for braced lists: TensorView(p, {8, 64}), TensorView(p, shape, {64, 1}).
  TensorView(ElementPointer data, std::initializer_list<int64_t> shape, std::initializer_list<int64_t> strides = {})
      : TensorView(data, span_of(shape), span_of(strides)) {}
  TensorView(ElementPointer data, std::span<const int64_t> shape, std::initializer_list<int64_t> strides)
      : TensorView(data, shape, span_of(strides)) {}
  TensorView(ElementPointer data, std::initializer_list<int64_t> shape, std::span<const int64_t> strides)
      : TensorView(data, span_of(shape), strides) {}

  // A dense channels-last view of logical shape (N, C, *spatial): memory order N, *spatial, C.
  static TensorView channels_last(ElementPointer data, std::span<const int64_t> shape);
  static TensorView channels_last(ElementPointer data, std::initializer_list<int64_t> shape) {
    return channels_last(data, span_of(shape));
  }
  // A dense view of logical shape (N, C, *spatial) in the given layout.
  static TensorView with_layout(ElementPointer data, std::span<const int64_t> shape, Layout layout);
  static TensorView with_layout(ElementPointer data, std::initializer_list<int64_t> shape, Layout layout) {
    return with_layout(data, span_of(shape), layout);
  }

  // The elements as T, which must be the view's dtype (fusednorm::Error otherwise): data() is float32's.
  template <Element T = float>
  T* data() const {
    if (dtype_of<T> != dtype_) throw_dtype_mismatch(dtype_of<T>);
    return static_cast<T*>(data_);
  }
  void* data_ptr() const { return data_; }
  std::span<const int64_t> shape() const { return {shape_.data(), rank_}; }
  std::span<const int64_t> strides() const { return {strides_.data(), rank_}; }
  int64_t dim() const { return static_cast<int64_t>(rank_); }
  int64_t size(int64_t d) const { return shape_.at(checked_dim(d)); }
  int64_t stride(int64_t d) const { return strides_.at(checked_dim(d)); }
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  int64_t element_size() const { return fusednorm::element_size(dtype_); }
  Device device() const { return Device::cpu; }

  bool is_contiguous() const;     // dense nchw (row-major)
  bool is_channels_last() const;  // dense nhwc (PyTorch treats N=1 or spatial 1 as both)

 private:
  static std::span<const int64_t> span_of(std::initializer_list<int64_t> list) { return {list.begin(), list.size()}; }
  size_t checked_dim(int64_t d) const;  // throws std::out_of_range past dim()
  [[noreturn]] void throw_dtype_mismatch(DType asked) const;

  void* data_ = nullptr;
  DType dtype_ = DType::float32;
  size_t rank_ = 0;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<int64_t, kMaxDims> strides_{};
};

// "[8, 64, 56, 56]", for error messages.
std::string shape_string(std::span<const int64_t> shape);

}  // namespace fusednorm
