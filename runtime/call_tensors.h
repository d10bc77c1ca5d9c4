#pragma once
// Every tensor a call of any norm may have, under the member names the public ...Tensors structs share (the names
// messages use). TensorRefs points at a call's tensors where they are (the runtime's checks and kernel calls read
// them through it whatever the norm, copying nothing); CallTensors holds them, so that tests describe a call once
// and make it with any norm's function (convert_tensors).
#include <optional>

#include "fusednorm/tensor.h"

namespace fusednorm::detail {

// docs/KERNELS.md's names in comments. `output` is y: a forward writes it, a backward reads it (the ReLU mask).
struct CallTensors {
  TensorView input;                                                   // x
  std::optional<TensorView> output, residual;                         // y, z
  std::optional<TensorView> weight, bias, running_mean, running_var;  // per channel or element
  std::optional<TensorView> save_mean, save_invstd;                   // the statistics (G, B)
  std::optional<TensorView> grad_output, grad_input, grad_residual;   // dy, dx, dz
  std::optional<TensorView> grad_weight, grad_bias;                   // param_grads
};

// Every member of CallTensors but input, for X(member).
// clang-format off
#define FUSEDNORM_CALL_TENSORS(X)                                                                   \
  X(output) X(residual) X(weight) X(bias) X(running_mean) X(running_var) X(save_mean) X(save_invstd) \
  X(grad_output) X(grad_input) X(grad_residual) X(grad_weight) X(grad_bias)
// clang-format on

inline void assign(std::optional<TensorView>& to, const std::optional<TensorView>& from) { to = from; }
inline void assign(std::optional<TensorView>& to, const TensorView& from) { to = from; }
inline void assign(TensorView& to, const std::optional<TensorView>& from) {
  if (from) to = *from;
}

// Each tensor of `from` that To has a member for (input always): a CallTensors from a public ...Tensors struct,
// or the other way. What `from` has not stays absent.
template <typename To, typename From>
To convert_tensors(const From& from) {
  To to;
  to.input = from.input;
#define FUSEDNORM_COPY(member) \
  if constexpr (requires {     \
                  from.member; \
                  to.member;   \
                })             \
    assign(to.member, from.member);
  FUSEDNORM_CALL_TENSORS(FUSEDNORM_COPY)
#undef FUSEDNORM_COPY
  return to;
}

// The same members as pointers, null where absent: a call's tensors without copying a view (a copy allocates its
// shape and strides).
struct TensorRefs {
  const TensorView* input;
  const TensorView *output = nullptr, *residual = nullptr;
  const TensorView *weight = nullptr, *bias = nullptr, *running_mean = nullptr, *running_var = nullptr;
  const TensorView *save_mean = nullptr, *save_invstd = nullptr;
  const TensorView *grad_output = nullptr, *grad_input = nullptr, *grad_residual = nullptr;
  const TensorView *grad_weight = nullptr, *grad_bias = nullptr;
};

inline const TensorView* pointer_to(const TensorView& t) { return &t; }
inline const TensorView* pointer_to(const std::optional<TensorView>& t) { return t ? &*t : nullptr; }

// The tensors of a public ...Tensors struct (or a CallTensors), where they are.
template <typename Tensors>
TensorRefs refs_of(const Tensors& from) {
  TensorRefs to{&from.input};
#define FUSEDNORM_POINT(member)                        \
  if constexpr (requires { from.member; }) {           \
    to.member = pointer_to(from.member);               \
  }
  FUSEDNORM_CALL_TENSORS(FUSEDNORM_POINT)
#undef FUSEDNORM_POINT
  return to;
}

}  // namespace fusednorm::detail
