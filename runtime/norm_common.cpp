#include "runtime/norm_common.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <span>
#include <tuple>
#include <utility>

#include "fusednorm/error.h"

namespace fusednorm::detail {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

bool dense_in(const TensorView& t, Layout layout) {
  return layout == Layout::nchw ? t.is_contiguous() : t.is_channels_last();
}

const char* name_of(DType dtype) { return name(dtype); }

std::string strides_string(const TensorView& t) { return fmt::format("[{}]", fmt::join(t.strides(), ", ")); }

std::string contiguous_strides_string(std::span<const int64_t> shape) {
  return strides_string(TensorView(nullptr, shape));
}

void check_data(const char* function, const char* name, const TensorView& t) {
  if (!t.data_ptr() && t.numel() > 0) throw Error(fmt::format("{}: {} has a null data pointer", function, name));
}

void check_not_empty(const char* function, const TensorView& x) {
  if (x.numel() == 0) {
    throw Error(
        fmt::format("{}: input has no elements (shape {}), expected at least one", function, shape_string(x.shape())));
  }
  check_data(function, "input", x);
}

}  // namespace

// x of (N, C, *spatial).
Geometry check_channels_input(const char* function, const TensorView& x, bool allow_empty) {
  if (x.dim() < 2 || x.dim() > 5) {
    throw Error(
        fmt::format("{}: input has {} dimensions (shape {}), expected 2 to 5: (N, C) or (N, C, *spatial) with "
                    "up to 3 spatial dimensions",
                    function, x.dim(), shape_string(x.shape())));
  }
  if (allow_empty) {
    check_data(function, "input", x);
  } else {
    check_not_empty(function, x);
  }
  Geometry g{x.size(0), x.size(1), 1, Layout::nchw, x.shape()};
  for (int64_t d = 2; d < x.dim(); d++) g.spatial *= x.size(d);
  const bool nchw = x.is_contiguous(), nhwc = x.is_channels_last();
  if (!nchw && !nhwc) {
    throw Error(
        fmt::format("{}: input has strides {} for shape {}, expected a dense NCHW layout (strides {}) or NHWC "
                    "(channels-last, strides {}); FusedNorm does not copy into another layout",
                    function, strides_string(x), g.shape(), contiguous_strides_string(x.shape()),
                    strides_string(TensorView::channels_last(nullptr, x.shape()))));
  }
  // Both hold when the channel axis or the spatial extent is 1 (or N is 1): then the memory order is the same,
  // and the NHWC kernels vectorise over channels, which is the only axis longer than 1 when S is 1.
  g.layout = nhwc && (!nchw || g.spatial == 1) ? Layout::nhwc : Layout::nchw;
  if (g.channels * g.spatial > kInt32Max || g.batch > kInt32Max) {
    throw Error(
        fmt::format("{}: input has shape {}: one sample (C x spatial = {}) or N exceeds 2^31 - 1 elements, "
                    "the most a kernel dimension can address",
                    function, g.shape(), g.channels * g.spatial));
  }
  return g;
}

// x of (*, normalized_shape).
Geometry check_rows_input(const char* function, const TensorView& x, const std::vector<int64_t>& normalized_shape) {
  const std::string normalized = shape_string(normalized_shape);
  if (normalized_shape.empty()) {
    throw Error(
        fmt::format("{}: normalized_shape is [], expected at least one dimension (the trailing dimensions "
                    "of input {})",
                    function, shape_string(x.shape())));
  }
  const size_t k = normalized_shape.size();
  if (x.shape().size() < k || !std::equal(normalized_shape.begin(), normalized_shape.end(), x.shape().end() - k)) {
    throw Error(
        fmt::format("{}: input has shape {}, expected [*, {}]: its trailing dimensions equal to "
                    "normalized_shape {}",
                    function, shape_string(x.shape()), fmt::join(normalized_shape, ", "), normalized));
  }
  check_not_empty(function, x);
  Geometry g{1, 1, 1, Layout::nchw, x.shape(), true};
  for (size_t d = 0; d < x.shape().size(); d++) (d < x.shape().size() - k ? g.batch : g.spatial) *= x.shape()[d];
  if (!x.is_contiguous()) {
    throw Error(
        fmt::format("{}: input has strides {} for shape {}, expected contiguous (row-major, strides {}); "
                    "FusedNorm does not copy into another layout",
                    function, strides_string(x), g.shape(), contiguous_strides_string(x.shape())));
  }
  if (g.spatial > kInt32Max || g.batch > kInt32Max) {
    throw Error(
        fmt::format("{}: input has shape {}: a row (the {} elements of normalized_shape {}) or the number "
                    "of rows ({}) exceeds 2^31 - 1, the most a kernel dimension can address",
                    function, g.shape(), g.spatial, normalized, g.batch));
  }
  return g;
}

