#include "bench/onednn_baseline.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace fusednorm::bench::onednn {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// AVX-512 kernels block channels by 16, the others by 8: the layout a oneDNN convolution would hand them.
int channel_block() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto avx512_core = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);
  return (isa & avx512_core) == avx512_core ? 16 : 8;
}

const char* isa_name() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

std::optional<tag> plain_tag(size_t ndims, Layout layout) {
  const bool nchw = layout == Layout::nchw;
  switch (ndims) {
    case 2: return tag::nc;
    case 3: return nchw ? tag::ncw : tag::nwc;
    case 4: return nchw ? tag::nchw : tag::nhwc;
    case 5: return nchw ? tag::ncdhw : tag::ndhwc;
    default: return std::nullopt;
  }
}

std::optional<tag> blocked_tag(size_t ndims) {
  const bool by16 = channel_block() == 16;
  switch (ndims) {
    case 3: return by16 ? tag::nCw16c : tag::nCw8c;
    case 4: return by16 ? tag::nChw16c : tag::nChw8c;
    case 5: return by16 ? tag::nCdhw16c : tag::nCdhw8c;
    default: return std::nullopt;
  }
}

std::string blocked_tag_name(size_t ndims) {
  const char* spatial = ndims == 3 ? "w" : ndims == 4 ? "hw" : "dhw";
  return fmt::format("nC{}{}c", spatial, channel_block());
}

// Everything one (direction, storage) row holds: the primitive, its tensors for each buffer set (the sets'
// own memory when plain, reordered copies when blocked) and the per-channel arrays oneDNN reads and writes.
struct Baseline {
  Op op;
  Direction direction;
  Storage storage;
  DType dtype = DType::float32;  // of x, y, dy, dx; 16-bit: plain storage only, on the sets' 16-bit buffers
  memory::desc plain_md, data_md, workspace_md;  // workspace_md: BN + ReLU in training, else empty
  dnnl::primitive primitive;
  dnnl::primitive forward_for_workspace;  // BN + ReLU's backward: the training forward that writes its mask
  struct SetTensors {
    memory x, grad_output, output;  // output: y or dx, in data_md
    memory workspace;               // BN + ReLU: the mask the training forward writes and the backward reads
  };
  std::vector<SetTensors> sets;
  std::vector<float> variance;  // per statistic. training: the biased variance written; backward: the one read
  std::string impl_info;        // oneDNN's name of the implementation it chose, e.g. "bnorm_jit:avx2", "ref:any"

  bool fused_relu() const { return epilogue(op) == Epilogue::relu; }

  memory vector_of(const float* data, int64_t count) const {
    return memory({{count}, memory::data_type::f32, tag::a}, cpu_engine(), const_cast<float*>(data));
  }

