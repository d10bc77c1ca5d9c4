#include "bench/pytorch_baseline.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/version.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fusednorm/error.h"

namespace fusednorm::bench::pytorch {
namespace {

// The outputs and temporaries of the ops come from this allocator, not glibc's malloc: that maps every block over
// 32 MiB afresh (mmap), so each run would first-touch its output's pages inside the timed op, a cost of the
// allocator, not of the op. Freed blocks are kept per size for the next run, as a caching allocator (jemalloc or
// tcmalloc, which PyTorch's CPU performance guides recommend, or PyTorch's own on CUDA) keeps them; a row's first
// runs (verification, warm-up) fill the cache, and each row's prepare empties it.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) const override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (bytes == 0) return {nullptr, nullptr, nullptr, cpu};
    void* data = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (auto kept = free_.find(bytes); kept != free_.end()) {
        data = kept->second;
        free_.erase(kept);
      }
    }
    // 64 bytes: c10's own alignment (c10::gAlignment).
    if (!data && posix_memalign(&data, 64, bytes) != 0) throw std::bad_alloc();
    {
      std::lock_guard lock(mutex_);
      sizes_[data] = bytes;
    }
    return {data, data, &give_back, cpu};
  }

  // Frees the kept blocks (the ones in use stay theirs).
  void release_kept() {
    std::lock_guard lock(mutex_);
    for (auto& [bytes, data] : free_) {
      sizes_.erase(data);
      std::free(data);
    }
    free_.clear();
  }

  static CachingCpuAllocator& instance() {
    // Never destroyed: tensors may be freed during exit.
    static auto* allocator = new CachingCpuAllocator();
    return *allocator;
  }

 private:
  static void give_back(void* data) {
    CachingCpuAllocator& self = instance();
    std::lock_guard lock(self.mutex_);
    self.free_.emplace(self.sizes_.at(data), data);
  }

  mutable std::mutex mutex_;
  mutable std::unordered_multimap<size_t, void*> free_;  // bytes -> block
  mutable std::unordered_map<void*, size_t> sizes_;      // every block, in use or kept
};

at::Tensor vector_tensor(std::vector<float>& v, at::IntArrayRef sizes) { return at::from_blob(v.data(), sizes); }
at::Tensor vector_tensor(std::vector<float>& v) { return vector_tensor(v, {static_cast<int64_t>(v.size())}); }

// The strides of the case's layout: row-major, or channels innermost for NHWC (channels_last for 4-D, its analogue
// for the other ranks), so that ATen sees the layout the bench's buffers have.
std::vector<int64_t> strides_of(const Problem& p) {
  const std::vector<int64_t>& shape = p.shape.shape;
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  if (is_rows(p.op) || p.layout == Layout::nchw) {
    for (size_t d = shape.size(); d-- > 0;) {
      strides[d] = stride;
      stride *= shape[d];
    }
    return strides;
  }
  strides[1] = 1;
  stride = shape[1];
  for (size_t d = shape.size(); d-- > 2;) {
    strides[d] = stride;
    stride *= shape[d];
  }
  strides[0] = stride;
  return strides;
}

// Everything one (op, direction) row holds: what the last run returned (ATen allocates its outputs; publish
// copies them into the bench's buffers, untimed), and what autograd or ATen's instance_norm keeps from the
// forward for the backward.
struct Baseline {
  Op op;
  Direction direction;
  std::vector<int64_t> strides;
  std::vector<at::Tensor> results;  // output first, then what the direction writes besides

  // InstanceNorm: the (1, N x C, *spatial) shape and weight.repeat(N), as ATen's instance_norm makes them; for
  // its backward, each set's x in that shape (a copy for NHWC: what the forward's contiguous() saved).
  std::vector<int64_t> instance_shape;
  at::Tensor repeated_weight, repeated_bias;
  std::vector<at::Tensor> instance_inputs;
  // RMSNorm's backward: each set's forward, recorded by autograd with x and the weight as leaves.
  at::Tensor weight_leaf;
  std::vector<at::Tensor> rms_inputs, rms_outputs;

  at::Tensor full(const AlignedBuffer& buffer, const Problem& p) const {
    return at::from_blob(buffer.data(), p.shape.shape, strides);
  }
  at::Tensor per_channel(Problem& p, std::vector<float>& v) const {
    return is_rows(p.op) ? vector_tensor(v, p.normalized_shape) : vector_tensor(v);
  }
  // LayerNorm's statistics as ATen shapes them: the leading dimensions, then 1 per normalized one.
  std::vector<int64_t> row_statistics_shape(const Problem& p) const {
    std::vector<int64_t> shape = p.shape.shape;
    for (size_t d = shape.size() - p.normalized_shape.size(); d < shape.size(); d++) shape[d] = 1;
    return shape;
  }
  // RMSNorm's normalized dimensions, counted from the end.
  std::vector<int64_t> normalized_dims(const Problem& p) const {
    std::vector<int64_t> dims;
    for (int64_t d = -static_cast<int64_t>(p.normalized_shape.size()); d < 0; d++) dims.push_back(d);
    return dims;
  }

