#include "bench/cases.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <ranges>

#include "fusednorm/error.h"
#include "support/shapes.h"

namespace fusednorm::bench {

const char* to_string(Op op) {
  switch (op) {
    case Op::batch_norm: return "batch_norm";
    case Op::batch_norm_relu: return "batch_norm_relu";
    case Op::layer_norm: return "layer_norm";
    case Op::group_norm: return "group_norm";
    case Op::rms_norm: return "rms_norm";
    case Op::instance_norm: return "instance_norm";
  }
  return "?";
}

const char* norm_name(Op op) { return op == Op::batch_norm_relu ? "batch_norm" : to_string(op); }

const std::vector<Op>& all_ops() {
  static const std::vector<Op> ops = {Op::batch_norm, Op::batch_norm_relu, Op::layer_norm,
                                      Op::group_norm, Op::rms_norm,        Op::instance_norm};
  return ops;
}

bool is_rows(Op op) { return op == Op::layer_norm || op == Op::rms_norm; }

bool centred(Op op) { return op != Op::rms_norm; }

Epilogue epilogue(Op op) { return op == Op::batch_norm_relu ? Epilogue::relu : Epilogue::none; }

std::vector<Direction> directions(Op op) {
  if (op == Op::batch_norm) return {Direction::forward_training, Direction::forward_inference, Direction::backward};
  return {Direction::forward_training, Direction::backward};
}

std::vector<Layout> layouts(Op op) {
  if (is_rows(op)) return {Layout::nchw};
  return {Layout::nchw, Layout::nhwc};
}

std::string layout_name(Op op, Layout layout) { return is_rows(op) ? "rows" : fusednorm::to_string(layout); }

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

std::vector<BenchShape> rows_shapes(const std::vector<shapes::RowsShape>& list, std::vector<Op> ops) {
  std::vector<BenchShape> result;
  for (const shapes::RowsShape& s : list) result.push_back({s.name, s.shape, ops, 0, s.normalized_dims});
  return result;
}

}  // namespace

const std::vector<std::string>& shape_list_names() {
  static const std::vector<std::string> names = {
      "resnet50", "resnet50_batch2", "mlp_bn1d", "mlp_bn1d_small", "seed_bn1d", "transformer", "transformer_small",
      "llm",      "llm_small",       "unet",     "unet_small",     "style",     "style_small", "cache"};
  return names;
}

// Every op on its network's shapes: about 6.5 minutes on 2 cores; --quick the same kinds at a size the
// float64 reference checks in a moment.
std::vector<std::string> default_shape_lists(bool quick) {
  if (quick) {
    return {"resnet50_batch2", "mlp_bn1d_small", "seed_bn1d",   "transformer_small",
            "llm_small",       "unet_small",     "style_small", "cache"};
  }
  return {"resnet50", "mlp_bn1d", "seed_bn1d", "transformer", "llm", "unet", "style", "cache"};
}

std::vector<BenchShape> shape_list(const std::string& name) {
  // A ResNet block's BatchNorm is followed by a ReLU (fused: batch_norm_relu) but for the last of each block.
  const std::vector<Op> resnet_ops = {Op::batch_norm, Op::batch_norm_relu};
  const std::vector<Op> transformer_ops = {Op::layer_norm, Op::rms_norm};
  if (name == "resnet50") return channel_shapes(shapes::resnet50_batch32(), resnet_ops);
  if (name == "resnet50_batch2") return channel_shapes(shapes::resnet50_batch2(), resnet_ops);
  if (name == "mlp_bn1d") return channel_shapes(shapes::mlp_batch_norm_1d(), {Op::batch_norm});
  if (name == "mlp_bn1d_small") return channel_shapes(shapes::mlp_batch_norm_1d_small(), {Op::batch_norm});
  if (name == "seed_bn1d") return channel_shapes(shapes::seed_batch_norm_1d(), {Op::batch_norm});
  if (name == "transformer") return rows_shapes(shapes::transformer_rows(), transformer_ops);
  if (name == "transformer_small") return rows_shapes(shapes::transformer_rows_small(), transformer_ops);
  if (name == "llm") return rows_shapes(shapes::llm_rows(), {Op::rms_norm});
  if (name == "llm_small") return rows_shapes(shapes::llm_rows_small(), {Op::rms_norm});
  if (name == "unet") return group_shapes(shapes::unet_group_norm());
  if (name == "unet_small") return group_shapes(shapes::unet_group_norm_small());
  if (name == "style") return channel_shapes(shapes::style_instance_norm(), {Op::instance_norm});
  if (name == "style_small") return channel_shapes(shapes::style_instance_norm_small(), {Op::instance_norm});
  if (name == "cache") {
    std::vector<BenchShape> all =
        channel_shapes(shapes::cache_resident(), {Op::batch_norm, Op::batch_norm_relu, Op::instance_norm});
    for (BenchShape& s : rows_shapes(shapes::cache_resident_rows(), transformer_ops)) all.push_back(std::move(s));
    for (BenchShape& s : group_shapes(shapes::cache_resident_group_norm())) all.push_back(std::move(s));
    return all;
  }
  throw Error(fmt::format("fusednorm_bench: no shape list '{}'", name));
}

std::vector<BenchShape> without_repeated_cases(std::vector<BenchShape> shapes) {
  std::vector<BenchShape> kept;
  for (BenchShape& shape : shapes) {
    std::erase_if(shape.ops, [&](Op op) {
      return std::ranges::any_of(kept, [&](const BenchShape& k) {
        return k.shape == shape.shape && k.groups == shape.groups && k.normalized_dims == shape.normalized_dims &&
               std::ranges::find(k.ops, op) != k.ops.end();
      });
    });
    if (!shape.ops.empty()) kept.push_back(std::move(shape));
  }
  return kept;
}

