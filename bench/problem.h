#pragma once
// One benchmark problem -- a shape in one layout, with its buffer sets and per-channel tensors -- and the
// implementations that solve it: FusedNorm's dispatched kernel and the naive baseline.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/buffers.h"
#include "fusednorm/tensor.h"
#include "support/batch_norm_reference.h"
#include "support/shapes.h"

namespace fusednorm::bench {

enum class Direction { forward_training, forward_inference, backward };
constexpr Direction kDirections[] = {Direction::forward_training, Direction::forward_inference, Direction::backward};
constexpr Layout kLayouts[] = {Layout::nchw, Layout::nhwc};
const char* to_string(Direction direction);

// Every implementation runs with PyTorch's defaults, and the reference checks them with the same.
constexpr double kMomentum = 0.1;
constexpr double kEps = 1e-5;

// The fewest (N, C, H, W) tensors a direction must move: x in, y out; the backward reads dy as well.
int tensors_moved(Direction direction);

// What one run reads and writes; rotating among several sets keeps runs from finding their data in cache.
struct BufferSet {
  AlignedBuffer x, grad_output, output;  // output: y (forwards) or dx (backward)
};

struct ChannelTensors {
  std::vector<float> weight, bias;
  std::vector<float> initial_running_mean, initial_running_var;
  std::vector<float> running_mean, running_var;  // read by the inference, updated by the training forward
  std::vector<float> save_mean, save_invstd;     // written by the training forward
  std::vector<float> batch_mean, batch_invstd;   // read by the backward: the statistics of x (set by the Verifier)
  std::vector<float> grad_weight, grad_bias;     // written by the backward

  void reset_running_statistics();
};

struct Problem {
  shapes::NamedShape shape;
  Layout layout;
  reference::Dims dims;
  std::vector<BufferSet> sets;
  ChannelTensors channels;

  int64_t tensor_bytes() const { return dims.numel() * static_cast<int64_t>(sizeof(float)); }
};

// Allocates and fills `buffer_sets` sets of random inputs (each set its own values) and the per-channel
// tensors: weight near 1, bias near 0, running variance in [0.5, 2].
Problem make_problem(const shapes::NamedShape& shape, Layout layout, int buffer_sets);

struct Implementation {
  std::string name;  // "fusednorm/<schedule>/<isa>" or "naive"
  std::string kind;  // "fusednorm" or "baseline"
  std::function<void(Problem& problem, int set)> run;
};

// The kernel dispatch picks for this direction and layout (affine, best instruction set allowed).
Implementation fusednorm_implementation(Direction direction, Layout layout);
Implementation naive_implementation(Direction direction);

}  // namespace fusednorm::bench
