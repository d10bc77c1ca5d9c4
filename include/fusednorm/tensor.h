#pragma once
// A non-owning view of a dense float32 tensor: pointer, shape and strides (in elements). FusedNorm never
// copies or allocates behind such a view; a layout the kernels cannot take is refused, not copied.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "fusednorm/kinds.h"

namespace fusednorm {

enum class Device { cpu };

const char* to_string(Layout layout);

class TensorView {
 public:
  TensorView() = default;
  // Strides in elements; empty means contiguous (row-major) over `shape`.
  TensorView(float* data, std::vector<int64_t> shape, std::vector<int64_t> strides = {});

  // A dense channels-last view of logical shape (N, C, *spatial): memory order N, *spatial, C.
  static TensorView channels_last(float* data, std::vector<int64_t> shape);
  // A dense view of logical shape (N, C, *spatial) in the given layout.
  static TensorView with_layout(float* data, std::vector<int64_t> shape, Layout layout);

  float* data() const { return data_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const { return shape_.at(static_cast<size_t>(d)); }
  int64_t stride(int64_t d) const { return strides_.at(static_cast<size_t>(d)); }
  int64_t numel() const;
  DType dtype() const { return DType::float32; }
  Device device() const { return Device::cpu; }

  bool is_contiguous() const;     // dense nchw (row-major)
  bool is_channels_last() const;  // dense nhwc (PyTorch treats N=1 or spatial 1 as both)

 private:
  float* data_ = nullptr;
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
};

// "[8, 64, 56, 56]", for error messages.
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace fusednorm
