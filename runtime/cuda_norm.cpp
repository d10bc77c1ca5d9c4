// The fusednorm::cuda entry points (include/fusednorm/cuda.h), the library's component cuda: the functional
// entry points of runtime/functional.h on a CudaContext, which opens the caller's context and stream for Halide,
// offers the CUDA variants to the plan, and wraps each tensor's device pointer as a Halide buffer with no host
// memory (halide_cuda_wrap_device_ptr), so Halide copies nothing.
#include <HalideRuntime.h>
#include <fmt/format.h>

#include <iterator>
#include <limits>

#include "fusednorm/cuda.h"
#include "fusednorm/error.h"
#include "runtime/backend.h"
#include "runtime/cuda_driver.h"
#include "runtime/functional.h"
#include "runtime/norm_kernels.h"
#include "runtime/sync_batch_norm.h"
#if FUSEDNORM_HAS_CUDA
#include <HalideRuntimeCuda.h>

#include "fusednorm_cuda_variant_table.h"
#endif

namespace fusednorm {

namespace detail {

namespace {

#if FUSEDNORM_HAS_CUDA
constexpr std::span<const KernelVariant> kCuda(kCudaVariants);
#else
constexpr std::span<const KernelVariant> kCuda;
#endif

// One CUDA call: the caller's context and stream, and device scratch reused across calls.
class CudaContext final : public BackendContext {
 public:
  CudaContext(const char* function, void* stream) : scope_(function, stream), scratch_(scope_) {}

  Backend backend() const override { return Backend::cuda; }
  std::span<const KernelVariant> variants() const override { return kCuda; }

  // What the CUDA kernels require beyond the shared checks: float32, and tensors the flat int32 index of the
  // elementwise kernels and their grid cover. (Weight and bias may be absent: the kernels are built
  // affine only, and dispatch gives them 1 and 0 from the device pool.)
  void check(const char* function, Direction, const TensorRefs& t, const KernelSettings&,
             const Geometry& g) const override {
    if (t.input->dtype() != DType::float32) {
      throw Error(fmt::format("{}: input has dtype {}, expected float32 on CUDA: the CUDA kernels are float32 only "
                              "(docs/CUDA.md)",
                              function, name(t.input->dtype())));
    }
    constexpr int64_t kMaxElements = std::numeric_limits<int32_t>::max();
    if (g.elements() > kMaxElements) {
      throw Error(fmt::format("{}: input has shape {} ({} elements), expected fewer than 2^31 elements on CUDA",
                              function, g.shape(), g.elements()));
    }
    // The elementwise kernels' grid (generators/schedule_gpu.h): its y and z axes take at most 65535 blocks.
    constexpr int64_t kMaxGrid = 65535, kTile = 32;
    const int64_t inner = g.layout == Layout::nhwc ? g.channels : g.spatial;
    if (!g.rows && g.batch > kMaxGrid) {
      throw Error(fmt::format("{}: input has shape {}: N is {}, expected at most {} on CUDA", function, g.shape(),
                              g.batch, kMaxGrid));
    }
    if ((inner + kTile - 1) / kTile > kMaxGrid) {
      throw Error(fmt::format("{}: input has shape {}: its innermost extent {} exceeds {} on CUDA", function,
                              g.shape(), inner, kMaxGrid * kTile));
    }
  }

