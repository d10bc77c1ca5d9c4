#include "runtime/halide_call.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <mutex>

#include "fusednorm/error.h"

namespace fusednorm::detail {

namespace {
// Halide reports errors through one process-wide handler; the text is kept per thread until the failing
// call returns its error code, so concurrent calls on other threads do not mix their messages.
thread_local std::string halide_error_text;

void capture_halide_error(void* /*user_context*/, const char* message) {
  if (!halide_error_text.empty()) halide_error_text += "; ";
  halide_error_text += message;
  while (!halide_error_text.empty() && halide_error_text.back() == '\n') halide_error_text.pop_back();
}

void install_error_handler() {
  static std::once_flag once;
  std::call_once(once, [] { halide_set_error_handler(capture_halide_error); });
}
}  // namespace

HalideTensor::HalideTensor(const float* data, std::initializer_list<std::pair<int64_t, int64_t>> dims) {
  if (dims.size() > std::size(dims_)) std::abort();  // a programming error in the runtime, not a caller's
  int d = 0;
  for (auto [extent, stride] : dims) {
    // Callers validate extents and strides against int32 before building views.
    dims_[d].min = 0;
    dims_[d].extent = static_cast<int32_t>(extent);
    dims_[d].stride = static_cast<int32_t>(stride);
    dims_[d].flags = 0;
    d++;
  }
  buffer_.host = reinterpret_cast<uint8_t*>(const_cast<float*>(data));
  buffer_.type = halide_type_t(halide_type_float, 32, 1);
  buffer_.dimensions = d;
  buffer_.dim = dims_;
}

HalideTensor::HalideTensor(HalideTensor&& other) noexcept : buffer_(other.buffer_) {
  std::copy(std::begin(other.dims_), std::end(other.dims_), std::begin(dims_));
  buffer_.dim = dims_;
}

void KernelArgs::call(const KernelVariant& variant, const char* function) const {
  if (std::optional<KernelFailure> failure = try_call(variant, function)) throw Error(failure->message);
}

std::optional<KernelFailure> KernelArgs::try_call(const KernelVariant& variant, const char* function) const {
  install_error_handler();
  const halide_filter_metadata_t* metadata = variant.metadata();
  std::vector<void*> argv(static_cast<size_t>(metadata->num_arguments), nullptr);
  for (int i = 0; i < metadata->num_arguments; i++) {
    const std::string name = metadata->arguments[i].name;
    for (const auto& [bound_name, pointer] : args_) {
      if (bound_name == name) argv[static_cast<size_t>(i)] = pointer;
    }
    if (!argv[static_cast<size_t>(i)]) {
      throw Error(fmt::format("{}: internal error: argument '{}' of kernel {} was not bound", function, name,
                              variant.name));
    }
  }
  halide_error_text.clear();
  int result = variant.call_argv(argv.data());
  if (result != 0) {
    std::string text = std::move(halide_error_text);
    halide_error_text.clear();
    return KernelFailure{result, fmt::format("{}: kernel {} failed (Halide error {}): {}", function, variant.name,
                                             result, text.empty() ? "no message" : text)};
  }
  return std::nullopt;
}

}  // namespace fusednorm::detail
