#pragma once
// Where a call runs: the CPU (the default) or a CUDA device (runtime/cuda_norm.cpp, the component cuda). The
// entry points validate, plan and bind the same way for both; a BackendContext supplies what differs: its
// variants, its own limits, scratch memory, how a pointer becomes a Halide buffer, the copy that commits the
// running statistics after the kernel succeeded, and copies to and from the host (SyncBatchNorm's combine, the
// evaluation backward's invstd). A context lives for one call, on the caller's stack.
#include <HalideRuntime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "fusednorm/kinds.h"
#include "runtime/variant.h"

namespace fusednorm::detail {

struct TensorRefs;
struct Geometry;
struct KernelSettings;

class BackendContext {
 public:
  virtual ~BackendContext() = default;
  virtual Backend backend() const = 0;
  // The variants this backend runs, in dispatch order.
  virtual std::span<const KernelVariant> variants() const = 0;
  // The backend's limits beyond the shared checks; throws fusednorm::Error.
  virtual void check(const char* function, Direction direction, const TensorRefs& t, const KernelSettings& s,
                     const Geometry& g) const = 0;
  // Memory for the call where the caller gave none, valid until the context ends: uninitialised, or filled.
  virtual float* scratch(int64_t size) = 0;
  virtual const float* filled(int64_t size, float value) = 0;
  // Points `buffer` (dimensions set) at `data`; returns whether release() must undo it.
  virtual bool attach(halide_buffer_t* buffer, const void* data) = 0;
  virtual void release(halide_buffer_t* buffer) = 0;
  // After the kernel: to[0, n) = from[0, n), ordered after the kernel.
  virtual void commit(float* to, const float* from, int64_t n) = 0;
  // Bytes between host memory and the memory the kernels use (tensors' data, scratch), in order with the kernels:
  // to_host returns once the bytes have arrived, after the kernels queued before it; to_device once `from` may be
  // reused.
  virtual void to_host(void* to, const void* from, int64_t bytes) = 0;
  virtual void to_device(void* to, const void* from, int64_t bytes) = 0;
};

// The CPU: the built-in and registered variants; scratch from a per-thread pool (no allocation once it has grown
// to a call's needs), given back when the context ends (contexts nest).
class CpuContext final : public BackendContext {
 public:
  CpuContext();
  ~CpuContext() override;
  CpuContext(const CpuContext&) = delete;
  CpuContext& operator=(const CpuContext&) = delete;

  Backend backend() const override { return Backend::cpu; }
  std::span<const KernelVariant> variants() const override;
  void check(const char*, Direction, const TensorRefs&, const KernelSettings&, const Geometry&) const override {}
  float* scratch(int64_t size) override;
  const float* filled(int64_t size, float value) override;
  bool attach(halide_buffer_t* buffer, const void* data) override;
  void release(halide_buffer_t*) override {}
  void commit(float* to, const float* from, int64_t n) override;
  void to_host(void* to, const void* from, int64_t bytes) override;
  void to_device(void* to, const void* from, int64_t bytes) override;

 private:
  size_t first_;  // the pool's buffers [first_, ...) are this call's
};

}  // namespace fusednorm::detail