  // Untimed: wraps (plain) or reorders (blocked) every set's inputs, allocates the blocked outputs, and for the
  // backward derives the variance oneDNN wants from the saved invstd (var = 1 / invstd^2 - eps) and, for
  // BN + ReLU, runs the training forward on each set for its workspace.
  void prepare(Problem& p) {
    sets.clear();
    dnnl::stream stream(cpu_engine());
    const bool half = dtype != DType::float32;
    for (BufferSet& b : p.sets) {
      memory x_plain(plain_md, cpu_engine(), (half ? b.x16 : b.x).data());
      memory dy_plain(plain_md, cpu_engine(), (half ? b.grad_output16 : b.grad_output).data());
      memory out_plain(plain_md, cpu_engine(), (half ? b.output16 : b.output).data());
      SetTensors tensors{x_plain, dy_plain, out_plain, {}};
      if (storage == Storage::blocked) {
        tensors = {memory(data_md, cpu_engine()), memory(data_md, cpu_engine()), memory(data_md, cpu_engine()), {}};
        dnnl::reorder(x_plain, tensors.x).execute(stream, x_plain, tensors.x);
        if (direction == Direction::backward) {
          dnnl::reorder(dy_plain, tensors.grad_output).execute(stream, dy_plain, tensors.grad_output);
        }
        // Touch the output's pages now, not in the first timed run.
        dnnl::reorder(x_plain, tensors.output).execute(stream, x_plain, tensors.output);
      }
      if (fused_relu()) tensors.workspace = memory(workspace_md, cpu_engine());
      sets.push_back(tensors);
    }
    stream.wait();
    const int64_t statistics = p.statistics();
    variance.assign(static_cast<size_t>(statistics), 0.0f);
    if (direction != Direction::backward) return;
    for (size_t k = 0; k < variance.size(); k++) {
      const double invstd = p.channels.batch_invstd[k];
      variance[k] = static_cast<float>(1.0 / (invstd * invstd) - kEps);
    }
    if (!fused_relu()) return;
    std::vector<float> mean(variance.size()), scratch_variance(variance.size());
    for (const SetTensors& t : sets) {
      forward_for_workspace.execute(stream, {{DNNL_ARG_SRC, t.x},
                                             {DNNL_ARG_DST, t.output},
                                             {DNNL_ARG_SCALE, vector_of(p.channels.weight.data(), p.dims.c)},
                                             {DNNL_ARG_SHIFT, vector_of(p.channels.bias.data(), p.dims.c)},
                                             {DNNL_ARG_MEAN, vector_of(mean.data(), statistics)},
                                             {DNNL_ARG_VARIANCE, vector_of(scratch_variance.data(), statistics)},
                                             {DNNL_ARG_WORKSPACE, t.workspace}});
    }
    stream.wait();
  }

  void run(Problem& p, int set) {
    const SetTensors& t = sets[static_cast<size_t>(set)];
    ChannelTensors& ch = p.channels;
    const int64_t channels = p.dims.c, statistics = p.statistics();
    // The backward asks for the shift too (oneDNN 2.6 lists it among its arguments), though dx does not use it.
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, t.x},
                                            {DNNL_ARG_SCALE, vector_of(ch.weight.data(), channels)},
                                            {DNNL_ARG_SHIFT, vector_of(ch.bias.data(), channels)}};
    switch (direction) {
      case Direction::forward_training:
        args.insert({{DNNL_ARG_DST, t.output},
                     {DNNL_ARG_MEAN, vector_of(ch.save_mean.data(), statistics)},
                     {DNNL_ARG_VARIANCE, vector_of(variance.data(), statistics)}});
        break;
      case Direction::forward_inference:
        args.insert({{DNNL_ARG_DST, t.output},
                     {DNNL_ARG_MEAN, vector_of(ch.running_mean.data(), statistics)},
                     {DNNL_ARG_VARIANCE, vector_of(ch.running_var.data(), statistics)}});
        break;
      case Direction::backward:
        args.insert({{DNNL_ARG_DIFF_DST, t.grad_output},
                     {DNNL_ARG_DIFF_SRC, t.output},
                     {DNNL_ARG_MEAN, vector_of(ch.batch_mean.data(), statistics)},
                     {DNNL_ARG_VARIANCE, vector_of(variance.data(), statistics)},
                     {DNNL_ARG_DIFF_SCALE, vector_of(ch.grad_weight.data(), channels)},
                     {DNNL_ARG_DIFF_SHIFT, vector_of(ch.grad_bias.data(), channels)}});
        break;
      case Direction::statistics:  // SyncBatchNorm's split kernels: not a bench direction (bench/cases.cpp)
      case Direction::backward_reduce:
      case Direction::backward_elementwise: throw std::logic_error("onednn: not a bench direction");
    }
    if (fused_relu() && direction != Direction::forward_inference) args.insert({DNNL_ARG_WORKSPACE, t.workspace});
    dnnl::stream stream(cpu_engine());
    primitive.execute(stream, args);
    stream.wait();
    if (direction != Direction::forward_training) return;
    // What PyTorch's oneDNN path does after the primitive: invstd for the backward, and (BatchNorm) the running
    // statistics with the unbiased variance. O(C), or O(rows) for LayerNorm, timed with the primitive.
    for (size_t k = 0; k < variance.size(); k++) {
      ch.save_invstd[k] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(variance[k]) + kEps));
    }
    if (op == Op::layer_norm) return;
    const double count = static_cast<double>(p.dims.n * p.dims.s);
    for (size_t c = 0; c < variance.size(); c++) {
      ch.running_mean[c] = static_cast<float>((1 - kMomentum) * ch.running_mean[c] + kMomentum * ch.save_mean[c]);
      ch.running_var[c] = static_cast<float>((1 - kMomentum) * ch.running_var[c] +
                                             kMomentum * variance[c] * count / std::max(count - 1, 1.0));
    }
  }

  // Untimed, after a verification run: the blocked output back into the set's plain output buffer.
  void publish(Problem& p, int set) {
    BufferSet& b = p.sets[static_cast<size_t>(set)];
    if (dtype != DType::float32) return widen(b.output16, b.output, p.dims.numel(), dtype);
    if (storage == Storage::plain) return;
    dnnl::stream stream(cpu_engine());
    memory out_plain(plain_md, cpu_engine(), p.sets[static_cast<size_t>(set)].output.data());
    memory& out = sets[static_cast<size_t>(set)].output;
    dnnl::reorder(out, out_plain).execute(stream, out, out_plain);
    stream.wait();
  }
};