  float* scratch(int64_t size) override { return reinterpret_cast<float*>(scratch_.take(size)); }
  const float* filled(int64_t size, float value) override {
    return reinterpret_cast<const float*>(scratch_.filled(size, value));
  }
  bool attach(halide_buffer_t* buffer, const void* data) override {
#if FUSEDNORM_HAS_CUDA
    buffer->host = nullptr;
    if (halide_cuda_wrap_device_ptr(nullptr, buffer, reinterpret_cast<uint64_t>(data)) != 0) {
      throw Error(fmt::format("{}: halide_cuda_wrap_device_ptr failed", scope_.function()), Error::Kind::device);
    }
    return true;
#else
    (void)buffer;
    (void)data;
    return false;
#endif
  }
  void release(halide_buffer_t* buffer) override {
#if FUSEDNORM_HAS_CUDA
    halide_cuda_detach_device_ptr(nullptr, buffer);
#else
    (void)buffer;
#endif
  }
  // Queued after the kernels on the same stream: the caller's running statistics change only if they ran.
  void commit(float* to, const float* from, int64_t n) override {
    cuda::copy_floats(scope_, reinterpret_cast<cuda::DevicePtr>(to), reinterpret_cast<cuda::DevicePtr>(from), n);
  }
  // Queued after the kernels; the host waits for the stream (SyncBatchNorm's statistics, as PyTorch's do, and the
  // running variance of the evaluation backward).
  void to_host(void* to, const void* from, int64_t bytes) override {
    cuda::copy_to_host(scope_, to, reinterpret_cast<cuda::DevicePtr>(from), static_cast<size_t>(bytes));
    cuda::synchronize(scope_.function(), scope_.stream());
  }
  void to_device(void* to, const void* from, int64_t bytes) override {
    cuda::copy_to_device(scope_, reinterpret_cast<cuda::DevicePtr>(to), from, static_cast<size_t>(bytes));
  }

 private:
  cuda::CallScope scope_;
  cuda::DeviceScratch scratch_;
};

}  // namespace

}  // namespace detail

namespace cuda {

bool available(std::string* reason) {
#if FUSEDNORM_HAS_CUDA
  return detail::cuda::driver_available(reason);
#else
  if (reason) *reason = "this build has no CUDA kernels (configure with -DFUSEDNORM_CUDA=ON)";
  return false;
#endif
}

std::vector<VariantInfo> variants() {
  std::vector<VariantInfo> result;
  for (const detail::KernelVariant& v : detail::kCuda) {
    result.push_back({v.name, detail::to_string(v.norm), detail::to_string(v.direction), name(v.layout),
                      name(v.epilogue), v.affine, name(v.dtype), detail::to_string(v.isa), v.schedule, available()});
  }
  return result;
}

namespace {
// Runs a functional entry point on the CUDA backend: its checks, the CUDA plan and kernels.
template <typename Call>
void on_cuda(const char* function, Stream stream, const Call& call) {
  if (std::string reason; !available(&reason)) {
    throw Error(fmt::format("{}: CUDA is not available: {}", function, reason), Error::Kind::device);
  }
  detail::CudaContext context(function, stream);
  call(context);
}
template <typename Tensors, typename Options>
void run(const char* function, void (*entry)(const Tensors&, const Options&, detail::BackendContext&),
         const Tensors& t, const Options& o, Stream stream) {
  on_cuda(function, stream, [&](detail::BackendContext& context) { entry(t, o, context); });
}
}  // namespace

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& o, Stream stream) {
  run("batch_norm", &detail::batch_norm_forward, t, o, stream);
}
void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& o, Stream stream) {
  run("batch_norm", &detail::batch_norm_backward, t, o, stream);
}
void group_norm_forward(const GroupNormForwardTensors& t, const GroupNormOptions& o, Stream stream) {
  run("group_norm", &detail::group_norm_forward, t, o, stream);
}
void group_norm_backward(const GroupNormBackwardTensors& t, const GroupNormOptions& o, Stream stream) {
  run("group_norm", &detail::group_norm_backward, t, o, stream);
}
void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& o, Stream stream) {
  run("layer_norm", &detail::layer_norm_forward, t, o, stream);
}
void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& o, Stream stream) {
  run("layer_norm", &detail::layer_norm_backward, t, o, stream);
}
void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& o, Stream stream) {
  run("rms_norm", &detail::rms_norm_forward, t, o, stream);
}
void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& o, Stream stream) {
  run("rms_norm", &detail::rms_norm_backward, t, o, stream);
}

void sync_batch_norm_forward(const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& o,
                             Stream stream) {
  on_cuda("sync_batch_norm", stream,
          [&](detail::BackendContext& context) { detail::sync_batch_norm_forward(t, group, o, context); });
}
void sync_batch_norm_backward(const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& o,
                              Stream stream) {
  on_cuda("sync_batch_norm", stream,
          [&](detail::BackendContext& context) { detail::sync_batch_norm_backward(t, group, o, context); });
}

void synchronize(Stream stream) {
  if (!available()) return;
  detail::cuda::synchronize("cuda::synchronize", stream);
}

}  // namespace cuda
}  // namespace fusednorm
