#pragma once
// Binding a call's memory to a generated kernel's arguments, for every backend: each argument has a slot (Arg),
// a plan maps the kernel's own argument list onto slots once (ArgumentOrder), and a call fills the slots with
// halide_buffer_t views of the caller's memory (no copies; on CUDA the device pointer is wrapped) and scalars.
// Nothing here allocates: the buffers live in the Binder, which lives on the caller's stack.
#include <HalideRuntime.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "runtime/variant.h"

namespace fusednorm::detail {

// The arguments of every kernel of the family, by the names the generators give them (docs/KERNELS.md).
enum class Arg : uint8_t {
  x,
  y,
  z,
  dy,
  dx,
  dz,
  weight,
  bias,
  running_mean,  // the running statistics read (forward) or held fixed (evaluation)
  running_var,
  mean,  // the statistics a backward differentiates through
  invstd,
  saved_mean,  // the training forward's saved statistics: "saved_statistics.0" ("saved_statistics" for rms: invstd)
  saved_invstd,
  new_running_mean,  // "running_statistics.0" / ".1": the updated running statistics, written apart
  new_running_var,
  grad_weight,  // "param_grads.0" ("param_grads" for rms); backward_reduce: sum(g * xhat)
  grad_bias,    // backward_reduce: sum(g)
  partial_shift,  // statistics: "partial_statistics.0" / ".1" / ".2", per channel K, mean - K, biased variance
  partial_mean,
  partial_var,
  h_mean,  // backward_elementwise: the whole batch's means of h = weight * g and of h * xhat
  h_xhat_mean,
  eps,  // scalars
  groups,
  momentum,
  running_var_correction,
  training,
  count
};
inline constexpr size_t kArgCount = static_cast<size_t>(Arg::count);

// A kernel's arguments in its own order, as slots; worked out once per variant when a plan is made.
struct ArgumentOrder {
  std::array<Arg, kArgCount> slots{};
  int count = 0;
};
// Throws fusednorm::Error (an internal error naming the kernel) for an argument this runtime has no slot for.
ArgumentOrder argument_order(const KernelVariant& variant);

// A kernel call that failed: Halide's error code (halide_error_code_t) and the message it throws.
struct KernelFailure {
  int code;
  std::string message;
};

// One extent and stride (in elements), innermost first.
struct Dim {
  int64_t extent, stride;
};

class BackendContext;

// Makes the kernels' scratch memory (halide_malloc) come from a per-thread cache of blocks
// (runtime/kernel_memory.cpp); Binder::try_call does it before the first kernel runs.
void install_kernel_memory();

// The arguments of one kernel call. Extents and strides are validated against int32 before they get here.
class Binder {
 public:
  explicit Binder(BackendContext& backend) : backend_(backend) {}
  ~Binder();
  Binder(const Binder&) = delete;
  Binder& operator=(const Binder&) = delete;

  // A tensor of one to three dimensions at `data` (host or device memory, as the backend's), of `dtype` (float32
  // where not given).
  void tensor(Arg arg, const void* data, DType dtype, std::span<const Dim> dims);
  void tensor(Arg arg, const float* data, std::span<const Dim> dims) { tensor(arg, data, DType::float32, dims); }
  void tensor(Arg arg, const float* data, std::initializer_list<Dim> dims) {
    tensor(arg, data, DType::float32, std::span<const Dim>(dims.begin(), dims.size()));
  }
  void vector(Arg arg, const float* data, int64_t size) { tensor(arg, data, {{size, 1}}); }
  // (G, B), G innermost: the statistics of a call.
  void statistics(Arg arg, const float* data, int64_t groups, int64_t blocks) {
    tensor(arg, data, {{groups, 1}, {blocks, groups}});
  }
  // Scalars: the type must be the kernel's (float, int32_t or bool, exactly).
  void scalar(Arg arg, float value) { set_scalar(arg).f = value; }
  void scalar(Arg arg, int32_t value) { set_scalar(arg).i = value; }
  void scalar(Arg arg, bool value) { set_scalar(arg).b = value; }
  template <typename T>
  void scalar(Arg arg, T value) = delete;

  // Calls the variant with its arguments in `order`; a Halide error comes back as a failure whose message is
  // "<function>: kernel <name> failed (Halide error <code>): <text>". An argument the call did not bind throws.
  std::optional<KernelFailure> try_call(const KernelVariant& variant, const ArgumentOrder& order,
                                        const char* function);

 private:
  union Scalar {
    float f;
    int32_t i;
    bool b;
  };
  Scalar& set_scalar(Arg arg);

  BackendContext& backend_;
  std::array<void*, kArgCount> slots_{};
  std::array<halide_buffer_t, kArgCount> buffers_{};
  std::array<std::array<halide_dimension_t, 3>, kArgCount> dims_{};
  std::array<Scalar, kArgCount> scalars_{};
  std::array<bool, kArgCount> wrapped_{};
};

}  // namespace fusednorm::detail