namespace {

// The tensors shaped like x, where given: its shape, and dense in its layout.
void check_like_input(const char* function, const TensorRefs& t, const Geometry& g) {
  for (auto [name, member] : {std::pair{"output", &TensorRefs::output},
                              {"residual", &TensorRefs::residual},
                              {"grad_output", &TensorRefs::grad_output},
                              {"grad_input", &TensorRefs::grad_input},
                              {"grad_residual", &TensorRefs::grad_residual}}) {
    const TensorView* view = t.*member;
    if (!view) continue;
    if (!std::ranges::equal(view->shape(), g.sizes)) {
      throw Error(fmt::format("{}: {} has shape {}, expected {} (the shape of input)", function, name,
                              shape_string(view->shape()), g.shape()));
    }
    check_data(function, name, *view);
    if (!dense_in(*view, g.layout)) {
      throw Error(fmt::format("{}: {} has strides {}, expected {} ({}, the layout of input)", function, name,
                              strides_string(*view),
                              strides_string(TensorView::with_layout(nullptr, view->shape(), g.layout)),
                              g.rows ? "contiguous" : fmt::format("dense {}", to_string(g.layout))));
    }
  }
}

// The element types: x, and those like it in its dtype; weight and bias (and their gradients, as PyTorch makes them
// the parameter's) float32 or x's dtype, all four the same; the statistics float32 whatever x's dtype.
void check_dtypes(const char* function, const TensorRefs& t) {
  const DType x = t.input->dtype();
  for (auto [name, view] : {std::pair{"output", t.output},
                            {"residual", t.residual},
                            {"grad_output", t.grad_output},
                            {"grad_input", t.grad_input},
                            {"grad_residual", t.grad_residual}}) {
    if (view && view->dtype() != x) {
      throw Error(fmt::format("{}: {} has dtype {}, expected {} (the dtype of input)", function, name,
                              name_of(view->dtype()), name_of(x)));
    }
  }
  const char* first_name = nullptr;
  const TensorView* first = nullptr;
  for (auto [name, view] : {std::pair{"weight", t.weight},
                            {"bias", t.bias},
                            {"grad_weight", t.grad_weight},
                            {"grad_bias", t.grad_bias}}) {
    if (!view) continue;
    if (view->dtype() != DType::float32 && view->dtype() != x) {
      throw Error(fmt::format("{}: {} has dtype {}, expected float32 or {} (the dtype of input)", function, name,
                              name_of(view->dtype()), name_of(x)));
    }
    if (first && view->dtype() != first->dtype()) {
      throw Error(fmt::format("{}: {} has dtype {}, expected {} (the dtype of {}: the parameters and their "
                              "gradients share one)",
                              function, name, name_of(view->dtype()), name_of(first->dtype()), first_name));
    }
    if (!first) first = view, first_name = name;
  }
  for (auto [name, view] : {std::pair{"running_mean", t.running_mean},
                            {"running_var", t.running_var},
                            {"save_mean", t.save_mean},
                            {"save_invstd", t.save_invstd}}) {
    if (view && view->dtype() != DType::float32) {
      throw Error(fmt::format("{}: {} has dtype {}, expected float32 (statistics are float32 whatever the dtype "
                              "of input, {})",
                              function, name, name_of(view->dtype()), name_of(x)));
    }
  }
}

// The per-channel (or, for rows, per-element) tensors where given.
constexpr std::pair<const char*, const TensorView* TensorRefs::*> kParameters[] = {
    {"weight", &TensorRefs::weight},
    {"bias", &TensorRefs::bias},
    {"running_mean", &TensorRefs::running_mean},
    {"running_var", &TensorRefs::running_var},
    {"grad_weight", &TensorRefs::grad_weight},
    {"grad_bias", &TensorRefs::grad_bias}};

// What one statistic covers, for messages: "N x C = {} x {}" with a and b (formatted only on an error).
struct StatisticsWhat {
  const char* format;
  int64_t a = 0, b = 0;
};

void check_statistics(const char* function, const char* name, const TensorView* t, int64_t count,
                      const StatisticsWhat& what, const Geometry& g) {
  if (!t) return;
  if (t->numel() != count) {
    throw Error(fmt::format("{}: {} has {} elements (shape {}), expected {} ({}, for input {})", function, name,
                            t->numel(), shape_string(t->shape()), count,
                            fmt::format(fmt::runtime(what.format), what.a, what.b), g.shape()));
  }
  if (!t->is_contiguous()) {
    throw Error(fmt::format("{}: {} has strides {} for shape {}, expected {} (dense)", function, name,
                            strides_string(*t), shape_string(t->shape()), contiguous_strides_string(t->shape())));
  }
  check_data(function, name, *t);
}

void check_per_channel(const char* function, const char* name, const TensorView* t, const Geometry& g) {
  if (!t) return;
  if (t->dim() != 1) {
    throw Error(fmt::format("{}: {} has shape {}, expected [{}] (one per channel of input {})", function, name,
                            shape_string(t->shape()), g.channels, g.shape()));
  }
  if (t->size(0) != g.channels) {
    throw Error(fmt::format("{}: {} has {} elements, expected {} (one per channel of input {})", function, name,
                            t->size(0), g.channels, g.shape()));
  }
  if (t->stride(0) != 1 && g.channels > 1) {
    throw Error(fmt::format("{}: {} has stride {}, expected 1 (dense)", function, name, t->stride(0)));
  }
  check_data(function, name, *t);
}

void check_saved_statistics(const char* function, const TensorRefs& t, int64_t count, const StatisticsWhat& what,
                            const Geometry& g) {
  check_statistics(function, "save_mean", t.save_mean, count, what, g);
  check_statistics(function, "save_invstd", t.save_invstd, count, what, g);
}

// One tensor an epilogue uses: required when `used`, refused otherwise. `users` says which epilogues use it.
void check_epilogue_tensor(const char* function, Epilogue epilogue, const char* name,
                           const TensorView* t, bool used, const char* what, const char* users,
                           const Geometry& g) {
  if (used && !t) {
    throw Error(fmt::format("{}: {} is absent, expected {} (the shape and layout of input {}): epilogue {} needs it",
                            function, name, what, g.shape(), to_string(epilogue)));
  }
  if (!used && t) {
    throw Error(fmt::format("{}: {} is given, expected none: epilogue {} does not use it ({})", function, name,
                            to_string(epilogue), users));
  }
}

// The bytes a view may touch, [first, last).
std::pair<const char*, const char*> extent_in_memory(const TensorView& t) {
  const std::span<const int64_t> shape = t.shape(), strides = t.strides();
  int64_t last = 0;
  for (size_t d = 0; d < shape.size(); d++) last += (shape[d] - 1) * strides[d];
  const char* first = static_cast<const char*>(t.data_ptr());
  return {first, first + (last + 1) * t.element_size()};
}

// A tensor of a call under the name messages use; absent (view null) when the caller did not give it. Its extent in
// memory is computed once, not per pair compared (per pair, the checks were about a third of the runtime's own time
// in a BatchNorm1d [32, 64] layer step, docs/PERFORMANCE.md).
struct Named {
  Named(const char* name_, const TensorView* view_, const TensorView* in_place_of_ = nullptr)
      : name(name_), view(view_), in_place_of(in_place_of_) {
    if (view) std::tie(first, last) = extent_in_memory(*view);
  }
  const char* name;
  const TensorView* view;
  // An elementwise output may be exactly this input (in place): it reads each element before writing it.
  const TensorView* in_place_of = nullptr;
  const char* first = nullptr;  // [first, last): the bytes the view may touch
  const char* last = nullptr;
};

void check_no_overlap(const char* function, const Named& out, const Named& in) {
  if (!out.view || !in.view) return;
  const bool in_place_allowed = out.in_place_of == in.view;
  if (in_place_allowed && out.view->data_ptr() == in.view->data_ptr() && std::ranges::equal(out.view->strides(), in.view->strides())) return;
  if (out.first < in.last && in.first < out.last) {
    throw Error(fmt::format(
        "{}: {} overlaps {} in memory{}", function, out.name, in.name,
        in_place_allowed ? ", expected the same view (in place) or disjoint memory" : ", expected disjoint memory"));
  }
}

// Each output against every input, then against the outputs before it.
void check_disjoint(const char* function, std::initializer_list<Named> outputs, std::initializer_list<Named> inputs) {
  for (auto out = outputs.begin(); out != outputs.end(); ++out) {
    for (const Named& in : inputs) check_no_overlap(function, *out, in);
    for (auto earlier = outputs.begin(); earlier != out; ++earlier) check_no_overlap(function, *out, *earlier);
  }
}

}  // namespace

