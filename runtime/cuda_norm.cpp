// The fusednorm::cuda entry points (include/fusednorm/cuda.h), the library's component cuda. Each opens a
// cuda::CallScope (the caller's context and stream for Halide) and a DeviceRunnerScope, and calls the CPU entry
// point of the same name: the same checks and messages, the same settings (momentum, the running variance's
// correction, num_batches_tracked), one home for each. The CPU path's run_* hand the call here
// (runtime/norm_kernels.cpp), where the tensors are device pointers: each is
// wrapped as a Halide buffer with no host memory (halide_cuda_wrap_device_ptr), so Halide copies nothing.
#include <HalideRuntime.h>
#include <fmt/format.h>

#include <deque>
#include <iterator>
#include <limits>

#include "fusednorm/cuda.h"
#include "fusednorm/error.h"
#include "runtime/cuda_driver.h"
#include "runtime/dispatch.h"
#include "runtime/halide_call.h"
#include "runtime/norm_kernels.h"
#if FUSEDNORM_HAS_CUDA
#include <HalideRuntimeCuda.h>

#include "fusednorm_cuda_variant_table.h"
#endif

namespace fusednorm {

namespace detail {

namespace {

#if FUSEDNORM_HAS_CUDA
constexpr const KernelVariant* kCuda = std::begin(kCudaVariants);
constexpr size_t kCudaCount = std::size(kCudaVariants);
#else
constexpr const KernelVariant* kCuda = nullptr;
constexpr size_t kCudaCount = 0;
#endif

std::string describe(const VariantRequest& r) {
  return fmt::format("{} {} {} epilogue {}", to_string(r.norm), to_string(r.direction), to_string(r.layout),
                     to_string(r.epilogue));
}

const KernelVariant& select_cuda_variant(const VariantRequest& r) {
  for (size_t i = 0; i < kCudaCount; i++) {
    const KernelVariant& v = kCuda[i];
    if (v.norm == r.norm && v.direction == r.direction && v.layout == r.layout && v.epilogue == r.epilogue) return v;
  }
  if (kCudaCount == 0) {
    throw Error(fmt::format("{}: this build has no CUDA kernels (configure with -DFUSEDNORM_CUDA=ON)", r.function));
  }
  throw Error(
      fmt::format("{}: no CUDA kernel for {} in this build (docs/CUDA.md lists them)", r.function, describe(r)));
}

// A Halide buffer over device memory the caller owns: the dimensions of the CPU view, no host pointer, the device
// pointer wrapped (and detached when the call ends; the memory stays the caller's).
class DeviceTensor {
 public:
  DeviceTensor(HalideTensor&& layout_of, const float* device) {
    buffer_ = *layout_of.get();
    for (int d = 0; d < buffer_.dimensions; d++) dims_[d] = layout_of.get()->dim[d];
    buffer_.dim = dims_;
    buffer_.host = nullptr;
    buffer_.flags = 0;
    wrapped_ = halide_cuda_wrap(&buffer_, reinterpret_cast<uint64_t>(device));
  }
  ~DeviceTensor() {
    if (wrapped_) halide_cuda_detach(&buffer_);
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  halide_buffer_t* get() { return &buffer_; }

 private:
  static bool halide_cuda_wrap(halide_buffer_t* buffer, uint64_t pointer) {
#if FUSEDNORM_HAS_CUDA
    return halide_cuda_wrap_device_ptr(nullptr, buffer, pointer) == 0;
#else
    (void)buffer;
    (void)pointer;
    return false;
#endif
  }
  static void halide_cuda_detach(halide_buffer_t* buffer) {
#if FUSEDNORM_HAS_CUDA
    halide_cuda_detach_device_ptr(nullptr, buffer);
#else
    (void)buffer;
#endif
  }
  halide_dimension_t dims_[3] = {};
  halide_buffer_t buffer_ = {};
  bool wrapped_ = false;
};

// The buffers and scratch of one call; kept until the kernel has been called.
struct DeviceCall {
  const cuda::CallScope& scope;
  cuda::DeviceScratch scratch;
  std::deque<DeviceTensor> tensors;
  KernelArgs args;

