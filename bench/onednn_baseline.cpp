#include "bench/onednn_baseline.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>
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
  Direction direction;
  Storage storage;
  memory::desc plain_md, data_md;
  dnnl::primitive primitive;
  struct SetTensors {
    memory x, grad_output, output;  // output: y or dx, in data_md
  };
  std::vector<SetTensors> sets;
  std::vector<float> variance;  // training: the biased batch variance written; backward: the one read

  memory per_channel(const float* data, int64_t channels) const {
    return memory({{channels}, memory::data_type::f32, tag::a}, cpu_engine(), const_cast<float*>(data));
  }

  // Untimed: wraps (plain) or reorders (blocked) every set's inputs, allocates the blocked outputs, and for the
  // backward derives the variance oneDNN wants from the saved invstd (var = 1 / invstd^2 - eps).
  void prepare(Problem& p) {
    sets.clear();
    dnnl::stream stream(cpu_engine());
    for (BufferSet& b : p.sets) {
      memory x_plain(plain_md, cpu_engine(), b.x.data());
      memory dy_plain(plain_md, cpu_engine(), b.grad_output.data());
      memory out_plain(plain_md, cpu_engine(), b.output.data());
      if (storage == Storage::plain) {
        sets.push_back({x_plain, dy_plain, out_plain});
        continue;
      }
      SetTensors blocked{memory(data_md, cpu_engine()), memory(data_md, cpu_engine()), memory(data_md, cpu_engine())};
      dnnl::reorder(x_plain, blocked.x).execute(stream, x_plain, blocked.x);
      if (direction == Direction::backward) {
        dnnl::reorder(dy_plain, blocked.grad_output).execute(stream, dy_plain, blocked.grad_output);
      }
      // Touch the output's pages now, not in the first timed run.
      dnnl::reorder(x_plain, blocked.output).execute(stream, x_plain, blocked.output);
      sets.push_back(blocked);
    }
    stream.wait();
    const int64_t channels = p.dims.c;
    variance.assign(static_cast<size_t>(channels), 0.0f);
    if (direction == Direction::backward) {
      for (size_t c = 0; c < variance.size(); c++) {
        const double invstd = p.channels.batch_invstd[c];
        variance[c] = static_cast<float>(1.0 / (invstd * invstd) - kEps);
      }
    }
  }

  void run(Problem& p, int set) {
    const SetTensors& t = sets[static_cast<size_t>(set)];
    ChannelTensors& ch = p.channels;
    const int64_t channels = p.dims.c;
    // The backward asks for the shift too (oneDNN 2.6 lists it among its arguments), though dx does not use it.
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, t.x},
                                            {DNNL_ARG_SCALE, per_channel(ch.weight.data(), channels)},
                                            {DNNL_ARG_SHIFT, per_channel(ch.bias.data(), channels)}};
    switch (direction) {
      case Direction::forward_training:
        args.insert({{DNNL_ARG_DST, t.output},
                     {DNNL_ARG_MEAN, per_channel(ch.save_mean.data(), channels)},
                     {DNNL_ARG_VARIANCE, per_channel(variance.data(), channels)}});
        break;
      case Direction::forward_inference:
        args.insert({{DNNL_ARG_DST, t.output},
                     {DNNL_ARG_MEAN, per_channel(ch.running_mean.data(), channels)},
                     {DNNL_ARG_VARIANCE, per_channel(ch.running_var.data(), channels)}});
        break;
      case Direction::backward:
        args.insert({{DNNL_ARG_DIFF_DST, t.grad_output},
                     {DNNL_ARG_DIFF_SRC, t.output},
                     {DNNL_ARG_MEAN, per_channel(ch.batch_mean.data(), channels)},
                     {DNNL_ARG_VARIANCE, per_channel(variance.data(), channels)},
                     {DNNL_ARG_DIFF_SCALE, per_channel(ch.grad_weight.data(), channels)},
                     {DNNL_ARG_DIFF_SHIFT, per_channel(ch.grad_bias.data(), channels)}});
        break;
    }
    dnnl::stream stream(cpu_engine());
    primitive.execute(stream, args);
    stream.wait();
    if (direction != Direction::forward_training) return;
    // What PyTorch's oneDNN path does after the primitive: invstd for the backward, and the running statistics
    // with the unbiased variance. O(C), timed with the primitive.
    const double count = static_cast<double>(p.dims.n * p.dims.s);
    for (size_t c = 0; c < variance.size(); c++) {
      ch.save_invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(variance[c]) + kEps));
      ch.running_mean[c] = static_cast<float>((1 - kMomentum) * ch.running_mean[c] + kMomentum * ch.save_mean[c]);
      ch.running_var[c] = static_cast<float>((1 - kMomentum) * ch.running_var[c] +
                                             kMomentum * variance[c] * count / std::max(count - 1, 1.0));
    }
  }

  // Untimed, after a verification run: the blocked output back into the set's plain output buffer.
  void publish(Problem& p, int set) {
    if (storage == Storage::plain) return;
    dnnl::stream stream(cpu_engine());
    memory out_plain(plain_md, cpu_engine(), p.sets[static_cast<size_t>(set)].output.data());
    memory& out = sets[static_cast<size_t>(set)].output;
    dnnl::reorder(out, out_plain).execute(stream, out, out_plain);
    stream.wait();
  }
};