std::array<Dim, 3> Geometry::dims() const {
  if (layout == Layout::nchw) return {{{spatial, 1}, {channels, spatial}, {batch, channels * spatial}}};
  return {{{channels, 1}, {spatial, channels}, {batch, channels * spatial}}};
}

Geometry check_channels_call(const char* function, const TensorRefs& t, Direction direction, Norm norm,
                             Epilogue epilogue, int64_t num_groups, bool allow_empty) {
  const Geometry g = check_channels_input(function, *t.input, allow_empty);
  check_dtypes(function, t);
  const bool relu = epilogue == Epilogue::relu || epilogue == Epilogue::add_relu;
  const bool add = epilogue == Epilogue::add_relu;
  if (direction == Direction::backward) {
    check_epilogue_tensor(function, epilogue, "output", t.output, relu, "the forward's y, whose sign is the mask",
                          "relu and add_relu do", g);
    check_epilogue_tensor(function, epilogue, "grad_residual", t.grad_residual, add, "dz, the residual's gradient",
                          "add_relu writes it", g);
  } else {
    check_epilogue_tensor(function, epilogue, "residual", t.residual, add, "z", "add_relu adds it", g);
  }
  check_like_input(function, t, g);
  for (auto [name, member] : kParameters) check_per_channel(function, name, t.*member, g);
  switch (norm) {
    case Norm::batch:  // as PyTorch's native_batch_norm returns them
      check_per_channel(function, "save_mean", t.save_mean, g);
      check_per_channel(function, "save_invstd", t.save_invstd, g);
      break;
    case Norm::instance:
      check_saved_statistics(function, t, g.batch * g.channels, {"N x C = {} x {}", g.batch, g.channels}, g);
      break;
    default:  // group: runs of C / num_groups consecutive channels (PyTorch's and ONNX's)
      if (num_groups < 1 || g.channels % num_groups != 0) {
        throw Error(fmt::format("{}: num_groups is {}, expected a divisor of C = {} (input {})", function, num_groups,
                                g.channels, g.shape()));
      }
      check_saved_statistics(function, t, g.batch * num_groups,
                             {"N x num_groups = {} x {}", g.batch, num_groups}, g);
  }
  return g;
}

