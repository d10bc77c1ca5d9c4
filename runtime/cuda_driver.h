#pragma once
// The few CUDA driver calls the runtime makes itself, from libcuda.so.1 loaded at the first use (no CUDA toolkit
// at build time), and the hooks that make Halide's CUDA runtime use the caller's context and stream.
#include <cstddef>
#include <cstdint>
#include <string>

namespace fusednorm::detail::cuda {

using DevicePtr = uint64_t;

// Whether libcuda.so.1 loads, cuInit succeeds and a device is present; otherwise `reason` says what failed.
bool driver_available(std::string* reason);

// For the duration of one API call on this thread: the context current on the thread (device 0's primary
// context when none is), made Halide's, and the caller's stream. Throws fusednorm::Error (prefixed by
// `function`) when the driver is unavailable.
class CallScope {
 public:
  CallScope(const char* function, void* stream);
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
  void* stream() const { return stream_; }
  const char* function() const { return function_; }

 private:
  const char* function_;
  void* stream_;
  void* previous_context_;
  void* previous_stream_;
};

// Device memory for arguments the caller did not give (scratch statistics, zeros), reused across calls of the
// same thread and stream; the pool grows to the largest call and is kept. Each take() is valid until the
// DeviceScratch that made it ends.
class DeviceScratch {
 public:
  explicit DeviceScratch(const CallScope& scope);
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  DevicePtr take(int64_t floats);
  DevicePtr filled(int64_t floats, float value);  // filled on the stream

 private:
  const CallScope& scope_;
  size_t first_;
};

// Stream-ordered copies (floats between device buffers; bytes to and from host memory), and waiting for a stream;
// errors throw with the driver's message.
void copy_floats(const CallScope& scope, DevicePtr to, DevicePtr from, int64_t floats);
void copy_to_device(const CallScope& scope, DevicePtr to, const void* from, size_t bytes);
void copy_to_host(const CallScope& scope, void* to, DevicePtr from, size_t bytes);
void synchronize(const char* function, void* stream);

// The scope's context current on this thread while this lives, for libraries that use the current context (NCCL).
class ContextGuard {
 public:
  explicit ContextGuard(const char* function);
  ~ContextGuard();
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  const char* function_;
};

}  // namespace fusednorm::detail::cuda
