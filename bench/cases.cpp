#include "bench/cases.h"

#include <fmt/format.h>

#include "fusednorm/error.h"
#include "support/shapes.h"

namespace fusednorm::bench {

const char* to_string(Op op) {
  switch (op) {
    case Op::batch_norm: return "batch_norm";
    case Op::batch_norm_relu: return "batch_norm_relu";
    case Op::layer_norm: return "layer_norm";
    case Op::group_norm: return "group_norm";
  }
  return "?";
}

const char* to_string(Direction direction) {
  switch (direction) {
    case Direction::forward_training: return "forward_training";
    case Direction::forward_inference: return "forward_inference";
    case Direction::backward: return "backward";
  }
  return "?";
}

const char* norm_name(Op op) {
  switch (op) {
    case Op::batch_norm:
    case Op::batch_norm_relu: return "batch_norm";
    case Op::layer_norm: return "layer_norm";
    case Op::group_norm: return "group_norm";
  }
  return "?";
}

Epilogue epilogue(Op op) { return op == Op::batch_norm_relu ? Epilogue::relu : Epilogue::none; }

std::vector<Direction> directions(Op op) {
  if (op == Op::batch_norm) return {Direction::forward_training, Direction::forward_inference, Direction::backward};
  return {Direction::forward_training, Direction::backward};
}

std::vector<Layout> layouts(Op op) {
  if (op == Op::layer_norm) return {Layout::nchw};
  return {Layout::nchw, Layout::nhwc};
}

std::string layout_name(Op op, Layout layout) { return op == Op::layer_norm ? "rows" : fusednorm::to_string(layout); }

int tensors_moved(Op op, Direction direction) {
  if (direction != Direction::backward) return 2;
  return needs_forward_output(op) ? 4 : 3;
}

bool needs_forward_output(Op op) { return epilogue(op) == Epilogue::relu; }

bool has_in_place_row(Direction direction) { return direction != Direction::backward; }

namespace {

std::vector<BenchShape> channel_shapes(const std::vector<shapes::NamedShape>& list, std::vector<Op> ops) {
  std::vector<BenchShape> result;
  for (const shapes::NamedShape& s : list) result.push_back({s.name, s.shape, ops});
  return result;
}

std::vector<BenchShape> group_shapes(const std::vector<shapes::GroupNormShape>& list) {
  std::vector<BenchShape> result;
  for (const shapes::GroupNormShape& s : list) result.push_back({s.name, s.shape, {Op::group_norm}, s.groups});
  return result;
}

std::vector<BenchShape> rows_shapes(const std::vector<shapes::RowsShape>& list) {
  std::vector<BenchShape> result;
  for (const shapes::RowsShape& s : list) result.push_back({s.name, s.shape, {Op::layer_norm}, 0, s.normalized_dims});
  return result;
}

}  // namespace

const std::vector<std::string>& shape_list_names() {
  static const std::vector<std::string> names = {"resnet50",       "resnet50_batch2", "mlp_bn1d",
                                                 "mlp_bn1d_small", "transformer",     "transformer_small",
                                                 "unet",           "unet_small",      "cache"};
  return names;
}

// Every op on its network's shapes: about 6 minutes on 2 cores; --quick the same kinds at a size the
// float64 reference checks in a moment.
std::vector<std::string> default_shape_lists(bool quick) {
  if (quick) return {"resnet50_batch2", "mlp_bn1d_small", "transformer_small", "unet_small", "cache"};
  return {"resnet50", "mlp_bn1d", "transformer", "unet", "cache"};
}

std::vector<BenchShape> shape_list(const std::string& name) {
  // A ResNet block's BatchNorm is followed by a ReLU (fused: batch_norm_relu) but for the last of each block.
  const std::vector<Op> resnet_ops = {Op::batch_norm, Op::batch_norm_relu};
  if (name == "resnet50") return channel_shapes(shapes::resnet50_batch32(), resnet_ops);
  if (name == "resnet50_batch2") return channel_shapes(shapes::resnet50_batch2(), resnet_ops);
  if (name == "mlp_bn1d") return channel_shapes(shapes::mlp_batch_norm_1d(), {Op::batch_norm});
  if (name == "mlp_bn1d_small") return channel_shapes(shapes::mlp_batch_norm_1d_small(), {Op::batch_norm});
  if (name == "transformer") return rows_shapes(shapes::transformer_rows());
  if (name == "transformer_small") return rows_shapes(shapes::transformer_rows_small());
  if (name == "unet") return group_shapes(shapes::unet_group_norm());
  if (name == "unet_small") return group_shapes(shapes::unet_group_norm_small());
  if (name == "cache") {
    std::vector<BenchShape> all = channel_shapes(shapes::cache_resident(), resnet_ops);
    for (BenchShape& s : rows_shapes(shapes::cache_resident_rows())) all.push_back(std::move(s));
    for (BenchShape& s : group_shapes(shapes::cache_resident_group_norm())) all.push_back(std::move(s));
    return all;
  }
  throw Error(fmt::format("fusednorm_bench: no shape list '{}'", name));
}

}  // namespace fusednorm::bench
