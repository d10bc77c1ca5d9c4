#pragma once
// Calling a generated kernel: halide_buffer_t views over the caller's memory (no copies), arguments bound by
// name against the kernel's own metadata, and Halide's errors turned into fusednorm::Error.
#include <HalideRuntime.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/variant.h"

namespace fusednorm::detail {

// A kernel call that failed: Halide's error code (halide_error_code_t) and the message call() would throw.
struct KernelFailure {
  int code;
  std::string message;
};

// A halide_buffer_t over float32 memory the caller owns. dims are (extent, stride) innermost first: one to
// three of them (per-channel vectors, (G, B) statistics, the 3-D x view).
class HalideTensor {
 public:
  HalideTensor(const float* data, std::initializer_list<std::pair<int64_t, int64_t>> dims);
  // buffer_ points at its own dims_: a move re-points it.
  HalideTensor(HalideTensor&& other) noexcept;
  HalideTensor(const HalideTensor&) = delete;
  HalideTensor& operator=(const HalideTensor&) = delete;
  halide_buffer_t* get() { return &buffer_; }

 private:
  halide_dimension_t dims_[3] = {};
  halide_buffer_t buffer_ = {};
};

// Arguments of one kernel call, by the names the generator gave them. Views and scalars bound by value are kept
// until the call; those bound by reference or pointer must outlive it. A name the kernel does not have is ignored
// (the callers bind what a norm's kernels may take: eps, groups, momentum, ...); one it has and is not bound is
// an internal error at the call.
class KernelArgs {
 public:
  void bind(const char* name, halide_buffer_t* buffer) { args_.emplace_back(name, buffer); }
  void bind(const char* name, HalideTensor& tensor) { args_.emplace_back(name, tensor.get()); }
  void bind(const char* name, HalideTensor&& tensor) { bind(name, owned_.emplace_back(std::move(tensor))); }
  void bind(const char* name, float* scalar) { args_.emplace_back(name, scalar); }
  void bind(const char* name, int32_t* scalar) { args_.emplace_back(name, scalar); }
  void bind(const char* name, bool* scalar) { args_.emplace_back(name, scalar); }
  // The scalar's type must be the kernel's: float, int32_t or bool, exactly (no conversion picks one).
  void bind_scalar(const char* name, float value) { bind(name, &(owned_scalars_.emplace_back().f = value)); }
  void bind_scalar(const char* name, int32_t value) { bind(name, &(owned_scalars_.emplace_back().i = value)); }
  void bind_scalar(const char* name, bool value) { bind(name, &(owned_scalars_.emplace_back().b = value)); }
  template <typename T>
  void bind_scalar(const char* name, T value) = delete;

  // Calls the variant; a Halide error becomes fusednorm::Error("<function>: kernel <name> failed: <text>").
  void call(const KernelVariant& variant, const char* function) const;
  // The same, returning the failure instead of throwing it (an argument not bound still throws).
  std::optional<KernelFailure> try_call(const KernelVariant& variant, const char* function) const;

 private:
  std::vector<std::pair<std::string, void*>> args_;
  // Deques: growing one moves no element, so the pointers bound stay valid.
  std::deque<HalideTensor> owned_;
  union Scalar {
    float f;
    int32_t i;
    bool b;
  };
  std::deque<Scalar> owned_scalars_;
};

}  // namespace fusednorm::detail