  explicit DeviceCall(const cuda::CallScope& s) : scope(s), scratch(s) {}
  const float* pointer(cuda::DevicePtr p) { return reinterpret_cast<const float*>(p); }
  void bind(const char* name, HalideTensor&& layout, const float* device) {
    args.bind(name, tensors.emplace_back(std::move(layout), device).get());
  }
  void bind_tensor(const char* name, const Geometry& g, const float* device) { bind(name, g.view(device), device); }
  void bind_vector(const char* name, const float* device, int64_t size) {
    bind(name, HalideTensor(device, {{size, 1}}), device);
  }
  void bind_statistics(const char* name, const float* device, int64_t groups, int64_t blocks) {
    bind(name, HalideTensor(device, {{groups, 1}, {blocks, groups}}), device);
  }
  const float* data_or_scratch(const std::optional<TensorView>& t, int64_t size) {
    return t ? t->data() : pointer(scratch.take(size));
  }
};

const cuda::CallScope& scope_of(const char* function) {
  const cuda::CallScope* scope = cuda::active_scope();
  if (!scope) throw Error(fmt::format("{}: internal error: a CUDA run outside a CUDA call", function));
  return *scope;
}

// What the CUDA kernels require beyond the shared checks: weight and bias (built affine only) and tensors the
// flat int32 index of the elementwise kernels covers.
void check_cuda_call(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g,
                     bool needs_bias) {
  constexpr int64_t kMaxElements = std::numeric_limits<int32_t>::max();
  if (g.batch * g.channels * g.spatial > kMaxElements) {
    throw Error(fmt::format("{}: input has shape {} ({} elements), expected fewer than 2^31 elements on CUDA", function,
                            g.shape, g.batch * g.channels * g.spatial));
  }
  // The elementwise kernels' grid (generators/schedule_gpu.h): its y and z axes take at most 65535 blocks.
  constexpr int64_t kMaxGrid = 65535, kTile = 32;
  const int64_t inner = g.layout == Layout::nhwc ? g.channels : g.spatial;
  if (!g.rows && g.batch > kMaxGrid) {
    throw Error(fmt::format("{}: input has shape {}: N is {}, expected at most {} on CUDA", function, g.shape, g.batch,
                            kMaxGrid));
  }
  if ((inner + kTile - 1) / kTile > kMaxGrid) {
    throw Error(fmt::format("{}: input has shape {}: its innermost extent {} exceeds {} on CUDA", function, g.shape,
                            inner, kMaxGrid * kTile));
  }
  const char* parameters = s.norm == Norm::rms ? "weight" : "weight and bias";
  if (!t.weight || (needs_bias && s.norm != Norm::rms && !t.bias)) {
    throw Error(
        fmt::format("{}: {} is absent, expected {} on CUDA (the CUDA kernels are built affine only; pass "
                    "ones and zeros for none)",
                    function, !t.weight ? "weight" : "bias", parameters));
  }
}

void bind_common(DeviceCall& call, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  call.bind_tensor("x", g, t.input.data());
  if (t.residual) call.bind_tensor("z", g, t.residual->data());
  if (t.grad_residual) call.bind_tensor("dz", g, t.grad_residual->data());
  call.args.bind_scalar("eps", static_cast<float>(s.eps));
  call.args.bind_scalar("groups", static_cast<int32_t>(s.groups));
  call.bind_vector("weight", t.weight->data(), g.parameters());
  if (t.bias) call.bind_vector("bias", t.bias->data(), g.parameters());
}

}  // namespace

void run_cuda_forward_training(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  check_cuda_call(function, t, s, g, true);
  const KernelVariant& variant =
      select_cuda_variant({function, Direction::forward_training, g.layout, true, s.norm, s.epilogue});
  const StatisticsShape stats = statistics_shape(s, g);
  const int64_t channels = g.channels;
  DeviceCall call(scope_of(function));
  bind_common(call, t, s, g);
  call.bind_tensor("y", g, t.output->data());
  const float* invstd = call.data_or_scratch(t.save_invstd, stats.count());
  if (s.norm == Norm::rms) {
    call.bind_statistics("saved_statistics", invstd, stats.groups, stats.blocks);
  } else {
    call.bind_statistics("saved_statistics.0", call.data_or_scratch(t.save_mean, stats.count()), stats.groups,
                         stats.blocks);
    call.bind_statistics("saved_statistics.1", invstd, stats.groups, stats.blocks);
  }
  const bool running = t.running_mean.has_value();
  const float* new_mean = call.pointer(call.scratch.take(channels));
  const float* new_var = call.pointer(call.scratch.take(channels));
  const float* no_running = running ? nullptr : call.pointer(call.scratch.zeros(channels));
  call.bind_vector("running_mean", running ? t.running_mean->data() : no_running, channels);
  call.bind_vector("running_var", running ? t.running_var->data() : no_running, channels);
  call.args.bind_scalar("momentum", s.momentum);
  call.args.bind_scalar("running_var_correction", s.running_var_correction);
  call.bind_vector("running_statistics.0", new_mean, channels);
  call.bind_vector("running_statistics.1", new_var, channels);
  call.args.call(variant, function);
  // Queued after the kernels on the same stream: the caller's running statistics change only if they ran.
  if (running) {
    cuda::copy_floats(call.scope, reinterpret_cast<cuda::DevicePtr>(t.running_mean->data()),
                      reinterpret_cast<cuda::DevicePtr>(new_mean), channels);
    cuda::copy_floats(call.scope, reinterpret_cast<cuda::DevicePtr>(t.running_var->data()),
                      reinterpret_cast<cuda::DevicePtr>(new_var), channels);
  }
}

void run_cuda_forward_inference(const char* function, const CallTensors& t, const KernelSettings& s,
                                const Geometry& g) {
  check_cuda_call(function, t, s, g, true);
  const KernelVariant& variant =
      select_cuda_variant({function, Direction::forward_inference, g.layout, true, s.norm, s.epilogue});
  DeviceCall call(scope_of(function));
  bind_common(call, t, s, g);
  call.bind_tensor("y", g, t.output->data());
  call.bind_vector("running_mean", t.running_mean->data(), g.channels);
  call.bind_vector("running_var", t.running_var->data(), g.channels);
  call.args.call(variant, function);
}

void run_cuda_backward(const char* function, const CallTensors& t, const KernelSettings& s, const Geometry& g) {
  if (!s.training) {
    throw Error(
        fmt::format("{}: training is false, expected true on CUDA: the evaluation gradient has no CUDA "
                    "kernel yet (docs/CUDA.md)",
                    function));
  }
  check_cuda_call(function, t, s, g, false);
  const KernelVariant& variant =
      select_cuda_variant({function, Direction::backward, g.layout, true, s.norm, s.epilogue});
  const StatisticsShape stats = statistics_shape(s, g);
  DeviceCall call(scope_of(function));
  bind_common(call, t, s, g);
  call.bind_tensor("dy", g, t.grad_output->data());
  call.bind_tensor("dx", g, t.grad_input->data());
  if (t.output) call.bind_tensor("y", g, t.output->data());
  call.args.bind_scalar("training", true);
  if (t.save_mean) call.bind_statistics("mean", t.save_mean->data(), stats.groups, stats.blocks);
  call.bind_statistics("invstd", t.save_invstd->data(), stats.groups, stats.blocks);
  const int64_t size = g.parameters();
  const float* grad_weight = call.data_or_scratch(t.grad_weight, size);
  if (s.norm == Norm::rms) {
    call.bind_vector("param_grads", grad_weight, size);
  } else {
    call.bind_vector("param_grads.0", grad_weight, size);
    call.bind_vector("param_grads.1", call.data_or_scratch(t.grad_bias, size), size);
  }
  call.args.call(variant, function);
}

constexpr DeviceRunner kCudaRunner{&run_cuda_forward_training, &run_cuda_forward_inference, &run_cuda_backward};

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
  for (size_t i = 0; i < detail::kCudaCount; i++) {
    const detail::KernelVariant& v = detail::kCuda[i];
    result.push_back({v.name, detail::to_string(v.norm), detail::to_string(v.direction), to_string(v.layout),
                      to_string(v.epilogue), v.affine, "cuda", "hand", available()});
  }
  return result;
}

namespace {
// Runs a CPU entry point with the CUDA scope open: its checks, then the CUDA kernels.
template <typename Tensors, typename Options>
void run(const char* function, void (*entry)(const Tensors&, const Options&), const Tensors& t, const Options& o,
         Stream stream) {
  if (!available()) {
    std::string reason;
    available(&reason);
    throw Error(fmt::format("{}: CUDA is not available: {}", function, reason));
  }
  detail::cuda::CallScope scope(function, stream);
  detail::DeviceRunnerScope device(detail::kCudaRunner);
  entry(t, o);
}
}  // namespace

void batch_norm_forward(const BatchNormForwardTensors& t, const BatchNormOptions& o, Stream stream) {
  run("batch_norm", &fusednorm::batch_norm_forward, t, o, stream);
}
void batch_norm_backward(const BatchNormBackwardTensors& t, const BatchNormOptions& o, Stream stream) {
  run("batch_norm", &fusednorm::batch_norm_backward, t, o, stream);
}
void group_norm_forward(const GroupNormForwardTensors& t, const GroupNormOptions& o, Stream stream) {
  run("group_norm", &fusednorm::group_norm_forward, t, o, stream);
}
void group_norm_backward(const GroupNormBackwardTensors& t, const GroupNormOptions& o, Stream stream) {
  run("group_norm", &fusednorm::group_norm_backward, t, o, stream);
}
void layer_norm_forward(const LayerNormForwardTensors& t, const LayerNormOptions& o, Stream stream) {
  run("layer_norm", &fusednorm::layer_norm_forward, t, o, stream);
}
void layer_norm_backward(const LayerNormBackwardTensors& t, const LayerNormOptions& o, Stream stream) {
  run("layer_norm", &fusednorm::layer_norm_backward, t, o, stream);
}
void rms_norm_forward(const RMSNormForwardTensors& t, const RMSNormOptions& o, Stream stream) {
  run("rms_norm", &fusednorm::rms_norm_forward, t, o, stream);
}
void rms_norm_backward(const RMSNormBackwardTensors& t, const RMSNormOptions& o, Stream stream) {
  run("rms_norm", &fusednorm::rms_norm_backward, t, o, stream);
}

void synchronize(Stream stream) {
  if (!available()) return;
  detail::cuda::synchronize("cuda::synchronize", stream);
}

}  // namespace cuda
}  // namespace fusednorm
