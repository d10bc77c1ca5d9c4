#pragma once
// One benchmark problem -- an op on a shape in one layout, with its buffer sets and its per-channel and
// per-statistic tensors -- and the implementations that solve it: FusedNorm's dispatched kernel and the naive
// baseline.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/buffers.h"
#include "bench/cases.h"
#include "fusednorm/tensor.h"
#include "support/norm_reference.h"

namespace fusednorm::bench {

// Every implementation runs with PyTorch's defaults, and the reference checks them with the same.
constexpr double kMomentum = 0.1;
constexpr double kEps = 1e-5;

// What one run reads and writes; rotating among several sets keeps runs from finding their data in cache.
struct BufferSet {
  AlignedBuffer x, grad_output, output;  // output: y (forwards) or dx (backward)
  // The forward's y the backward reads (BN + ReLU: the mask y > 0); empty for the other ops.
  AlignedBuffer forward_output;
  // A 16-bit problem's tensors as its rows read and write them: x and grad_output hold the values of the float
  // ones (which the reference reads), rounded to the dtype; output16 is the rows' y or dx, widened into output
  // to be verified. Empty for float32 problems.
  AlignedBuffer x16, grad_output16, output16;
};

// The per-channel tensors (per normalized feature for LayerNorm and RMSNorm: the reference's c; RMSNorm has no
// bias) and the per-statistic ones (per channel for BatchNorm, per (sample, group) for GroupNorm, per (sample,
// channel) for InstanceNorm, per row for LayerNorm and RMSNorm; RMSNorm's mean stays unused).
struct ChannelTensors {
  std::vector<float> weight, bias;
  // BatchNorm only (empty otherwise):
  std::vector<float> initial_running_mean, initial_running_var;
  std::vector<float> running_mean, running_var;  // read by the inference, updated by the training forward
  // Per statistic:
  std::vector<float> save_mean, save_invstd;    // written by the training forward
  std::vector<float> batch_mean, batch_invstd;  // read by the backward: the statistics of x (set by the Verifier)
  std::vector<float> grad_weight, grad_bias;    // written by the backward
  // The inference's inverse: the same kernel with these parameters takes its y back to its x (see
  // prepare_inverse_inference). In place, alternate runs use them, so that the data never diverges.
  std::vector<float> inverse_weight, inverse_bias, inverse_running_mean, inverse_running_var;

  void reset_running_statistics();
  // From weight, bias and the current running statistics.
  void prepare_inverse_inference();
};

struct Problem {
  BenchShape shape;
  Op op;
  Layout layout;
  // Of x, y, dy and dx: float32, or bfloat16 / float16 (cases of their own: FusedNorm and oneDNN rows only).
  // Parameters and statistics are float32 either way.
  DType dtype = DType::float32;
  // (N, C, S); LayerNorm, RMSNorm: (rows, features, 1) in Layout::nchw, as the reference sees rows.
  reference::Dims dims;
  std::vector<int64_t> normalized_shape;  // LayerNorm, RMSNorm: the trailing dimensions of shape.shape normalized
  std::vector<BufferSet> sets;
  ChannelTensors channels;
  // The in-place rows' buffers, each x overwritten by y: one tensor per run, so as many as in_place_regime
  // rotates through, apart from the sets (whose x the other rows and the reference keep reading).
  std::vector<AlignedBuffer> in_place;
  std::vector<int> in_place_runs;  // runs on each buffer since it was refilled

  int64_t tensor_bytes() const { return dims.numel() * element_size(dtype); }
  // Which elements share statistics, for the reference and the baselines.
  reference::Grouping grouping() const;
  int64_t statistics() const { return grouping().count(); }
  // "nchw", "nhwc" or "rows".
  std::string layout_name() const { return bench::layout_name(op, layout); }
  // Makes in_place[0, count) fresh copies of x (buffer i of set i % sets, so that they differ as the sets'
  // do), allocating any missing, and prepares the inference's inverse from the current running statistics.
  void refill_in_place(int count);
};

// Allocates and fills `buffer_sets` sets of random inputs (each set its own values) and the per-channel
// tensors: weight near 1, bias near 0, running variance in [0.5, 2]. x: each channel (rows: each row) with
// its own mean and spread; for BN + ReLU, set 0's x is moved off the ReLU's kink (see make_problem).
Problem make_problem(const BenchShape& shape, Op op, Layout layout, int buffer_sets, DType dtype = DType::float32);

// The 16-bit dtypes timed for the op: bfloat16 and float16 for BatchNorm, LayerNorm, RMSNorm and GroupNorm where a
// kernel of theirs runs here; none for the others.
std::vector<DType> half_dtypes(Op op);

// The 16-bit buffer of `output16` widened into `output` (n elements of `dtype`).
void widen(const AlignedBuffer& output16, AlignedBuffer& output, int64_t n, DType dtype);

struct Implementation {
  std::string name;        // "fusednorm/<schedule>/<isa>", ".../inplace", "naive", "onednn/<layout>"
  std::string kind;        // "fusednorm", "baseline" (naive) or "library" (oneDNN)
  std::string schedule{};  // fusednorm: the schedule its kernel has ("hand", "Adams2019", ...); others: ""
  bool in_place = false;   // y written over x in problem.in_place[set], instead of x and output of sets[set]
  std::function<void(Problem& problem, int set)> run;
  // Untimed, once before the row is verified and timed, after the Verifier prepared the direction: e.g.
  // reorder every set's inputs into the implementation's own layout. None: nothing to do.
  std::function<void(Problem& problem)> prepare = nullptr;
  // Untimed, after the verification run on `set`: put its output into sets[set].output in the problem's
  // layout (e.g. reorder back from a blocked layout). None: run writes there already.
  std::function<void(Problem& problem, int set)> publish = nullptr;
};

// The kernel dispatch picks for this op, direction and layout (affine, best instruction set allowed) under
// `schedule` (set_schedule, in prepare); in place, with output == input (forwards only).
Implementation fusednorm_implementation(Op op, Direction direction, Layout layout, bool in_place = false,
                                        const std::string& schedule = "hand", DType dtype = DType::float32);
// The schedules other than hand (the autoschedulers) with an affine kernel of this op, direction and layout that
// runs here, in the order of built_schedules().
std::vector<std::string> autoscheduled_schedules(Op op, Direction direction, Layout layout);
// The naive baseline of the problem's op (bench/naive_batch_norm.h, bench/naive_norms.h).
Implementation naive_implementation(Direction direction);

// The naive forward (no timing, no check) on sets [first, end): the forward_output a backward reads, for the
// sets the Verifier does not fill from the reference. Leaves the problem's per-channel tensors as they were.
void fill_forward_outputs_naive(Problem& problem, size_t first);

}  // namespace fusednorm::bench
