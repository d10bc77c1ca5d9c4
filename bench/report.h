#pragma once
// The results: one row per timed thing (kernel, baseline, copy ceiling), printed as a table and written as JSON.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bench/machine.h"
#include "bench/timing.h"

namespace fusednorm::bench {

// How the error of a baseline row whose result failed the check begins ("wrong" in the table).
inline constexpr const char* kWrongResult = "wrong result: ";

struct Row {
  // "batch_norm", "batch_norm_relu", "layer_norm", "group_norm", or "copy" for the ceilings
  std::string op;
  std::string epilogue = "none";         // the op's: "relu" for batch_norm_relu
  std::string dtype = "float32";         // of x, y, dy, dx: "float32", "bfloat16", "float16"
  std::optional<std::string> direction;  // "forward_training", "forward_inference", "backward"; none for copies
  std::optional<std::string> layout;     // "nchw", "nhwc", "rows", oneDNN's blocked "nChw16c"; none for copies
  std::string shape_name;                // "resnet50.conv1": ratios compare rows of the same shape name
  std::vector<int64_t> shape;            // (N, C, H, W); LayerNorm: (rows, features)
  std::string impl;                      // "fusednorm/hand/avx512", ".../inplace", "naive", "copy", "copy_nt"
  std::string kind;                      // "fusednorm", "baseline" (naive), "library" (oneDNN),
                                         // "framework" (PyTorch), "ceiling"
  std::string schedule;                  // fusednorm rows: "hand", "Mullapudi2016", "Li2018", "Adams2019"
  // Why the row was not timed (an autoscheduled kernel refused the shape: its error; a baseline's result was
  // wrong: kWrongResult and the check's message); "" for a timed row.
  std::string error;
  bool in_place = false;  // y written over x (output == input)
  std::string cache;      // "hot", "cold"
  int threads = 0;
  int64_t bytes = 0;  // the fewest bytes the operation must move, which GB/s counts
  Timing timing;
  // Filled in by complete_ratios, from the other rows of the same shape (and op, direction and layout).
  std::optional<double> ratio_to_ceiling;   // GB/s over the faster copy's
  std::optional<double> ratio_to_copy_nt;   // GB/s over the non-temporal copy's
  std::optional<double> ratio_to_baseline;  // the naive baseline's time over this row's
  // The fastest library row's time (oneDNN on this row's plain layout or its blocked one) over this row's.
  std::optional<double> ratio_to_library;
  // PyTorch's time on this row's layout over this row's (none for PyTorch's own rows and the copies).
  std::optional<double> ratio_to_pytorch;
  bool ceiling_disturbed = false;  // the copies these ratios use were themselves disturbed
  bool baseline_disturbed = false;
  bool library_disturbed = false;
  bool pytorch_disturbed = false;

  double gbps() const { return static_cast<double>(bytes) / (timing.median_ms * 1e-3) / 1e9; }
};

void complete_ratios(std::vector<Row>& rows);

// A call small enough that its fixed cost is most of its time (bench/small_calls.h), beside a copy of its x.
struct SmallCallRow {
  std::string name;            // "BatchNorm1d(64) [32, 64] training forward + backward"
  std::string key;             // what --filter matches: "small_call/batch_norm/forward_inference/32x64"
  std::vector<int64_t> shape;  // of x
  Timing timing;               // one call (training: the forward and its backward)
  Timing copy;                 // memcpy of x's bytes into y, timed the same way
  double target_us = 0;        // the bound on the median, 0 for none

  double ratio() const { return timing.median_ms / copy.median_ms; }
};

// Their own short table: case, median us, copy us, ratio; then the targets.
void print_small_calls(const std::vector<SmallCallRow>& rows);

// Hand against each autoscheduler: per shape, op, direction and layout, each schedule's ratio to copy_nt and
// the hand schedule's speed-up over it.
void print_schedule_summary(const std::vector<Row>& rows);

// A line above each shape's rows: its size and how it was timed.
struct ShapeNote {
  std::string shape_name;
  std::string text;
};

// What the run was and how it was timed, above the table: "  machine  ...", or "- **machine** ..." in markdown.
struct HeaderLine {
  std::string label;
  std::string text;
};

void print_table(const std::vector<Row>& rows, const std::vector<ShapeNote>& notes);
// The target: NCHW forward training at >= 0.5 of the non-temporal copy ceiling.
void print_target_summary(const std::vector<Row>& rows);
// FusedNorm against oneDNN and PyTorch, forward training and backward, per shape and op they have rows for: their
// time over FusedNorm's (oneDNN's blocked, plain nchw / nhwc and rows rows; PyTorch's of the same layout), with the
// share of the CPUs others used meanwhile.
void print_library_summary(const std::vector<Row>& rows);
// The same header, tables (one per shape, its note above it) and target summary as GitHub-flavoured markdown,
// for docs/PERFORMANCE.md to include verbatim.
void write_markdown(const std::string& path, const std::string& title, const std::vector<HeaderLine>& header,
                    const std::vector<Row>& rows, const std::vector<ShapeNote>& notes,
                    const std::vector<SmallCallRow>& small_calls);

struct RunSettings {
  int threads = 0;
  bool quick = false;
  std::string filter;
  int reps = 0;
  std::string max_isa;
  std::string copy_isa;
};

void write_json(const std::string& path, const std::vector<Row>& rows, const std::vector<SmallCallRow>& small_calls,
                const MachineInfo& machine, const RunSettings& settings);

}  // namespace fusednorm::bench
