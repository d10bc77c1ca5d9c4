#pragma once
// What a normalization is, apart from how it is computed (norm_algorithm.h) and how it runs (schedule_cpu.h).
// Every member of the family is the same algorithm over the same three axes; a NormSpec says which of them the
// statistics reduce, which the affine parameters follow, and what is fused around it. docs/KERNELS.md lists
// the kernels' arguments; docs/ADDING_A_NORM.md walks through adding a member.
#include <map>
#include <string>

#include "Halide.h"
#include "fusednorm/kinds.h"

namespace fusednorm {

// Norm, Layout, Epilogue and DType are the runtime's (fusednorm/kinds.h), so that a generator parameter's word is
// the word of the variant's name and table row. In either Layout the kernels see a tensor as three axes, storage
// order innermost first:
//   nchw: (s, c, n), s all spatial dimensions flattened (dense, so they collapse into one);
//   nhwc: (c, s, n).
// LayerNorm and RMSNorm see their rows as nchw (s = the normalized elements, c = 1, n = the rows).

// The word-to-value map Halide's enum GeneratorParam takes, from the kind's one table of words.
template <typename Enum>
std::map<std::string, Enum> generator_param_words() {
  std::map<std::string, Enum> words;
  for (const auto& [word, value] : all_names<Enum>()) words.emplace(word, value);
  return words;
}

struct NormSpec {
  Norm norm = Norm::batch;
  Layout layout = Layout::nchw;
  bool affine = true;  // weight (gamma), and bias (beta) except for RMSNorm
  Epilogue epilogue = Epilogue::none;
  DType dtype = DType::float32;  // of x, z, y, dy, dx, dz; statistics and sums are float32/float64

  // The statistics of an element (s, c, n) are those of (group(c), n), or of group(c) alone when they reduce the
  // batch too. Groups are runs of consecutive channels: one channel each (batch, instance), `groups` of them
  // (group), or the single channel of LayerNorm's and RMSNorm's rows.
  bool reduces_batch() const { return norm == Norm::batch; }
  bool one_channel_per_group() const { return norm == Norm::batch || norm == Norm::instance; }
  // RMSNorm divides by the root mean square: no mean is subtracted (and there is no bias).
  bool centred() const { return norm != Norm::rms; }
  bool has_bias() const { return affine && norm != Norm::rms; }
  // weight and bias follow the channel (one per c), or the normalized element (one per s) for LayerNorm and
  // RMSNorm, whose statistics then cover the whole parameter vector.
  bool affine_per_element() const { return norm == Norm::layer || norm == Norm::rms; }
  bool has_running_statistics() const { return norm == Norm::batch || norm == Norm::instance; }
  bool has_inference_kernel() const { return norm == Norm::batch; }
  // Whether the backward can be asked for the evaluation gradient (fixed statistics); the other members
  // always normalize with their own statistics (InstanceNorm in evaluation uses the batch kernels).
  bool backward_has_training_flag() const { return norm == Norm::batch; }
  bool epilogue_needs_output_in_backward() const {
    return epilogue == Epilogue::relu || epilogue == Epilogue::add_relu;
  }

  Halide::Type storage_type() const {
    switch (dtype) {
      case DType::float16: return Halide::Float(16);
      case DType::bfloat16: return Halide::BFloat(16);
      case DType::float32: break;
    }
    return Halide::Float(32);
  }
};

}  // namespace fusednorm