const auto kScaleShift = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

dnnl::primitive make_primitive(Direction direction, const memory::desc& data_md) {
  using dnnl::prop_kind;
  const dnnl::engine& engine = cpu_engine();
  const dnnl::batch_normalization_forward::primitive_desc training(
      {prop_kind::forward_training, data_md, static_cast<float>(kEps), kScaleShift}, engine);
  switch (direction) {
    case Direction::forward_training: return dnnl::batch_normalization_forward(training);
    case Direction::forward_inference:
      return dnnl::batch_normalization_forward(dnnl::batch_normalization_forward::primitive_desc(
          {prop_kind::forward_inference, data_md, static_cast<float>(kEps),
           kScaleShift | dnnl::normalization_flags::use_global_stats},
          engine));
    case Direction::backward:
      return dnnl::batch_normalization_backward(dnnl::batch_normalization_backward::primitive_desc(
          {prop_kind::backward, data_md, data_md, static_cast<float>(kEps), kScaleShift}, engine, training));
  }
  throw std::logic_error("onednn: unknown direction");
}

}  // namespace

std::string description() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("oneDNN {}.{}.{} (OpenMP threads: {}; ISA {}; blocked layout nC*{}c)", v->major, v->minor,
                     v->patch, omp_get_max_threads(), isa_name(), channel_block());
}

bool available() { return true; }

std::string layout_name(const Problem& problem, Storage storage) {
  return storage == Storage::plain ? fusednorm::to_string(problem.layout)
                                   : blocked_tag_name(problem.shape.shape.size());
}

std::optional<Implementation> batch_norm_implementation(Direction direction, const Problem& problem, Storage storage) {
  const size_t ndims = problem.shape.shape.size();
  const std::optional<tag> plain = plain_tag(ndims, problem.layout);
  const std::optional<tag> data = storage == Storage::plain ? plain : blocked_tag(ndims);
  if (!plain || !data) return std::nullopt;
  const memory::dims dims(problem.shape.shape.begin(), problem.shape.shape.end());
  auto baseline = std::make_shared<Baseline>();
  baseline->direction = direction;
  baseline->storage = storage;
  baseline->plain_md = memory::desc(dims, memory::data_type::f32, *plain);
  baseline->data_md = memory::desc(dims, memory::data_type::f32, *data);
  baseline->primitive = make_primitive(direction, baseline->data_md);
  return Implementation{.name = fmt::format("onednn/{}", layout_name(problem, storage)),
                        .kind = "library",
                        .run = [baseline](Problem& p, int set) { baseline->run(p, set); },
                        .prepare = [baseline](Problem& p) { baseline->prepare(p); },
                        .publish = [baseline](Problem& p, int set) { baseline->publish(p, set); }};
}

}  // namespace fusednorm::bench::onednn