  // LLaMA's RMSNorm.forward, which is what a PyTorch 1.13 user writes: x * rsqrt(mean(x^2) + eps) * weight.
  static std::pair<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight,
                                                    at::IntArrayRef dims) {
    at::Tensor invstd = at::rsqrt(x.pow(2).mean(dims, /*keepdim=*/true) + kEps);
    return {x * invstd * weight, invstd};
  }

  // Untimed, before the row is verified: what the backward takes from its forward (InstanceNorm, RMSNorm).
  void prepare(Problem& p) {
    results.clear();
    instance_inputs.clear();
    rms_inputs.clear();
    rms_outputs.clear();
    CachingCpuAllocator::instance().release_kept();  // what the rows before this one left
    ChannelTensors& ch = p.channels;
    if (op == Op::instance_norm) {
      instance_shape = p.shape.shape;
      instance_shape[1] = p.dims.n * p.dims.c;
      instance_shape[0] = 1;
      repeated_weight = per_channel(p, ch.weight).repeat({p.dims.n});
      repeated_bias = per_channel(p, ch.bias).repeat({p.dims.n});
      if (direction == Direction::backward) {
        for (BufferSet& set : p.sets) instance_inputs.push_back(full(set.x, p).contiguous().view(instance_shape));
      }
    }
    if (op == Op::rms_norm && direction == Direction::backward) {
      weight_leaf = per_channel(p, ch.weight).clone().requires_grad_(true);
      for (BufferSet& set : p.sets) {
        at::Tensor x = full(set.x, p).requires_grad_(true);
        rms_outputs.push_back(rms_norm(x, weight_leaf, normalized_dims(p)).first);
        rms_inputs.push_back(x);
      }
    }
  }

  void run(Problem& p, int set_index) {
    try {
      run_op(p, static_cast<size_t>(set_index));
    } catch (const c10::Error& e) {
      throw Error(fmt::format("pytorch: {}", e.what_without_backtrace()));
    }
  }

  void run_op(Problem& p, size_t s) {
    BufferSet& set = p.sets[s];
    ChannelTensors& ch = p.channels;
    const at::Tensor x = full(set.x, p);
    const bool backward = direction == Direction::backward;
    const std::array<bool, 3> all_gradients = {true, true, true};
    switch (op) {
      case Op::batch_norm:
      case Op::batch_norm_relu: {
        // torch::batch_norm on CPU is at::native_batch_norm, which also returns the saved statistics.
        const at::Tensor w = per_channel(p, ch.weight), b = per_channel(p, ch.bias);
        const at::Tensor running_mean = vector_tensor(ch.running_mean), running_var = vector_tensor(ch.running_var);
        if (!backward) {
          auto [y, mean, invstd] = at::native_batch_norm(x, w, b, running_mean, running_var,
                                                         direction == Direction::forward_training, kMomentum, kEps);
          if (op == Op::batch_norm_relu) y.relu_();
          results = {y, mean, invstd};
          return;
        }
        // Autograd's ReLU backward (threshold_backward on the forward's y), then BatchNorm's.
        at::Tensor dy = full(set.grad_output, p);
        if (op == Op::batch_norm_relu) dy = at::threshold_backward(dy, full(set.forward_output, p), 0);
        auto [dx, dw, db] = at::native_batch_norm_backward(dy, x, w, running_mean, running_var,
                                                           vector_tensor(ch.batch_mean), vector_tensor(ch.batch_invstd),
                                                           /*train=*/true, kEps, all_gradients);
        results = {dx, dw, db};
        return;
      }
      case Op::layer_norm: {
        const at::Tensor w = per_channel(p, ch.weight), b = per_channel(p, ch.bias);
        if (!backward) {
          auto [y, mean, rstd] = at::native_layer_norm(x, p.normalized_shape, w, b, kEps);
          results = {y, mean, rstd};
          return;
        }
        const std::vector<int64_t> statistics = row_statistics_shape(p);
        auto [dx, dw, db] = at::native_layer_norm_backward(
            full(set.grad_output, p), x, p.normalized_shape, vector_tensor(ch.batch_mean, statistics),
            vector_tensor(ch.batch_invstd, statistics), w, b, all_gradients);
        results = {dx, dw, db};
        return;
      }
      case Op::group_norm: {
        const at::Tensor w = per_channel(p, ch.weight), b = per_channel(p, ch.bias);
        const int64_t groups = p.shape.groups;
        if (!backward) {
          auto [y, mean, rstd] = at::native_group_norm(x, w, b, p.dims.n, p.dims.c, p.dims.s, groups, kEps);
          results = {y, mean, rstd};
          return;
        }
        // As autograd calls it (1.13's derivatives.yaml): on dy and x made contiguous first. Its CPU kernel reads
        // channels_last tensors as if they were NCHW (dx wrong by about 9 on cache.n4_c64_16x16_g8 when called on
        // them directly), so for NHWC both are copied, timed, and dx comes back NCHW.
        auto [dx, dw, db] = at::native_group_norm_backward(
            full(set.grad_output, p).contiguous(), x.contiguous(), vector_tensor(ch.batch_mean, {p.dims.n, groups}),
            vector_tensor(ch.batch_invstd, {p.dims.n, groups}), w, p.dims.n, p.dims.c, p.dims.s, groups, all_gradients);
        results = {dx, dw, db};
        return;
      }
      case Op::instance_norm: {
        // ATen's instance_norm (Normalization.cpp), step by step so that its saved statistics can be checked:
        // BatchNorm on x.contiguous() viewed as (1, N x C, *spatial), with the weight and bias repeated N times.
        // For NHWC, contiguous() copies x into NCHW, and y comes back NCHW: both timed, as PyTorch does them.
        if (!backward) {
          auto [y, mean, invstd] =
              at::native_batch_norm(x.contiguous().view(instance_shape), repeated_weight, repeated_bias, {}, {},
                                    /*training=*/true, kMomentum, kEps);
          results = {y.view(p.shape.shape), mean, invstd};
          return;
        }
        // What autograd runs: BatchNorm's backward on the forward's saved (1, N x C, ...) x, on dy reshaped to it (a
        // copy for NHWC: view_as's backward), then repeat's backward (the sum over N) for the weight and bias.
        const int64_t n = p.dims.n, c = p.dims.c;
        auto [dx, dw, db] = at::native_batch_norm_backward(
            full(set.grad_output, p).reshape(instance_shape), instance_inputs[s], repeated_weight, {}, {},
            vector_tensor(ch.batch_mean), vector_tensor(ch.batch_invstd), /*train=*/true, kEps, all_gradients);
        results = {dx.view(p.shape.shape), dw.view({n, c}).sum(0), db.view({n, c}).sum(0)};
        return;
      }
      case Op::rms_norm: {
        if (!backward) {
          auto [y, invstd] = rms_norm(x, per_channel(p, ch.weight), normalized_dims(p));
          results = {y, invstd};
          return;
        }
        // Autograd through the composite's recorded forward (kept with retain_graph for the next run on the set).
        const at::Tensor dy = full(set.grad_output, p);
        torch::autograd::variable_list grads =
            torch::autograd::grad({rms_outputs[s]}, {rms_inputs[s], weight_leaf}, {dy}, /*retain_graph=*/true);
        results = {grads[0], grads[1]};
        return;
      }
    }
  }

  // Untimed, after the verification run: the returned tensors into the bench's buffers and per-statistic vectors
  // (the running statistics were updated in place).
  void publish(Problem& p, int set_index) {
    at::NoGradGuard no_grad;
    ChannelTensors& ch = p.channels;
    full(p.sets[static_cast<size_t>(set_index)].output, p).copy_(results[0]);
    auto copy = [&](std::vector<float>& to, size_t result) {
      vector_tensor(to).copy_(results[result].reshape({static_cast<int64_t>(to.size())}));
    };
    switch (direction) {
      case Direction::forward_training:
        if (op == Op::rms_norm) {
          copy(ch.save_invstd, 1);
        } else {
          copy(ch.save_mean, 1);
          copy(ch.save_invstd, 2);
        }
        return;
      case Direction::forward_inference: return;
      case Direction::backward:
        copy(ch.grad_weight, 1);
        if (centred(op)) copy(ch.grad_bias, 2);
        return;
    }
  }
};

}  // namespace

std::string description() {
  return fmt::format("PyTorch {} (libtorch; ATen threads: {}, {})", TORCH_VERSION, at::get_num_threads(),
                     AT_PARALLEL_OPENMP ? "OpenMP" : "its own thread pool");
}

bool available() { return true; }

void configure(int threads) {
  at::set_num_threads(threads);
  // Above the default CPU allocator's priority (0), so that every CPU tensor ATen allocates comes from it.
  c10::SetCPUAllocator(&CachingCpuAllocator::instance(), /*priority=*/1);
}

bool has_row(Op, Direction) { return true; }

std::optional<Implementation> implementation(Direction direction, const Problem& problem) {
  auto baseline = std::make_shared<Baseline>();
  baseline->op = problem.op;
  baseline->direction = direction;
  baseline->strides = strides_of(problem);
  return Implementation{.name = fmt::format("pytorch/{}", problem.layout_name()),
                        .kind = "framework",
                        .run = [baseline](Problem& p, int set) { baseline->run(p, set); },
                        .prepare = [baseline](Problem& p) { baseline->prepare(p); },
                        .publish = [baseline](Problem& p, int set) { baseline->publish(p, set); }};
}

}  // namespace fusednorm::bench::pytorch