const auto kScaleShift = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

// The batch_normalization primitives of the direction on data_md; for BN + ReLU (fuse_norm_relu) also the
// training forward whose workspace the backward reads, and that workspace's descriptor.
void make_batch_norm_primitives(Baseline& b) {
  using dnnl::prop_kind;
  const dnnl::engine& engine = cpu_engine();
  const float eps = static_cast<float>(kEps);
  const dnnl::normalization_flags flags =
      b.fused_relu() ? kScaleShift | dnnl::normalization_flags::fuse_norm_relu : kScaleShift;
  const dnnl::batch_normalization_forward::primitive_desc training({prop_kind::forward_training, b.data_md, eps, flags},
                                                                   engine);
  if (b.fused_relu()) {
    b.workspace_md = training.workspace_desc();
    b.forward_for_workspace = dnnl::batch_normalization_forward(training);
  }
  switch (b.direction) {
    case Direction::forward_training:
      b.primitive = dnnl::batch_normalization_forward(training);
      b.impl_info = training.impl_info_str();
      return;
    case Direction::forward_inference: {
      const dnnl::batch_normalization_forward::primitive_desc inference(
          {prop_kind::forward_inference, b.data_md, eps, flags | dnnl::normalization_flags::use_global_stats}, engine);
      b.primitive = dnnl::batch_normalization_forward(inference);
      b.impl_info = inference.impl_info_str();
      return;
    }
    case Direction::backward: {
      const dnnl::batch_normalization_backward::primitive_desc backward(
          {prop_kind::backward, b.data_md, b.data_md, eps, flags}, engine, training);
      b.primitive = dnnl::batch_normalization_backward(backward);
      b.impl_info = backward.impl_info_str();
      return;
    }
    case Direction::statistics:
    case Direction::backward_reduce:
    case Direction::backward_elementwise: break;
  }
  throw std::logic_error("onednn: not a bench direction");
}

// layer_normalization over the last dimension of data_md (rows x features), its statistics one per row.
void make_layer_norm_primitives(Baseline& b, int64_t rows) {
  using dnnl::prop_kind;
  const dnnl::engine& engine = cpu_engine();
  const float eps = static_cast<float>(kEps);
  const memory::desc stat_md({rows}, memory::data_type::f32, tag::a);
  const dnnl::layer_normalization_forward::primitive_desc training(
      {prop_kind::forward_training, b.data_md, stat_md, eps, kScaleShift}, engine);
  if (b.direction == Direction::backward) {
    const dnnl::layer_normalization_backward::primitive_desc backward(
        {prop_kind::backward, b.data_md, b.data_md, stat_md, eps, kScaleShift}, engine, training);
    b.primitive = dnnl::layer_normalization_backward(backward);
    b.impl_info = backward.impl_info_str();
  } else {
    b.primitive = dnnl::layer_normalization_forward(training);
    b.impl_info = training.impl_info_str();
  }
}

}  // namespace

