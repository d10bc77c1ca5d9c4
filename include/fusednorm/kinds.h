#pragma once
// The words a kernel is described by: which normalization, which direction, the layout, the fused epilogue, the
// storage type and the backend. One definition, free of Halide, read by the generators (their parameters), the
// generated variant table, dispatch and the public API. Each enum has one table of the words that name its
// values: the generator parameter, the variant name's token and the registration field are the same word.
#include <optional>
#include <string_view>
#include <utility>

namespace fusednorm {

// Which axes the statistics reduce (docs/KERNELS.md): batch over N and spatial per channel; instance over
// spatial per (sample, channel); group over a run of channels and spatial per sample; layer and rms over the
// trailing normalized elements per row (rms: no mean, no bias).
enum class Norm { batch, instance, group, layer, rms };
// forward_inference normalizes with given (running) statistics: BatchNorm's only.
// SyncBatchNorm splits a training step whose statistics span several processes into kernels of BatchNorm's alone:
//   statistics:           the batch's partial statistics per channel, to be combined across processes;
//   backward_reduce:      sum(g * xhat) and sum(g) per channel (g: dy through the epilogue), given the statistics;
//   backward_elementwise: dx (and dz) given the statistics and the combined means of those sums.
// Its normalize step is forward_inference.
enum class Direction {
  forward_training,
  forward_inference,
  backward,
  statistics,
  backward_reduce,
  backward_elementwise
};
// How the channel axis (dimension 1 of (N, C, *spatial)) is laid out in memory.
//   nchw: contiguous, spatial innermost (PyTorch's contiguous_format).
//   nhwc: channels innermost (PyTorch's channels_last / channels_last_3d).
// LayerNorm's and RMSNorm's rows are nchw.
enum class Layout { nchw, nhwc };
// What a kernel applies to the normalized value v = xhat * weight + bias before it stores y, in the same pass.
//   none:     y = v
//   relu:     y = max(v, 0) (NaN stays NaN, as torch.relu)
//   add_relu: y = max(v + z, 0), z the residual of the same shape as x (the ResNet block's add and ReLU)
//   silu:     y = v * sigmoid(v) (diffusion U-Nets after GroupNorm)
// The backward of relu and add_relu takes the forward's y (the mask is y > 0) and, for add_relu, writes dz;
// silu's backward recomputes v from x and the saved statistics in the same pass.
enum class Epilogue { none, relu, add_relu, silu };
// The storage type of x, y, z and their gradients. The runtime's tensors are float32 today; the generators can
// make the others.
enum class DType { float32, float16, bfloat16 };
// Where a kernel runs: the CPU the runtime was built for, or a CUDA device.
enum class Backend { cpu, cuda };

// Whether only BatchNorm has kernels of the direction (forward_inference and SyncBatchNorm's split kernels).
constexpr bool batch_only(Direction direction) {
  return direction != Direction::forward_training && direction != Direction::backward;
}

namespace kinds {

inline constexpr std::pair<const char*, Norm> norm_names[] = {
    {"batch", Norm::batch}, {"instance", Norm::instance}, {"group", Norm::group}, {"layer", Norm::layer},
    {"rms", Norm::rms}};
inline constexpr std::pair<const char*, Direction> direction_names[] = {
    {"forward_training", Direction::forward_training},
    {"forward_inference", Direction::forward_inference},
    {"backward", Direction::backward},
    {"statistics", Direction::statistics},
    {"backward_reduce", Direction::backward_reduce},
    {"backward_elementwise", Direction::backward_elementwise}};
inline constexpr std::pair<const char*, Layout> layout_names[] = {{"nchw", Layout::nchw}, {"nhwc", Layout::nhwc}};
inline constexpr std::pair<const char*, Epilogue> epilogue_names[] = {
    {"none", Epilogue::none}, {"relu", Epilogue::relu}, {"add_relu", Epilogue::add_relu}, {"silu", Epilogue::silu}};
inline constexpr std::pair<const char*, DType> dtype_names[] = {
    {"float32", DType::float32}, {"float16", DType::float16}, {"bfloat16", DType::bfloat16}};
inline constexpr std::pair<const char*, Backend> backend_names[] = {{"cpu", Backend::cpu},
                                                                         {"cuda", Backend::cuda}};

constexpr const auto& names_of(Norm) { return norm_names; }
constexpr const auto& names_of(Direction) { return direction_names; }
constexpr const auto& names_of(Layout) { return layout_names; }
constexpr const auto& names_of(Epilogue) { return epilogue_names; }
constexpr const auto& names_of(DType) { return dtype_names; }
constexpr const auto& names_of(Backend) { return backend_names; }

}  // namespace kinds

// The word of a value: "batch", "forward_training", "nhwc", "add_relu", "bfloat16", "cuda".
template <typename Enum>
constexpr const char* name(Enum value) {
  for (const auto& [word, e] : kinds::names_of(value)) {
    if (e == value) return word;
  }
  return "?";
}

// The value a word names, or none.
template <typename Enum>
constexpr std::optional<Enum> parse_kind(std::string_view word) {
  for (const auto& [w, e] : kinds::names_of(Enum{})) {
    if (std::string_view(w) == word) return e;
  }
  return std::nullopt;
}

// The words of every value, in declaration order: the choices in a message or a generator parameter's map.
template <typename Enum>
constexpr const auto& all_names() {
  return kinds::names_of(Enum{});
}

// Rows of x in one float32 partial sum of the NHWC CPU kernels (the generators' sum_chunk_length); the runtime
// passes a BatchNorm batch of shorter samples to them as one sample (runtime/norm_kernels.cpp, kernel_dims).
inline constexpr int kNhwcSumChunkRows = 64;

}  // namespace fusednorm
