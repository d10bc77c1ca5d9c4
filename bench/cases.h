#pragma once
// What the benchmark runs: the ops (a norm with its epilogue), their directions and layouts, and the shape lists
// of tests/support/shapes.h each op is timed on. A case is (shape, op, layout, direction); its rows are the
// implementations of that case. The filter key of a case is "<op>/<direction>/<layout>/<shape name>".
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fusednorm/epilogue.h"
#include "fusednorm/tensor.h"

namespace fusednorm::bench {

enum class Op { batch_norm, batch_norm_relu, layer_norm, group_norm, rms_norm, instance_norm };
using fusednorm::Direction;

const char* to_string(Op op);

// The norm of dispatch's variant names ("batch_norm" for both BatchNorm ops) and the epilogue fused after it.
const char* norm_name(Op op);
Epilogue epilogue(Op op);

// Every op, in the order of --help and --problem's message.
const std::vector<Op>& all_ops();

// LayerNorm and RMSNorm normalize the trailing dimensions of rows; the others are channel norms over (N, C, *spatial).
bool is_rows(Op op);
// RMSNorm subtracts no mean: it saves no mean, and has a weight but no bias (PyTorch's RMSNorm).
bool centred(Op op);

// BatchNorm has all three directions; the others the training forward and the backward (the kernels the build
// has: LayerNorm, RMSNorm and GroupNorm have no evaluation mode, InstanceNorm's evaluation (use_input_stats =
// false) is not timed, and BN + ReLU's inference is BN's with a max).
std::vector<Direction> directions(Op op);
// LayerNorm's and RMSNorm's input is rows (row-major, Layout::nchw for the kernels, "rows" in the table); the
// channel norms' are NCHW and NHWC.
std::vector<Layout> layouts(Op op);
// "nchw", "nhwc", or "rows" for LayerNorm and RMSNorm.
std::string layout_name(Op op, Layout layout);

// The fewest full-size tensors a run must move: x in, y out; the backward also reads dy, and BN + ReLU's
// backward the forward's y as well (the mask y > 0). In place too: y's lines are then already in cache, but the
// bytes counted stay the same so that ratios compare.
int tensors_moved(Op op, Direction direction);
// Whether a full-size tensor of the forward's y is kept for the backward (the ReLU mask).
bool needs_forward_output(Op op);

// The forwards accept y written over x (the same view); the backward does not accept dx over dy.
bool has_in_place_row(Direction direction);

// One shape of tests/support/shapes.h and the ops timed on it. Each shape gets its own copy ceilings, shared by
// its ops.
struct BenchShape {
  std::string name;            // "resnet50.conv1"
  std::vector<int64_t> shape;  // (N, C, *spatial); LayerNorm, RMSNorm: (*rows, *normalized_shape)
  std::vector<Op> ops;
  int64_t groups = 0;           // GroupNorm
  int64_t normalized_dims = 0;  // LayerNorm, RMSNorm: how many trailing dimensions are normalized
  // A problem from the command line (--problem) is one case: only this direction and layout.
  std::optional<Direction> direction = std::nullopt;
  std::optional<Layout> layout = std::nullopt;
  // And its one dtype (float32 unless it names another); a shape list's shapes take every dtype of their ops.
  std::optional<DType> dtype = std::nullopt;
};

// The lists --shapes names, in the order --help gives them; the default ones with and without --quick.
const std::vector<std::string>& shape_list_names();
std::vector<std::string> default_shape_lists(bool quick);
// A list by name (one of shape_list_names()); throws fusednorm::Error for another.
std::vector<BenchShape> shape_list(const std::string& name);

// The shapes with every op that an earlier shape of the same extents (groups, normalized dimensions) has taken
// out, and those left with no op: a case is timed once when lists share a shape (transformer and llm: 4096 x 4096).
std::vector<BenchShape> without_repeated_cases(std::vector<BenchShape> shapes);

// A positive decimal integer that is the whole of text (the command line's counts and extents), or nullopt.
std::optional<int64_t> positive_integer(std::string_view text);

// A problem given on the command line, benchdnn-style: "OP:DIRECTION:LAYOUT:SHAPE[:gGROUPS|:dDIMS][:DTYPE]"
// (DTYPE float32, the default, or bfloat16 / float16 for the ops that have 16-bit cases), for example
// "batch_norm:forward_training:nhwc:32x64x112x112", "group_norm:backward:nchw:8x320x64x64:g32",
// "layer_norm:forward_training:rows:8192x1024:bfloat16", "rms_norm:backward:rows:16x8192" (the last dimension
// normalized; ":d2" the last two), "instance_norm:backward:nhwc:8x64x128x128". SHAPE is
// (N, C, *spatial) whatever the layout. Throws fusednorm::Error saying which field is wrong and what was expected.
BenchShape parse_problem(std::string_view spec);

}  // namespace fusednorm::bench
