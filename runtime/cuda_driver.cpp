// The CUDA driver, loaded with dlopen: the build needs no CUDA toolkit, and a program that never calls a CUDA
// entry point never loads it. Halide's CUDA runtime is pointed at the caller's context and stream through its
// hooks (HalideRuntimeCuda.h: halide_set_cuda_acquire_context, _release_context, _get_stream), and keeps the
// device allocations its kernels make for reuse (halide_reuse_device_allocations), so a call allocates nothing
// once the first has run.
#include "runtime/cuda_driver.h"

#include <HalideRuntime.h>
#include <HalideRuntimeCuda.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <bit>

#include <map>
#include <mutex>
#include <vector>

#include "fusednorm/error.h"

namespace fusednorm::detail::cuda {

namespace {

// The driver API's types and the prototypes used here (cuda.h, CUDA 12; stable ABI since CUDA 4).
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
using CUstream = void*;
constexpr CUresult kSuccess = 0;

struct Driver {
  CUresult (*cuInit)(unsigned) = nullptr;
  CUresult (*cuDeviceGetCount)(int*) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*cuCtxGetCurrent)(CUcontext*) = nullptr;
  CUresult (*cuCtxPushCurrent)(CUcontext) = nullptr;
  CUresult (*cuCtxPopCurrent)(CUcontext*) = nullptr;
  CUresult (*cuMemAlloc)(DevicePtr*, size_t) = nullptr;
  CUresult (*cuMemFree)(DevicePtr) = nullptr;
  CUresult (*cuMemcpyDtoDAsync)(DevicePtr, DevicePtr, size_t, CUstream) = nullptr;
  CUresult (*cuMemcpyHtoDAsync)(DevicePtr, const void*, size_t, CUstream) = nullptr;
  CUresult (*cuMemcpyDtoHAsync)(void*, DevicePtr, size_t, CUstream) = nullptr;
  CUresult (*cuMemsetD32Async)(DevicePtr, unsigned, size_t, CUstream) = nullptr;
  CUresult (*cuStreamSynchronize)(CUstream) = nullptr;
  CUresult (*cuGetErrorName)(CUresult, const char**) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char**) = nullptr;
  std::string failure;  // empty when loaded, a device is present, and the calls above resolved
};

template <typename F>
bool resolve(void* library, const char* name, F& function) {
  function = reinterpret_cast<F>(dlsym(library, name));
  return function != nullptr;
}

const Driver& driver() {
  static const Driver loaded = [] {
    Driver d;
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!library) {
      const char* why = dlerror();
      d.failure = fmt::format("libcuda.so.1 (the CUDA driver) does not load: {}", why ? why : "no reason given");
      return d;
    }
    bool ok = resolve(library, "cuInit", d.cuInit) && resolve(library, "cuDeviceGetCount", d.cuDeviceGetCount) &&
              resolve(library, "cuDeviceGet", d.cuDeviceGet) &&
              resolve(library, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain) &&
              resolve(library, "cuCtxGetCurrent", d.cuCtxGetCurrent) &&
              resolve(library, "cuCtxPushCurrent_v2", d.cuCtxPushCurrent) &&
              resolve(library, "cuCtxPopCurrent_v2", d.cuCtxPopCurrent) &&
              resolve(library, "cuMemAlloc_v2", d.cuMemAlloc) && resolve(library, "cuMemFree_v2", d.cuMemFree) &&
              resolve(library, "cuMemcpyDtoDAsync_v2", d.cuMemcpyDtoDAsync) &&
              resolve(library, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync) &&
              resolve(library, "cuMemcpyDtoHAsync_v2", d.cuMemcpyDtoHAsync) &&
              resolve(library, "cuMemsetD32Async", d.cuMemsetD32Async) &&
              resolve(library, "cuStreamSynchronize", d.cuStreamSynchronize) &&
              resolve(library, "cuGetErrorName", d.cuGetErrorName) &&
              resolve(library, "cuGetErrorString", d.cuGetErrorString);
    if (!ok) {
      d.failure = "libcuda.so.1 lacks a driver API function FusedNorm uses (a driver older than CUDA 4?)";
      return d;
    }
    int count = 0;
    if (CUresult r = d.cuInit(0); r != kSuccess) {
      const char* name = nullptr;
      d.cuGetErrorName(r, &name);
      d.failure = fmt::format("cuInit failed: {} (no usable CUDA device or driver)",
                              name ? std::string(name) : fmt::format("CUresult {}", r));
    } else if (CUresult r2 = d.cuDeviceGetCount(&count); r2 != kSuccess || count == 0) {
      d.failure = "the CUDA driver reports no device (cuDeviceGetCount is 0)";
    }
    return d;
  }();
  return loaded;
}

std::string describe(CUresult result) {
  const Driver& d = driver();
  const char *name = nullptr, *text = nullptr;
  if (d.cuGetErrorName) d.cuGetErrorName(result, &name);
  if (d.cuGetErrorString) d.cuGetErrorString(result, &text);
  return fmt::format("{} ({})", name ? name : fmt::format("CUresult {}", result), text ? text : "no description");
}

void check(const char* function, const char* call, CUresult result) {
  if (result != kSuccess) throw Error(fmt::format("{}: {} failed: {}", function, call, describe(result)), Error::Kind::device);
}

// What Halide's hooks hand out on this thread, set by CallScope.
thread_local CUcontext current_context = nullptr;
thread_local CUstream current_stream = nullptr;