Geometry check_rows_call(const char* function, const TensorRefs& t, const std::vector<int64_t>& normalized_shape) {
  const Geometry g = check_rows_input(function, *t.input, normalized_shape);
  check_dtypes(function, t);
  check_like_input(function, t, g);
  for (auto [name, member] : kParameters) {
    const TensorView* view = t.*member;
    if (!view) continue;
    if (!std::ranges::equal(view->shape(), normalized_shape)) {
      throw Error(fmt::format("{}: {} has shape {}, expected {} (normalized_shape)", function, name,
                              shape_string(view->shape()), shape_string(normalized_shape)));
    }
    if (!view->is_contiguous()) {
      throw Error(fmt::format("{}: {} has strides {}, expected {} (contiguous)", function, name, strides_string(*view),
                              contiguous_strides_string(normalized_shape)));
    }
    check_data(function, name, *view);
  }
  check_saved_statistics(function, t, g.batch, {"one per row, the product of the dimensions before normalized_shape"},
                         g);
  return g;
}

void check_backward_statistics(const char* function, const TensorRefs& t, bool batch_statistics, double eps,
                               const char* option) {
  if (batch_statistics && !(t.save_mean && t.save_invstd)) {
    throw Error(fmt::format("{}: {} is absent, expected save_mean and save_invstd from the forward ({} = true)",
                            function, t.save_mean ? "save_invstd" : "save_mean", option));
  }
  if (!batch_statistics) {
    if (!(t.running_mean && t.running_var)) {
      throw Error(
          fmt::format("{}: {} is absent, expected running_mean and running_var: the forward ({} = false) "
                      "normalized with them",
                      function, t.running_mean ? "running_var" : "running_mean", option));
    }
    check_eps(function, eps);
  }
}