std::optional<int64_t> positive_integer(std::string_view text) {
  int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 1) return std::nullopt;
  return value;
}

namespace {

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> fields;
  for (;;) {
    const size_t at = text.find(separator);
    fields.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return fields;
    text = text.substr(at + 1);
  }
}

template <typename T, typename Name>
std::optional<T> by_name(std::string_view text, const std::vector<T>& values, const Name& name) {
  for (T value : values) {
    if (text == name(value)) return value;
  }
  return std::nullopt;
}

}  // namespace

BenchShape parse_problem(std::string_view spec) {
  auto fail = [&](const std::string& what) -> Error {
    return Error(
        fmt::format("--problem '{}': {} (expected OP:DIRECTION:LAYOUT:SHAPE[:gGROUPS|:dDIMS][:DTYPE], for example "
                    "batch_norm:forward_training:nhwc:32x64x112x112)",
                    spec, what));
  };
  std::vector<std::string_view> fields = split(spec, ':');
  // A last field that names a dtype is the DTYPE.
  DType dtype = DType::float32;
  if (fields.size() > 4) {
    if (const std::optional<DType> named = parse_kind<DType>(fields.back())) {
      dtype = *named;
      fields.pop_back();
    }
  }
  if (fields.size() < 4 || fields.size() > 5) throw fail(fmt::format("{} fields", fields.size()));

  const std::vector<Op>& ops = all_ops();
  const std::optional<Op> op = by_name(fields[0], ops, [](Op o) { return std::string(to_string(o)); });
  if (!op) {
    throw fail(fmt::format("OP is '{}', expected one of {}", fields[0],
                           fmt::join(ops | std::views::transform([](Op o) { return to_string(o); }), ", ")));
  }
  const std::vector<Direction> op_directions = directions(*op);
  const std::optional<Direction> direction =
      by_name(fields[1], op_directions, [](Direction d) { return std::string(name(d)); });
  if (!direction) {
    throw fail(
        fmt::format("DIRECTION is '{}', expected one of {} for {}", fields[1],
                    fmt::join(op_directions | std::views::transform([](Direction d) { return name(d); }), ", "),
                    to_string(*op)));
  }
  const std::vector<Layout> op_layouts = layouts(*op);
  const auto name_of = [&](Layout l) { return layout_name(*op, l); };
  const std::optional<Layout> layout = by_name(fields[2], op_layouts, name_of);
  if (!layout) {
    throw fail(fmt::format("LAYOUT is '{}', expected one of {} for {}", fields[2],
                           fmt::join(op_layouts | std::views::transform(name_of), ", "), to_string(*op)));
  }

  if (dtype != DType::float32 && *op != Op::batch_norm && *op != Op::layer_norm && *op != Op::rms_norm &&
      *op != Op::group_norm) {
    throw fail(fmt::format("DTYPE is {}, expected float32 for {} (16-bit cases: batch_norm, layer_norm, rms_norm, "
                           "group_norm)",
                           name(dtype), to_string(*op)));
  }
  BenchShape problem{.name = std::string(fields[3]),
                     .shape = {},
                     .ops = {*op},
                     .direction = direction,
                     .layout = layout,
                     .dtype = dtype};
  int64_t numel = 1;
  for (std::string_view extent : split(fields[3], 'x')) {
    const std::optional<int64_t> value = positive_integer(extent);
    if (!value) throw fail(fmt::format("SHAPE has the extent '{}', expected a positive integer", extent));
    if (__builtin_mul_overflow(numel, *value, &numel)) throw fail("SHAPE has more elements than int64 holds");
    problem.shape.push_back(*value);
  }
  const auto rank = static_cast<int64_t>(problem.shape.size());
  if (rank < 2)
    throw fail(fmt::format("SHAPE has {} dimension, expected (N, C, *spatial) or (*rows, *normalized)", rank));

  const std::string_view extra = fields.size() == 5 ? fields[4] : std::string_view();
  if (*op == Op::group_norm) {
    const std::optional<int64_t> groups = extra.starts_with('g') ? positive_integer(extra.substr(1)) : std::nullopt;
    if (!groups) throw fail(fmt::format("group_norm needs :gGROUPS (for example :g32), got '{}'", extra));
    if (problem.shape[1] % *groups != 0) {
      throw fail(fmt::format("{} groups do not divide C = {}", *groups, problem.shape[1]));
    }
    problem.groups = *groups;
    problem.name += fmt::format(".g{}", *groups);
  } else if (is_rows(*op)) {
    const std::optional<int64_t> dims = extra.empty()            ? 1
                                        : extra.starts_with('d') ? positive_integer(extra.substr(1))
                                                                 : std::nullopt;
    if (!dims || *dims >= rank) {
      throw fail(fmt::format("{} takes :dDIMS, the trailing dimensions normalized (1 to {}), got '{}'", to_string(*op),
                             rank - 1, extra));
    }
    problem.normalized_dims = *dims;
    if (*dims > 1) problem.name += fmt::format(".d{}", *dims);
  } else if (!extra.empty()) {
    throw fail(fmt::format("{} takes no fifth field, got '{}'", to_string(*op), extra));
  }
  return problem;
}

}  // namespace fusednorm::bench
