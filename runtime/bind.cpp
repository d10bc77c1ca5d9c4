#include "runtime/bind.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <utility>

#include "fusednorm/error.h"
#include "runtime/backend.h"

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

// The kernels' argument names (generators/normalization_generators.cpp) and their slots.
constexpr std::pair<std::string_view, Arg> kArgumentNames[] = {
    {"x", Arg::x},
    {"y", Arg::y},
    {"z", Arg::z},
    {"dy", Arg::dy},
    {"dx", Arg::dx},
    {"dz", Arg::dz},
    {"weight", Arg::weight},
    {"bias", Arg::bias},
    {"running_mean", Arg::running_mean},
    {"running_var", Arg::running_var},
    {"mean", Arg::mean},
    {"invstd", Arg::invstd},
    {"saved_statistics.0", Arg::saved_mean},
    {"saved_statistics.1", Arg::saved_invstd},
    {"saved_statistics", Arg::saved_invstd},  // RMSNorm saves invstd alone
    {"running_statistics.0", Arg::new_running_mean},
    {"running_statistics.1", Arg::new_running_var},
    {"param_grads.0", Arg::grad_weight},
    {"param_grads.1", Arg::grad_bias},
    {"param_grads", Arg::grad_weight},  // RMSNorm has weight alone
    {"partial_statistics.0", Arg::partial_shift},
    {"partial_statistics.1", Arg::partial_mean},
    {"partial_statistics.2", Arg::partial_var},
    {"h_mean", Arg::h_mean},
    {"h_xhat_mean", Arg::h_xhat_mean},
    {"eps", Arg::eps},
    {"groups", Arg::groups},
    {"momentum", Arg::momentum},
    {"running_var_correction", Arg::running_var_correction},
    {"training", Arg::training},
};

// The per-thread pool of the CPU's scratch: buffers [0, used) are in use; moving a vector keeps its data.
struct ScratchPool {
  std::vector<std::vector<float>> buffers;
  size_t used = 0;
};
ScratchPool& pool() {
  thread_local ScratchPool p;
  return p;
}

}  // namespace

ArgumentOrder argument_order(const KernelVariant& variant) {
  const halide_filter_metadata_t* metadata = variant.metadata();
  ArgumentOrder order;
  if (metadata->num_arguments > static_cast<int>(kArgCount)) {
    throw Error(fmt::format("internal error: kernel {} has {} arguments, more than the {} this runtime binds",
                            variant.name, metadata->num_arguments, kArgCount));
  }
  for (int i = 0; i < metadata->num_arguments; i++) {
    const std::string_view name = metadata->arguments[i].name;
    const auto* found = std::find_if(std::begin(kArgumentNames), std::end(kArgumentNames),
                                     [&](const auto& entry) { return entry.first == name; });
    if (found == std::end(kArgumentNames)) {
      throw Error(fmt::format("internal error: kernel {} has an argument '{}' this runtime does not know",
                              variant.name, name));
    }
    order.slots[static_cast<size_t>(i)] = found->second;
  }
  order.count = metadata->num_arguments;
  return order;
}

Binder::~Binder() {
  for (size_t a = 0; a < kArgCount; a++) {
    if (wrapped_[a]) backend_.release(&buffers_[a]);
  }
}

void Binder::tensor(Arg arg, const void* data, DType dtype, std::span<const Dim> dims) {
  const auto a = static_cast<size_t>(arg);
  if (wrapped_[a]) {  // bound twice: the first binding is replaced
    backend_.release(&buffers_[a]);
    wrapped_[a] = false;
  }
  halide_buffer_t& buffer = buffers_[a];
  buffer = {};
  if (dims.size() > dims_[a].size()) std::abort();  // a programming error in the runtime, not a caller's
  int d = 0;
  for (const Dim& dim : dims) {
    dims_[a][static_cast<size_t>(d++)] = {0, static_cast<int32_t>(dim.extent), static_cast<int32_t>(dim.stride), 0};
  }
  switch (dtype) {
    case DType::float32: buffer.type = halide_type_t(halide_type_float, 32, 1); break;
    case DType::float16: buffer.type = halide_type_t(halide_type_float, 16, 1); break;
    case DType::bfloat16: buffer.type = halide_type_t(halide_type_bfloat, 16, 1); break;
  }
  buffer.dimensions = d;
  buffer.dim = dims_[a].data();
  wrapped_[a] = backend_.attach(&buffer, data);
  slots_[a] = &buffer;
}

Binder::Scalar& Binder::set_scalar(Arg arg) {
  const auto a = static_cast<size_t>(arg);
  slots_[a] = &scalars_[a];
  return scalars_[a];
}

std::optional<KernelFailure> Binder::try_call(const KernelVariant& variant, const ArgumentOrder& order,
                                              const char* function) {
  static std::once_flag handler_installed;
  std::call_once(handler_installed, [] {
    halide_set_error_handler(capture_halide_error);
    install_kernel_memory();
  });
  std::array<void*, kArgCount> argv{};
  for (int i = 0; i < order.count; i++) {
    const Arg slot = order.slots[static_cast<size_t>(i)];
    argv[static_cast<size_t>(i)] = slots_[static_cast<size_t>(slot)];
    if (!argv[static_cast<size_t>(i)]) {
      throw Error(fmt::format("{}: internal error: argument '{}' of kernel {} was not bound", function,
                              variant.metadata()->arguments[i].name, variant.name));
    }
  }
  halide_error_text.clear();
  const int result = variant.call_argv(argv.data());
  if (result == 0) return std::nullopt;
  std::string text = std::move(halide_error_text);
  halide_error_text.clear();
  return KernelFailure{result, fmt::format("{}: kernel {} failed (Halide error {}): {}", function, variant.name,
                                           result, text.empty() ? "no message" : text)};
}

CpuContext::CpuContext() : first_(pool().used) {}
CpuContext::~CpuContext() { pool().used = first_; }

float* CpuContext::scratch(int64_t size) {
  ScratchPool& p = pool();
  if (p.used == p.buffers.size()) p.buffers.emplace_back();
  std::vector<float>& buffer = p.buffers[p.used++];
  if (buffer.size() < static_cast<size_t>(size)) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

const float* CpuContext::filled(int64_t size, float value) {
  float* data = scratch(size);
  std::fill_n(data, size, value);
  return data;
}

bool CpuContext::attach(halide_buffer_t* buffer, const void* data) {
  buffer->host = static_cast<uint8_t*>(const_cast<void*>(data));
  return false;
}

void CpuContext::commit(float* to, const float* from, int64_t n) { std::copy_n(from, n, to); }
void CpuContext::to_host(void* to, const void* from, int64_t bytes) {
  std::memcpy(to, from, static_cast<size_t>(bytes));
}
void CpuContext::to_device(void* to, const void* from, int64_t bytes) {
  std::memcpy(to, from, static_cast<size_t>(bytes));
}

}  // namespace fusednorm::detail