void check_eps(const char* function, double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) {
    throw Error(fmt::format("{}: eps is {}, expected a finite number >= 0", function, eps));
  }
}

// In [0, 1]: the weight of the batch in a moving average. (Finite but outside, 1e300 became inf as the kernels'
// float32 and the running statistics NaN.)
void check_momentum(const char* function, double momentum, const char* otherwise) {
  if (!(momentum >= 0.0 && momentum <= 1.0)) {
    throw Error(fmt::format("{}: momentum is {}, expected a number in [0, 1]{}", function, momentum, otherwise));
  }
}

void check_both_or_neither(const char* function, const char* name_a, const TensorView* a, const char* name_b,
                           const TensorView* b) {
  if ((a != nullptr) != (b != nullptr)) {
    throw Error(fmt::format("{}: {} is given but {} is not, expected both or neither", function, a ? name_a : name_b,
                            a ? name_b : name_a));
  }
}

void check_more_than_one(const char* function, int64_t values, const char* what, const Geometry& g) {
  if (values <= 1) {
    throw Error(fmt::format("{}: Expected more than 1 {} when training, got input size {}", function, what, g.shape()));
  }
}

void check_forward_disjoint(const char* function, const TensorRefs& t, bool commits_running) {
  check_disjoint(function,
                 {{"output", t.output, t.input}, {"save_mean", t.save_mean}, {"save_invstd", t.save_invstd}},
                 {{"input", t.input},
                  {"residual", t.residual},
                  {"weight", t.weight},
                  {"bias", t.bias},
                  {"running_mean", t.running_mean},
                  {"running_var", t.running_var}});
  // Running statistics overlapping each other would overwrite one another's update; overlapping an input, they
  // would change it.
  if (commits_running) {
    check_disjoint(function, {{"running_mean", t.running_mean}, {"running_var", t.running_var}},
                   {{"input", t.input}, {"residual", t.residual}, {"weight", t.weight}, {"bias", t.bias}});
  }
}

void check_backward_disjoint(const char* function, const TensorRefs& t) {
  check_disjoint(function,
                 {{"grad_input", t.grad_input},
                  {"grad_residual", t.grad_residual},
                  {"grad_weight", t.grad_weight},
                  {"grad_bias", t.grad_bias}},
                 {{"input", t.input},
                  {"grad_output", t.grad_output},
                  {"output", t.output},
                  {"weight", t.weight},
                  {"bias", t.bias},
                  {"save_mean", t.save_mean},
                  {"save_invstd", t.save_invstd},
                  {"running_mean", t.running_mean},
                  {"running_var", t.running_var}});
}

}  // namespace fusednorm::detail
