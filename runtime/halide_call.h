#pragma once
// Calling a generated kernel: halide_buffer_t views over the caller's memory (no copies), arguments bound by
// name against the kernel's own metadata, and Halide's errors turned into fusednorm::Error.
#include <HalideRuntime.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/variant.h"

namespace fusednorm::detail {

// A halide_buffer_t over float32 memory the caller owns. dims are (extent, stride) innermost first.
class HalideTensor {
 public:
  HalideTensor(const float* data, std::initializer_list<std::pair<int64_t, int64_t>> dims);
  HalideTensor(const HalideTensor&) = delete;
  HalideTensor& operator=(const HalideTensor&) = delete;
  halide_buffer_t* get() { return &buffer_; }

 private:
  halide_dimension_t dims_[3] = {};
  halide_buffer_t buffer_ = {};
};

// Arguments of one kernel call, by the names the generator gave them.
class KernelArgs {
 public:
  void bind(const char* name, halide_buffer_t* buffer) { args_.emplace_back(name, buffer); }
  void bind(const char* name, HalideTensor& tensor) { args_.emplace_back(name, tensor.get()); }
  void bind(const char* name, float* scalar) { args_.emplace_back(name, scalar); }
  void bind(const char* name, bool* scalar) { args_.emplace_back(name, scalar); }

  // Calls the variant; a Halide error becomes fusednorm::Error("<function>: kernel <name> failed: <text>").
  void call(const KernelVariant& variant, const char* function) const;

 private:
  std::vector<std::pair<std::string, void*>> args_;
};

}  // namespace fusednorm::detail
