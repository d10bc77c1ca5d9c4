// A build without CUDA kernels (FUSEDNORM_CUDA=OFF): the CUDA entry points say so (runtime/cuda_norm.cpp checks
// cuda::available() before opening a scope), and nothing here loads the driver.
#include <fmt/format.h>

#include "fusednorm/error.h"
#include "runtime/cuda_driver.h"

namespace fusednorm::detail::cuda {

namespace {
[[noreturn]] void unavailable(const char* function) {
  throw Error(fmt::format("{}: this build has no CUDA kernels (configure with -DFUSEDNORM_CUDA=ON)", function),
              Error::Kind::device);
}
}  // namespace

bool driver_available(std::string* reason) {
  if (reason) *reason = "this build has no CUDA kernels (configure with -DFUSEDNORM_CUDA=ON)";
  return false;
}
CallScope::CallScope(const char* function, void* stream)
    : function_(function), stream_(stream), previous_context_(nullptr), previous_stream_(nullptr) {
  unavailable(function);
}
CallScope::~CallScope() = default;
DeviceScratch::DeviceScratch(const CallScope& scope) : scope_(scope), first_(0) { unavailable(scope.function()); }
DeviceScratch::~DeviceScratch() = default;
DevicePtr DeviceScratch::take(int64_t) { unavailable(scope_.function()); }
DevicePtr DeviceScratch::filled(int64_t, float) { unavailable(scope_.function()); }
void copy_floats(const CallScope& scope, DevicePtr, DevicePtr, int64_t) { unavailable(scope.function()); }
void copy_to_device(const CallScope& scope, DevicePtr, const void*, size_t) { unavailable(scope.function()); }
void copy_to_host(const CallScope& scope, void*, DevicePtr, size_t) { unavailable(scope.function()); }
void synchronize(const char* function, void*) { unavailable(function); }
ContextGuard::ContextGuard(const char* function) : function_(function) { unavailable(function); }
ContextGuard::~ContextGuard() = default;

}  // namespace fusednorm::detail::cuda