// Outside a call (Halide's exit-time cleanup asks with create = false) there is no context to give: none, and no
// error, so the cleanup leaves the caller's context alone.
int acquire_context(void* /*user_context*/, void** context, bool create) {
  *context = current_context;
  return current_context || !create ? 0 : halide_error_code_device_interface_no_device;
}
int release_context(void* /*user_context*/) { return 0; }
int get_stream(void* /*user_context*/, void* /*context*/, void** stream) {
  *stream = current_stream;
  return 0;
}

void install_halide_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    halide_set_cuda_acquire_context(acquire_context);
    halide_set_cuda_release_context(release_context);
    halide_set_cuda_get_stream(get_stream);
    // Halide's free list keys each allocation by context and stream: intermediate buffers are reused by the next
    // call on the same stream, and freeing one needs no synchronization.
    halide_reuse_device_allocations(nullptr, true);
  });
}

// The context of this thread's call: the current one (PyTorch's and the CUDA runtime's primary context once they
// have touched the device on this thread), or device 0's primary context.
CUcontext call_context(const char* function) {
  const Driver& d = driver();
  CUcontext context = nullptr;
  check(function, "cuCtxGetCurrent", d.cuCtxGetCurrent(&context));
  if (context) return context;
  static std::mutex mutex;
  static CUcontext primary = nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (!primary) {
    CUdevice device = 0;
    check(function, "cuDeviceGet", d.cuDeviceGet(&device, 0));
    check(function, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&primary, device));
  }
  return primary;
}

// Per thread and stream: the device buffers of DeviceScratch, [0, used) in use.
struct Pool {
  struct Buffer {
    DevicePtr pointer = 0;
    int64_t floats = 0;
  };
  std::vector<Buffer> buffers;
  size_t used = 0;
};
Pool& pool_for(const void* stream) {
  thread_local std::map<std::pair<CUcontext, const void*>, Pool> pools;
  return pools[{current_context, stream}];
}

}  // namespace

ContextGuard::ContextGuard(const char* function) : function_(function) {
  check(function_, "cuCtxPushCurrent", driver().cuCtxPushCurrent(current_context));
}
ContextGuard::~ContextGuard() {
  CUcontext popped = nullptr;
  driver().cuCtxPopCurrent(&popped);
}

bool driver_available(std::string* reason) {
  const Driver& d = driver();
  if (reason) *reason = d.failure;
  return d.failure.empty();
}

CallScope::CallScope(const char* function, void* stream)
    : function_(function), stream_(stream), previous_context_(current_context), previous_stream_(current_stream) {
  std::string reason;
  if (!driver_available(&reason)) {
    throw Error(fmt::format("{}: CUDA is not available: {}", function, reason), Error::Kind::device);
  }
  install_halide_hooks();
  current_context = call_context(function);
  current_stream = stream;
}

CallScope::~CallScope() {
  current_context = previous_context_;
  current_stream = previous_stream_;
}

DeviceScratch::DeviceScratch(const CallScope& scope) : scope_(scope), first_(pool_for(scope.stream()).used) {}
DeviceScratch::~DeviceScratch() { pool_for(scope_.stream()).used = first_; }

DevicePtr DeviceScratch::take(int64_t floats) {
  Pool& p = pool_for(scope_.stream());
  if (p.used == p.buffers.size()) p.buffers.emplace_back();
  Pool::Buffer& buffer = p.buffers[p.used++];
  if (buffer.floats < floats) {
    ContextGuard guard(scope_.function());
    // The stream's earlier work may still read the old buffer: cuMemFree waits for the device.
    if (buffer.pointer) driver().cuMemFree(buffer.pointer);
    buffer = {};
    check(scope_.function(), "cuMemAlloc",
          driver().cuMemAlloc(&buffer.pointer, static_cast<size_t>(floats) * sizeof(float)));
    buffer.floats = floats;
  }
  return buffer.pointer;
}

DevicePtr DeviceScratch::filled(int64_t floats, float value) {
  DevicePtr pointer = take(floats);
  ContextGuard guard(scope_.function());
  check(scope_.function(), "cuMemsetD32Async",
        driver().cuMemsetD32Async(pointer, std::bit_cast<unsigned>(value), static_cast<size_t>(floats),
                                  scope_.stream()));
  return pointer;
}

void copy_floats(const CallScope& scope, DevicePtr to, DevicePtr from, int64_t floats) {
  ContextGuard guard(scope.function());
  check(scope.function(), "cuMemcpyDtoDAsync",
        driver().cuMemcpyDtoDAsync(to, from, static_cast<size_t>(floats) * sizeof(float), scope.stream()));
}

void copy_to_device(const CallScope& scope, DevicePtr to, const void* from, size_t bytes) {
  ContextGuard guard(scope.function());
  check(scope.function(), "cuMemcpyHtoDAsync", driver().cuMemcpyHtoDAsync(to, from, bytes, scope.stream()));
}

void copy_to_host(const CallScope& scope, void* to, DevicePtr from, size_t bytes) {
  ContextGuard guard(scope.function());
  check(scope.function(), "cuMemcpyDtoHAsync", driver().cuMemcpyDtoHAsync(to, from, bytes, scope.stream()));
}

void synchronize(const char* function, void* stream) {
  CallScope scope(function, stream);
  ContextGuard guard(function);
  check(function, "cuStreamSynchronize", driver().cuStreamSynchronize(stream));
}

}  // namespace fusednorm::detail::cuda