std::string description() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("oneDNN {}.{}.{} (OpenMP threads: {}; ISA {}; blocked layout nC*{}c)", v->major, v->minor,
                     v->patch, omp_get_max_threads(), isa_name(), channel_block());
}

bool available() { return true; }

std::vector<Storage> storages(Op op, Layout layout) {
  switch (op) {
    case Op::batch_norm:
    case Op::batch_norm_relu:
      if (layout == Layout::nchw) return {Storage::plain, Storage::blocked};
      return {Storage::plain};
    case Op::layer_norm: return {Storage::plain};
    // oneDNN 2.6 has no group, RMS or instance normalization (layer_normalization's flags have no RMS mode;
    // instance norm would be batch_normalization on x viewed as (1, N x C, *spatial), not done here).
    case Op::group_norm:
    case Op::rms_norm:
    case Op::instance_norm: return {};
  }
  return {};
}

std::string layout_name(const Problem& problem, Storage storage) {
  return storage == Storage::plain ? problem.layout_name() : blocked_tag_name(problem.shape.shape.size());
}

namespace {

// The descriptors and primitives of the problem's op in `data_type`; false where oneDNN has no such op or layout.
bool make_baseline(Baseline& b, const Problem& problem, Storage storage, memory::data_type data_type) {
  switch (problem.op) {
    case Op::batch_norm:
    case Op::batch_norm_relu: {
      const size_t ndims = problem.shape.shape.size();
      const std::optional<tag> plain = plain_tag(ndims, problem.layout);
      const std::optional<tag> data = storage == Storage::plain ? plain : blocked_tag(ndims);
      if (!plain || !data) return false;
      const memory::dims dims(problem.shape.shape.begin(), problem.shape.shape.end());
      b.plain_md = memory::desc(dims, data_type, *plain);
      b.data_md = memory::desc(dims, data_type, *data);
      make_batch_norm_primitives(b);
      return true;
    }
    case Op::layer_norm:
      if (storage != Storage::plain) return false;
      // The rows as oneDNN's 2-D (rows, features): it normalizes over the last dimension.
      b.plain_md = memory::desc({problem.dims.n, problem.dims.c}, data_type, tag::ab);
      b.data_md = b.plain_md;
      make_layer_norm_primitives(b, problem.dims.n);
      return true;
    case Op::group_norm:
    case Op::rms_norm:
    case Op::instance_norm: return false;
  }
  return false;
}
}  // namespace

std::optional<Implementation> implementation(Direction direction, const Problem& problem, Storage storage) {
  auto baseline = std::make_shared<Baseline>();
  baseline->op = problem.op;
  baseline->direction = direction;
  baseline->storage = storage;
  baseline->dtype = problem.dtype;
  if (problem.dtype != DType::float32 && storage != Storage::plain) return std::nullopt;
  const memory::data_type data_type = problem.dtype == DType::bfloat16 ? memory::data_type::bf16
                                      : problem.dtype == DType::float16 ? memory::data_type::f16
                                                                        : memory::data_type::f32;
  try {
    if (!make_baseline(*baseline, problem, storage, data_type)) return std::nullopt;
  } catch (const dnnl::error&) {
    return std::nullopt;  // no implementation of this data type (oneDNN 2.6: f16 normalization on CPU)
  }
  // In 16 bits, oneDNN may offer only its reference loops (ref:any) where the CPU lacks the ISA its kernels
  // need (avx512_core for bf16 in 2.6): not a library baseline, so no row.
  if (problem.dtype != DType::float32 && std::string(baseline->impl_info).starts_with("ref")) return std::nullopt;
  return Implementation{.name = fmt::format("onednn/{}", layout_name(problem, storage)),
                        .kind = "library",
                        .run = [baseline](Problem& p, int set) { baseline->run(p, set); },
                        .prepare = [baseline](Problem& p) { baseline->prepare(p); },
                        .publish = [baseline](Problem& p, int set) { baseline->publish(p, set); }};
}



}  // namespace fusednorm::bench::onednn
