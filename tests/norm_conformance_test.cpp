// The normalization family through the public functional API, against the float64 reference
// (tests/support/norm_reference.h): InstanceNorm, GroupNorm, LayerNorm, RMSNorm, and BatchNorm's epilogues
// (batch_norm_test.cpp has BatchNorm without one: running statistics, in place, long rows and the rest).
//
// NormTest is the matrix, read from variants(): every (norm, layout, epilogue, affine) the build made kernels
// for, on every instruction set this CPU runs, each call checked to have run exactly that variant (dispatch's
// report). It runs the forward in training and the backward over the norm's shapes (odd sizes, the real
// networks' shapes scaled down, a cache-resident one), and a finite-difference gradient check on a tiny one.
// EvaluationTest: BatchNorm and InstanceNorm with running statistics. HardNumericsTest: a mean 1e4 times the
// standard deviation, variance below eps, NaN in one statistics group. ConventionsTest: where PyTorch and ONNX
// differ, which convention holds; and an epilogue the build has no kernel for is refused.
//
// Every case runs for each storage type the build has kernels of (float32, bfloat16, float16: the 16-bit ones with
// float32 parameters, and StorageTypeParametersTest with 16-bit ones), BatchNorm without an epilogue in 16 bits
// too (batch_norm_test.cpp has its float32 kernels). The autoscheduled variants are float32 only.
//
// Standards: fresh random inputs seeded from the test's name; every output poisoned with NaN before the call
// and every element checked; the error metric and tolerances of tests/support/test_data.h (relative to the
// tensor's scale, 1e-5 for float32, plus the unit roundoff for an output rounded to 16 bits).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <list>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/epilogue.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "support/norm_reference.h"
#include "support/shapes.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using reference::Norm;
using test::close;
using test::kFloat32Tolerance;
using test::Random;
using test::Scale;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kEps = 1e-5;             // every functional API's default but RMSNorm's
constexpr double kTorchRmsEps = 0x1p-23;  // RMSNorm's eps=None: torch.finfo(torch.float32).eps
constexpr double kMomentum = 0.1;

constexpr Epilogue kEpilogues[] = {Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu};
constexpr Norm kNorms[] = {Norm::batch, Norm::instance, Norm::group, Norm::layer, Norm::rms};

// The names variants() and the kernels use, in the order of reference::Norm.
constexpr const char* kNormNames[] = {"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"};
const char* to_string(Norm norm) { return kNormNames[static_cast<int>(norm)]; }

// The API has an epilogue option for BatchNorm and GroupNorm only.
bool takes_epilogue(Norm norm) { return norm == Norm::batch || norm == Norm::group; }
bool has_channels(Norm norm) { return norm == Norm::batch || norm == Norm::instance || norm == Norm::group; }
bool has_running_statistics(Norm norm) { return norm == Norm::batch || norm == Norm::instance; }

// ---------------------------------------------------------------------------------------------------------
// The variants, from variants().

struct Variant {
  Norm norm;
  Layout layout;
  Epilogue epilogue;
  bool affine;
  std::string isa;
  DType dtype = DType::float32;  // of x and the tensors like it

  bool operator==(const Variant&) const = default;
};

std::string variant_name(const Variant& v) {
  return std::string(to_string(v.norm)) + "_" + to_string(v.epilogue) + "_" + to_string(v.layout) + "_" +
         (v.affine ? "affine" : "plain") + (v.dtype == DType::float32 ? "" : std::string("_") + name(v.dtype)) +
         "_" + v.isa;
}

Variant variant_of(const VariantInfo& info) {
  Variant v{Norm::batch,
            info.layout == "nhwc" ? Layout::nhwc : Layout::nchw,
            Epilogue::none,
            info.affine,
            info.isa,
            parse_kind<DType>(info.dtype).value()};
  for (Norm norm : kNorms) {
    if (info.norm == to_string(norm)) v.norm = norm;
  }
  for (Epilogue epilogue : kEpilogues) {
    if (info.epilogue == to_string(epilogue)) v.epilogue = epilogue;
  }
  return v;
}

// Every (norm, layout, epilogue, affine, isa, dtype) with a forward_training kernel of the hand schedule (the one
// dispatch runs unless told otherwise; AutoscheduledTest has the others) that this CPU runs, in the order of
// variants(); and for each affine one, the call without parameters, which the channel norms' affine kernels run
// (weight 1, bias 0) where the build has no plain kernel.
std::vector<Variant> built_variants() {
  const std::vector<std::string> isas = supported_isas();
  std::vector<Variant> result;
  for (const VariantInfo& info : variants()) {
    if (info.direction != "forward_training" || info.schedule != "hand") continue;
    if (std::find(isas.begin(), isas.end(), info.isa) == isas.end()) continue;
    Variant v = variant_of(info);
    if (std::find(result.begin(), result.end(), v) == result.end()) result.push_back(v);
    v.affine = false;
    if (std::find(result.begin(), result.end(), v) == result.end()) result.push_back(v);
  }
  return result;
}

// Whether the kernel a call of `v` runs in `direction` is affine: a call with parameters runs an affine kernel,
// one without them the plain kernel where the build has one (of any instruction set), else the affine one.
bool runs_affine_kernel(const Variant& v, const std::string& direction) {
  if (v.affine) return true;
  const std::vector<VariantInfo> all = variants();
  return std::none_of(all.begin(), all.end(), [&](const VariantInfo& info) {
    return !info.affine && info.norm == to_string(v.norm) && info.direction == direction &&
           info.layout == to_string(v.layout) && info.epilogue == to_string(v.epilogue) &&
           info.dtype == fusednorm::name(v.dtype);
  });
}

bool epilogue_built(Norm norm, Epilogue epilogue) {
  const std::vector<VariantInfo> all = variants();
  return std::any_of(all.begin(), all.end(), [&](const VariantInfo& info) {
    return info.norm == to_string(norm) && info.epilogue == to_string(epilogue);
  });
}

// BatchNorm without an epilogue in float32 has batch_norm_test.cpp; its 16-bit variants are here.
bool batch_norm_test_has(const Variant& v) {
  return v.norm == Norm::batch && v.epilogue == Epilogue::none && v.dtype == DType::float32;
}

// The variants the API can reach (an epilogue only where it has the option), less those of batch_norm_test.cpp,
// filtered by `keep`.
std::vector<Variant> matrix(const std::function<bool(const Variant&)>& keep) {
  std::vector<Variant> result;
  for (const Variant& v : built_variants()) {
    if (v.epilogue != Epilogue::none && !takes_epilogue(v.norm)) continue;
    if (batch_norm_test_has(v)) continue;
    if (keep(v)) result.push_back(v);
  }
  return result;
}

std::string case_name(const ::testing::TestParamInfo<Variant>& info) {
  return test::identifier(variant_name(info.param));
}

// The variant the last call ran, from dispatch's report, and what variants() says it is. either_layout: the
// tensors are both nchw and nhwc (one channel, or no spatial extent), so dispatch may take either kernel.
::testing::AssertionResult ran(const Variant& expected, const std::string& direction, bool either_layout) {
  const std::string report = last_dispatch_report();
  const size_t at = report.find(" ran ");
  if (at == std::string::npos) return ::testing::AssertionFailure() << "no variant ran: " << report;
  const size_t begin = at + 5;
  const std::string name = report.substr(begin, report.find_first_of(" \n", begin) - begin);
  for (const VariantInfo& info : variants()) {
    if (info.name != name) continue;
    if (info.norm == to_string(expected.norm) && info.direction == direction &&
        (either_layout || info.layout == to_string(expected.layout)) && info.epilogue == to_string(expected.epilogue) &&
        info.affine == runs_affine_kernel(expected, direction) && info.isa == expected.isa &&
        info.dtype == fusednorm::name(expected.dtype)) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "ran " << name << ", expected the " << direction << " kernel of "
                                         << variant_name(expected);
  }
  return ::testing::AssertionFailure() << "ran " << name << ", which variants() does not list";
}

// ---------------------------------------------------------------------------------------------------------
// Shapes.

struct Shape {
  std::string name;
  std::vector<int64_t> shape;
  int64_t groups = 1;           // GroupNorm
  int64_t normalized_dims = 1;  // LayerNorm, RMSNorm
};

int64_t spatial_size(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin() + 2, shape.end(), int64_t{1}, std::multiplies<>());
}

std::vector<Shape> shapes_for(Norm norm) {
  std::vector<Shape> result;
  auto add_named = [&](const std::vector<shapes::NamedShape>& list) {
    for (const auto& s : list) {
      // InstanceNorm in training needs more than one value per (sample, channel), as PyTorch's does.
      if (norm != Norm::instance || spatial_size(s.shape) > 1) result.push_back({s.name, s.shape});
    }
  };
  auto add_groups = [&](const std::vector<shapes::GroupNormShape>& list) {
    for (const auto& s : list) result.push_back({s.name, s.shape, s.groups});
  };
  auto add_rows = [&](const std::vector<shapes::RowsShape>& list) {
    for (const auto& s : list) result.push_back({s.name, s.shape, 1, s.normalized_dims});
  };
  switch (norm) {
    case Norm::batch:
      add_named(shapes::odd_sizes());
      add_named(shapes::mlp_batch_norm_1d_small());
      add_named(shapes::cache_resident());
      break;
    case Norm::instance:
      add_named(shapes::odd_sizes());
      add_named(shapes::cache_resident());
      break;
    case Norm::group:
      add_groups(shapes::group_norm_odd_sizes());
      add_groups(shapes::unet_group_norm_small());
      add_groups(shapes::cache_resident_group_norm());
      break;
    case Norm::layer:
    case Norm::rms:
      add_rows(shapes::rows_odd_sizes());
      add_rows(shapes::transformer_rows_small());
      add_rows(shapes::cache_resident_rows());
      break;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------
// One problem: random inputs, NaN-poisoned outputs, the tensor structs of each call, and the reference.

// Each statistics group has its own mean (of magnitude in [min_mean, 2), either sign) and spread (in [0.5, 2)),
// so a kernel that mixes groups up, or normalizes with another group's statistics, is caught.
std::vector<float> grouped_input(const reference::Grouping& g, Random& rng, double min_mean = 0.0) {
  std::vector<double> mean, spread;
  for (int64_t k = 0; k < g.count(); k++) {
    mean.push_back(rng.uniform(min_mean, 2.0) * (rng.uniform() < 0.5 ? -1 : 1));
    spread.push_back(rng.uniform(0.5, 2.0));
  }
  std::vector<float> x(static_cast<size_t>(g.d.numel()));
  reference::for_each_element(g, [&](int64_t i, int64_t, int64_t k) {
    x[static_cast<size_t>(i)] =
        static_cast<float>(mean[static_cast<size_t>(k)] + spread[static_cast<size_t>(k)] * rng.standard());
  });
  return x;
}

// dy's means are at least 0.5 in magnitude: the weight and bias gradients are sums over a channel's elements,
// and one that random data cancels to near 0 (with C = 1 the whole tensor) has an error of float32's epsilon
// times the sum of its terms' magnitudes whatever computes it, far above 1e-5 of its own.
constexpr double kGradientMinMean = 0.5;

reference::Grouping grouping_of(Norm norm, const Shape& shape, Layout layout) {
  if (!has_channels(norm)) {
    const auto split = shape.shape.end() - shape.normalized_dims;
    const int64_t rows = std::accumulate(shape.shape.begin(), split, int64_t{1}, std::multiplies<>());
    const int64_t features = std::accumulate(split, shape.shape.end(), int64_t{1}, std::multiplies<>());
    return reference::Grouping::rows(norm, rows, features);
  }
  const reference::Dims d = test::dims_of(shape.shape, layout);
  switch (norm) {
    case Norm::instance: return reference::Grouping::instance(d);
    case Norm::group: return reference::Grouping::group(d, shape.groups);
    default: return reference::Grouping::batch(d);
  }
}

// With 16-bit storage the values live in the float vectors as the storage type holds them (x, z, dy rounded
// when made; outputs widened after each call): the reference and every comparison read them as for float32.
struct Problem {
  Problem(const Variant& v, Shape shape_, Random& rng)
      : norm(v.norm),
        layout(v.layout),
        epilogue(v.epilogue),
        affine(v.affine),
        dtype(v.dtype),
        shape(std::move(shape_)),
        g(grouping_of(norm, shape, layout)),
        x(grouped_input(g, rng)),
        z(test::random_vector(g.d.numel(), rng, -1.0, 1.0)),
        dy(grouped_input(g, rng, kGradientMinMean)),
        y(test::poisoned(g.d.numel())),
        dx(test::poisoned(g.d.numel())),
        dz(test::poisoned(g.d.numel())),
        weight(test::random_vector(g.d.c, rng, 0.5, 2.0)),
        bias(test::random_vector(g.d.c, rng, -1.0, 1.0)),
        running_mean(test::random_vector(g.d.c, rng, -1.0, 1.0)),
        running_var(test::random_vector(g.d.c, rng, 0.5, 2.0)),
        save_mean(test::poisoned(g.count())),
        save_invstd(test::poisoned(g.count())),
        grad_weight(test::poisoned(g.d.c)),
        grad_bias(test::poisoned(g.d.c)),
        num_batches_tracked(static_cast<int64_t>(rng.uniform(0, 100))) {
    round_inputs();
  }

  Norm norm;
  Layout layout;
  Epilogue epilogue;
  bool affine;
  DType dtype;                                // of x, z, dy, y, dx, dz
  DType parameter_dtype = DType::float32;     // of weight, bias and their gradients: float32 or dtype
  bool bias_given = true;     // with affine: false gives the weight alone (bias 0, PyTorch's bias=False)
  std::optional<double> eps;  // std::nullopt: the API's default
  double momentum = kMomentum;
  Shape shape;
  reference::Grouping g;
  std::vector<float> x, z, dy, y, dx, dz, weight, bias, running_mean, running_var, save_mean, save_invstd, grad_weight,
      grad_bias;
  int64_t num_batches_tracked;

  bool with_bias() const { return affine && bias_given && norm != Norm::rms; }
  double eps_value() const { return eps.value_or(norm == Norm::rms ? kTorchRmsEps : kEps); }
  reference::Affine affine_parameters() const {
    return {affine ? weight.data() : nullptr, with_bias() ? bias.data() : nullptr};
  }
  const float* residual() const { return epilogue == Epilogue::add_relu ? z.data() : nullptr; }
  bool either_layout() const { return has_channels(norm) && (g.d.c == 1 || g.d.s == 1); }
  bool backward_takes_y() const { return epilogue == Epilogue::relu || epilogue == Epilogue::add_relu; }

  std::vector<int64_t> normalized_shape() const {
    return {shape.shape.end() - shape.normalized_dims, shape.shape.end()};
  }
  // The inputs as the storage types hold them: after making or changing x, z, dy, weight or bias.
  void round_inputs() {
    for (std::vector<float>* v : {&x, &z, &dy}) test::round_to(dtype, *v);
    for (std::vector<float>* v : {&weight, &bias}) test::round_to(parameter_dtype, *v);
  }
  // PyTorch's other mixed case: the parameters (and their gradients) in the storage type too.
  void parameters_in_storage_type() {
    parameter_dtype = dtype;
    round_inputs();
  }
  // Relative error allowed for an output in `type` (tests/support/test_data.h); `base` before the rounding.
  static double tolerance(DType type, double base = kFloat32Tolerance) { return test::storage_tolerance(type, base); }

  TensorView view(std::vector<float>& data) {
    const ElementPointer p = storage(data, dtype);
    return has_channels(norm) ? TensorView::with_layout(p, shape.shape, layout) : TensorView(p, shape.shape);
  }
  TensorView parameter(std::vector<float>& data, DType type = DType::float32) {
    const ElementPointer p = storage(data, type);
    return has_channels(norm) ? TensorView(p, {g.d.c}) : TensorView(p, normalized_shape());
  }
  // BatchNorm (C), InstanceNorm (N, C), GroupNorm (N, groups), LayerNorm and RMSNorm one per row.
  TensorView statistics(std::vector<float>& data) const {
    if (norm == Norm::batch) return TensorView(data.data(), {g.d.c});
    if (has_channels(norm)) return TensorView(data.data(), {g.d.n, g.per_sample()});
    return TensorView(data.data(), {g.d.n});
  }

  reference::Forward reference_forward() const {
    const reference::Running running{running_mean.data(), running_var.data(), momentum};
    return reference::forward(x.data(), g, affine_parameters(), eps_value(), epilogue, residual(),
                              has_running_statistics(norm) ? &running : nullptr);
  }

  // The reference's statistics rounded to float32, as a forward saves them, and its y, which the relu masks
  // of the backward read: the backward is then checked apart from the forward kernels.
  void save(const reference::Forward& ref) {
    for (size_t k = 0; k < save_invstd.size(); k++) {
      save_mean[k] = static_cast<float>(ref.mean[k]);
      save_invstd[k] = static_cast<float>(ref.invstd[k]);
    }
    for (size_t i = 0; i < y.size(); i++) y[i] = test::stored(dtype, ref.y[i]);
  }

  // The closed-form gradients of the saved statistics (and y), as the backward receives them.
  reference::Backward reference_backward() const {
    const std::vector<double> mean = test::to_double(save_mean), invstd = test::to_double(save_invstd);
    return reference::backward(x.data(), dy.data(), g, g.centred() ? mean.data() : nullptr, invstd.data(),
                               affine_parameters(), true, epilogue, y.data());
  }

  // Evaluation (BatchNorm, InstanceNorm): per channel, with the running statistics.
  std::vector<double> running_invstd() const {
    std::vector<double> invstd;
    for (float v : running_var) invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + eps_value()));
    return invstd;
  }
  reference::Grouping per_channel() const { return reference::Grouping::batch(g.d); }

  // The functional API's calls. training false: BatchNorm's evaluation, InstanceNorm's use_input_stats false.
  void forward(bool training = true);
  void backward(bool training = true);

 private:
  // A call's 16-bit copy of a vector: made when a view of it is, widened back into it after the call.
  struct Half {
    std::vector<float>* values;
    DType dtype;
    std::vector<uint16_t> bits;
  };
  std::list<Half> halves_;  // a list: the views point into it while more are made
  ElementPointer storage(std::vector<float>& data, DType type) {
    if (type == DType::float32) return data.data();
    Half& h = halves_.emplace_back(Half{&data, type, {}});
    for (float v : data) h.bits.push_back(test::to_bits(type, v));
    return {h.bits.data(), type};
  }
  // After a call, returning or throwing: the 16-bit copies back into the vectors.
  struct FinishCall {
    Problem& p;
    ~FinishCall() {
      for (Half& h : p.halves_) {
        for (size_t i = 0; i < h.bits.size(); i++) (*h.values)[i] = test::from_bits(h.dtype, h.bits[i]);
      }
      p.halves_.clear();
    }
  };

  template <typename Tensors>
  Tensors forward_tensors(bool training);
  template <typename Tensors>
  Tensors backward_tensors(bool training);
  BatchNormOptions batch_options(bool training) const;
  InstanceNormOptions instance_options(bool training) const;
  GroupNormOptions group_options() const;
};

// The tensors of a functional API's forward call, each field the struct has set from the problem: in training the
// saved statistics, in evaluation none; the running statistics where the norm has them (updated in training,
// read in evaluation); the residual for add_relu.
template <typename Tensors>
Tensors Problem::forward_tensors(bool training) {
  Tensors t;
  t.input = view(x);
  t.output = view(y);
  if (affine) t.weight = parameter(weight, parameter_dtype);
  if constexpr (requires { t.bias; }) {
    if (with_bias()) t.bias = parameter(bias, parameter_dtype);
  }
  if constexpr (requires { t.running_mean; }) {
    t.running_mean = parameter(running_mean);
    t.running_var = parameter(running_var);
  }
  if constexpr (requires { t.num_batches_tracked; }) t.num_batches_tracked = &num_batches_tracked;
  if constexpr (requires { t.save_mean; }) {
    if (training) t.save_mean = statistics(save_mean);
  }
  if (training) t.save_invstd = statistics(save_invstd);
  if constexpr (requires { t.residual; }) {
    if (epilogue == Epilogue::add_relu) t.residual = view(z);
  }
  return t;
}

// The backward's tensors likewise. BatchNorm gets the saved and the running statistics in both modes, different
// from each other, so a kernel that read the ones of the other mode fails; InstanceNorm gets the ones its mode
// uses. The forward's y for the relu masks, dz for add_relu, the bias for silu (which recomputes v).
template <typename Tensors>
Tensors Problem::backward_tensors(bool training) {
  Tensors t;
  t.grad_output = view(dy);
  t.input = view(x);
  t.grad_input = view(dx);
  if (affine) {
    t.weight = parameter(weight, parameter_dtype);
    t.grad_weight = parameter(grad_weight, parameter_dtype);
  }
  if constexpr (requires { t.grad_bias; }) {
    if (with_bias()) t.grad_bias = parameter(grad_bias, parameter_dtype);
  }
  if constexpr (requires { t.save_mean; }) {
    if (training || norm == Norm::batch) t.save_mean = statistics(save_mean);
  }
  if (training || norm == Norm::batch) t.save_invstd = statistics(save_invstd);
  if constexpr (requires { t.running_mean; }) {
    if (!training || norm == Norm::batch) {
      t.running_mean = parameter(running_mean);
      t.running_var = parameter(running_var);
    }
  }
  if constexpr (requires { t.bias; }) {
    if (with_bias() && epilogue == Epilogue::silu) t.bias = parameter(bias, parameter_dtype);
  }
  if constexpr (requires { t.output; }) {
    if (backward_takes_y()) t.output = view(y);
  }
  if constexpr (requires { t.grad_residual; }) {
    if (epilogue == Epilogue::add_relu) t.grad_residual = view(dz);
  }
  return t;
}

BatchNormOptions Problem::batch_options(bool training) const {
  BatchNormOptions options;
  options.training = training;
  options.eps = eps_value();
  options.momentum = momentum;
  options.epilogue = epilogue;
  return options;
}

InstanceNormOptions Problem::instance_options(bool training) const {
  InstanceNormOptions options;
  options.use_input_stats = training;
  options.eps = eps_value();
  options.momentum = momentum;
  return options;
}

GroupNormOptions Problem::group_options() const {
  GroupNormOptions options;
  options.num_groups = shape.groups;
  options.eps = eps_value();
  options.epilogue = epilogue;
  return options;
}

void Problem::forward(bool training) {
  const FinishCall finish{*this};
  switch (norm) {
    case Norm::batch:
      return batch_norm_forward(forward_tensors<BatchNormForwardTensors>(training), batch_options(training));
    case Norm::instance:
      return instance_norm_forward(forward_tensors<InstanceNormForwardTensors>(training), instance_options(training));
    case Norm::group: return group_norm_forward(forward_tensors<GroupNormForwardTensors>(true), group_options());
    case Norm::layer:
      return layer_norm_forward(forward_tensors<LayerNormForwardTensors>(true), {normalized_shape(), eps_value()});
    case Norm::rms: return rms_norm_forward(forward_tensors<RMSNormForwardTensors>(true), {normalized_shape(), eps});
  }
}

void Problem::backward(bool training) {
  const FinishCall finish{*this};
  switch (norm) {
    case Norm::batch:
      return batch_norm_backward(backward_tensors<BatchNormBackwardTensors>(training), batch_options(training));
    case Norm::instance:
      return instance_norm_backward(backward_tensors<InstanceNormBackwardTensors>(training),
                                    instance_options(training));
    case Norm::group: return group_norm_backward(backward_tensors<GroupNormBackwardTensors>(true), group_options());
    case Norm::layer:
      return layer_norm_backward(backward_tensors<LayerNormBackwardTensors>(true), {normalized_shape(), eps_value()});
    case Norm::rms: return rms_norm_backward(backward_tensors<RMSNormBackwardTensors>(true), {normalized_shape(), eps});
  }
}

// ---------------------------------------------------------------------------------------------------------
// Comparisons.

void expect_forward(const Problem& p, const reference::Forward& ref, int64_t batches_before) {
  EXPECT_TRUE(close("y", p.y, ref.y, Problem::tolerance(p.dtype)));
  if (p.g.centred()) {
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
  }
  EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
  if (has_running_statistics(p.norm)) {
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
  }
  if (p.norm == Norm::batch) {
    EXPECT_EQ(p.num_batches_tracked, batches_before + 1);
  }
}

// dx of a statistic over one or two elements is the small difference of terms of size invstd * |dy * weight|
// that cancel to within eps / (var + eps) (exactly, for LayerNorm's D = 1): float32 cannot resolve it however it
// is computed, so there its error is judged against the size of those terms rather than its own.
::testing::AssertionResult close_grad_input(const Problem& p, const std::vector<double>& ref, double tolerance) {
  if (p.g.members() > 2) return close("grad_input", p.dx, ref, tolerance);
  double terms = 0;
  reference::for_each_element(p.g, [&](int64_t i, int64_t c, int64_t k) {
    const double w = p.affine ? p.weight[static_cast<size_t>(c)] : 1.0;
    terms = std::max(terms, std::abs(p.save_invstd[static_cast<size_t>(k)] * p.dy[static_cast<size_t>(i)] * w));
  });
  std::vector<float> got = p.dx;
  std::vector<double> expected = ref;
  got.push_back(static_cast<float>(terms));  // the same value in both: it only sets the tensor's scale
  expected.push_back(static_cast<float>(terms));
  return close("grad_input (one or two elements per statistic: scale invstd * |dy * weight|)", got, expected,
               tolerance);
}

// `base`: the bound before the outputs' rounding to their storage types.
void expect_backward(const Problem& p, const reference::Backward& ref, double base = kFloat32Tolerance) {
  const double like_x = Problem::tolerance(p.dtype, base), parameter = Problem::tolerance(p.parameter_dtype, base);
  EXPECT_TRUE(close_grad_input(p, ref.dx, like_x));
  if (p.affine) {
    EXPECT_TRUE(close("grad_weight", p.grad_weight, ref.dweight, parameter));
  }
  if (p.with_bias()) {
    EXPECT_TRUE(close("grad_bias", p.grad_bias, ref.dbias, parameter));
  }
  if (p.epilogue == Epilogue::add_relu) {
    EXPECT_TRUE(close("grad_residual", p.dz, ref.dz, like_x));
  }
}

// One forward in training and its backward, both against the reference.
void check_training(Problem& p, const Variant& v) {
  const std::vector<float> x_before = p.x, z_before = p.z;
  const int64_t batches_before = p.num_batches_tracked;
  const reference::Forward ref = p.reference_forward();
  p.forward();
  EXPECT_TRUE(ran(v, "forward_training", p.either_layout()));
  expect_forward(p, ref, batches_before);
  EXPECT_TRUE(p.x == x_before && p.z == z_before) << "an input was modified";

  p.save(ref);
  p.backward();
  EXPECT_TRUE(ran(v, "backward", p.either_layout()));
  expect_backward(p, p.reference_backward());
}

// ---------------------------------------------------------------------------------------------------------
// The matrix.

class VariantTest : public ::testing::TestWithParam<Variant> {
 protected:
  Problem problem(Shape shape) { return Problem(variant_, std::move(shape), rng_); }

  const Variant variant_ = GetParam();
  test::ScopedMaxIsa isa_{GetParam().isa};
  Random rng_{test::seed_for_current_test()};
};

class NormTest : public VariantTest {};
INSTANTIATE_TEST_SUITE_P(Built, NormTest, ::testing::ValuesIn(matrix([](const Variant&) { return true; })), case_name);

TEST_P(NormTest, ForwardTrainingAndBackward) {
  for (const Shape& shape : shapes_for(variant_.norm)) {
    SCOPED_TRACE(shape.name + " " + shape_string(shape.shape) +
                 (variant_.norm == Norm::group ? ", groups " + std::to_string(shape.groups) : ""));
    Problem p = problem(shape);
    check_training(p, variant_);
  }
}

// Gradients against float64 central differences of the reference forward, for the loss L = sum(y * dy): this
// checks the backward's formulas themselves, where ForwardTrainingAndBackward checks the kernels against the
// reference's closed form. The relu masks are frozen at the forward's y, as the backward takes them (a central
// difference across a kink of max would measure neither side).
constexpr double kGradientTolerance = 1e-3;  // truncation of order h^2 = 1e-6 and float32 kernels

Shape tiny_shape(Norm norm) {
  switch (norm) {
    case Norm::batch: return {"tiny", {3, 2, 2, 3}};
    case Norm::instance: return {"tiny", {2, 3, 2, 3}};
    case Norm::group: return {"tiny", {2, 4, 2, 3}, 2};
    case Norm::layer:
    case Norm::rms: return {"tiny", {3, 2, 5}, 1, 2};
  }
  return {};
}

TEST_P(NormTest, GradientCheck) {
  Problem p = problem(tiny_shape(variant_.norm));
  // The kernels' own forward provides y and the saved statistics, as in a training step.
  p.forward();
  p.backward();
  const std::vector<float> y = p.y;
  auto loss = [&] {
    const std::vector<double> v = reference::forward(p.x.data(), p.g, p.affine_parameters(), p.eps_value()).y;
    double sum = 0;
    for (size_t i = 0; i < v.size(); i++) {
      double out = v[i];
      if (p.epilogue == Epilogue::relu) out = y[i] > 0 ? v[i] : 0.0;
      if (p.epilogue == Epilogue::add_relu) out = y[i] > 0 ? v[i] + p.z[i] : 0.0;
      if (p.epilogue == Epilogue::silu) out = v[i] * reference::sigmoid(v[i]);
      sum += out * static_cast<double>(p.dy[i]);
    }
    return sum;
  };
  reference::Backward numeric;
  for (float& v : p.x) numeric.dx.push_back(reference::central_difference(v, loss));
  for (float& v : p.weight) numeric.dweight.push_back(reference::central_difference(v, loss));
  for (float& v : p.bias) numeric.dbias.push_back(reference::central_difference(v, loss));
  for (float& v : p.z) numeric.dz.push_back(reference::central_difference(v, loss));
  expect_backward(p, numeric, kGradientTolerance);
}

// PyTorch's other mixed case, parameters in the storage type (a model cast whole to bfloat16): weight and bias
// 16-bit like x, and so their gradients, on the odd sizes. 16-bit variants only.
class StorageTypeParametersTest : public VariantTest {};
INSTANTIATE_TEST_SUITE_P(Built, StorageTypeParametersTest, ::testing::ValuesIn(matrix([](const Variant& v) {
                           return v.dtype != DType::float32 && v.affine;
                         })),
                         case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(StorageTypeParametersTest);  // a build without 16-bit kernels

TEST_P(StorageTypeParametersTest, ForwardTrainingAndBackward) {
  for (const Shape& shape : shapes_for(variant_.norm)) {
    SCOPED_TRACE(shape.name + " " + shape_string(shape.shape));
    Problem p = problem(shape);
    p.parameters_in_storage_type();
    check_training(p, variant_);
  }
}

// The best instruction set this CPU runs that the build has kernels for: dispatch's first choice. (The
// sanitizer presets build sse41 only.)
std::string best_built_isa() {
  for (const std::string& isa : supported_isas()) {
    for (const VariantInfo& info : variants()) {
      if (info.isa == isa) return isa;
    }
  }
  return "";
}

// The real networks' shapes at full size (tests/support/shapes.h, shared with the benchmark), each with the
// epilogue it has there: BatchNorm1d + ReLU in an MLP, GroupNorm + SiLU in a diffusion U-Net, LayerNorm and
// RMSNorm over transformer rows. On the best instruction set, both layouts: the other instruction sets run
// the same kernels' code paths on the scaled-down shapes above. Under an emulator (the arm-64 build under qemu)
// float32 only: 16-bit conversions are emulated there at 3 to 4 times float32's cost, and these shapes alone took
// 390 s of test time; the 16-bit code paths run on the scaled-down shapes there, and these shapes natively on x86-64.
#ifdef FUSEDNORM_TESTS_EMULATED
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif
class RealNetworkTest : public VariantTest {};
INSTANTIATE_TEST_SUITE_P(Built, RealNetworkTest, ::testing::ValuesIn(matrix([](const Variant& v) {
                           const Epilogue in_network = v.norm == Norm::batch   ? Epilogue::relu
                                                       : v.norm == Norm::group ? Epilogue::silu
                                                                               : Epilogue::none;
                           // BatchNorm1d's (N, C) is the same memory in both layouts: nchw alone.
                           const bool layout_differs = v.norm != Norm::batch || v.layout == Layout::nchw;
                           return v.isa == best_built_isa() && v.affine && v.norm != Norm::instance &&
                                  v.epilogue == in_network && layout_differs &&
                                  (v.dtype == DType::float32 || !kEmulated);
                         })),
                         case_name);

TEST_P(RealNetworkTest, ForwardTrainingAndBackward) {
  std::vector<Shape> full;
  switch (variant_.norm) {
    case Norm::batch:
      for (const auto& s : shapes::mlp_batch_norm_1d()) full.push_back({s.name, s.shape});
      break;
    case Norm::group:
      for (const auto& s : shapes::unet_group_norm()) full.push_back({s.name, s.shape, s.groups});
      break;
    default:
      for (const auto& s : shapes::transformer_rows()) full.push_back({s.name, s.shape, 1, s.normalized_dims});
  }
  for (const Shape& shape : full) {
    SCOPED_TRACE(shape.name + " " + shape_string(shape.shape));
    Problem p = problem(shape);
    check_training(p, variant_);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Evaluation with running statistics: BatchNorm (with its epilogues) and InstanceNorm (use_input_stats false,
// PyTorch's eval() with track_running_stats). Per channel, with the running mean and variance; the backward
// does not differentiate through them.

class EvaluationTest : public VariantTest {};
INSTANTIATE_TEST_SUITE_P(Built, EvaluationTest,
                         ::testing::ValuesIn(matrix([](const Variant& v) { return has_running_statistics(v.norm); })),
                         case_name);

// The forward and backward in evaluation against the reference; `kernel`: the variant they must run.
void check_evaluation(Problem& p, const Variant& kernel) {
    const std::vector<float> running_mean = p.running_mean, running_var = p.running_var;
    const std::vector<double> mean = test::to_double(p.running_mean), invstd = p.running_invstd();
    const std::vector<double> ref = reference::normalize(p.x.data(), p.per_channel(), mean.data(), invstd.data(),
                                                         p.affine_parameters(), p.epilogue, p.residual());
    p.forward(false);
    EXPECT_TRUE(ran(kernel, "forward_inference", p.either_layout()));
    EXPECT_TRUE(close("y", p.y, ref, Problem::tolerance(p.dtype)));
    EXPECT_TRUE(p.running_mean == running_mean && p.running_var == running_var)
        << "evaluation changed the running statistics";

    for (size_t i = 0; i < p.y.size(); i++) p.y[i] = test::stored(p.dtype, ref[i]);
    const reference::Backward ref_backward =
        reference::backward(p.x.data(), p.dy.data(), p.per_channel(), mean.data(), invstd.data(), p.affine_parameters(),
                            false, p.epilogue, p.y.data());
    p.backward(false);
    EXPECT_TRUE(ran(kernel, "backward", p.either_layout()));
    expect_backward(p, ref_backward);
}

TEST_P(EvaluationTest, ForwardAndBackward) {
  // InstanceNorm in evaluation runs BatchNorm's per-channel kernels (docs/KERNELS.md).
  Variant kernel = variant_;
  kernel.norm = Norm::batch;
  for (const Shape& shape : shapes_for(variant_.norm)) {
    SCOPED_TRACE(shape.name + " " + shape_string(shape.shape));
    Problem p = problem(shape);
    check_evaluation(p, kernel);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Hard numerics, for each norm of the family (batch_norm_test.cpp has float32 BatchNorm's), layout, instruction
// set, dtype and affine, without an epilogue; then every variant with ReLU or add + ReLU, BatchNorm's too.

class HardNumericsTest : public VariantTest {
 protected:
  // Several statistics groups of every kind, with sizes that leave vector tails.
  Shape hard_shape() const {
    switch (variant_.norm) {
      case Norm::group: return {"n3_c12_g4_13x17", {3, 12, 13, 17}, 4};
      case Norm::layer:
      case Norm::rms: return {"r17_d1000", {17, 1000}};
      default: return {"n3_c17_13x17", {3, 17, 13, 17}};
    }
  }
};
INSTANTIATE_TEST_SUITE_P(Built, HardNumericsTest, ::testing::ValuesIn(matrix([](const Variant& v) {
                           return v.epilogue == Epilogue::none;
                         })),
                         case_name);
// The same with ReLU and add + ReLU, BatchNorm's included: a NaN goes through ReLU as NaN, as torch.relu keeps it
// (the fuzz target call found BatchNorm + ReLU turning it into 0). Not SiLU: on the mean-1e4-sigma input its y is
// 1.6e-5 off (GroupNorm NHWC avx2), above the 1e-5 bound, which the bound's derivation does not cover yet.
INSTANTIATE_TEST_SUITE_P(Epilogues, HardNumericsTest, ::testing::ValuesIn(matrix([](const Variant& v) {
                           return v.epilogue == Epilogue::relu || v.epilogue == Epilogue::add_relu;
                         })),
                         case_name);

// Fills x group by group: value(statistic, rng) for each element.
template <typename Value>
void fill_by_statistic(Problem& p, const Value& value) {
  for (int64_t n = 0; n < p.g.d.n; n++)
    for (int64_t c = 0; c < p.g.d.c; c++)
      for (int64_t s = 0; s < p.g.d.s; s++)
        p.x[static_cast<size_t>(p.g.d.offset(n, c, s))] = static_cast<float>(value(p.g.index(n, c)));
  p.round_inputs();
}

std::vector<double> variance_from_invstd(const std::vector<float>& invstd, double eps) {
  std::vector<double> var;
  for (float v : invstd) var.push_back(1.0 / (static_cast<double>(v) * static_cast<double>(v)) - eps);
  return var;
}

// Each group's mean is 1e4 times its standard deviation (of either sign), the standard deviations spanning
// 1e-2 to 1e2: raw sums of x and x^2 in float32 would lose every digit of the variance. (RMSNorm's mean
// square is then about the mean's square, which float32 holds easily: the case checks that nothing else goes.)
// Float16 ends at 65504: its standard deviations span 1e-2 to 10^0.5. Rounded to 16 bits, a group's values
// fall on a few numbers 2^-8 (bfloat16) or 2^-11 (float16) of the mean apart, many groups on one (variance 0):
// the reference's statistics are those of the rounded values, which the kernel must reach as well.
TEST_P(HardNumericsTest, MeanTenThousandTimesTheStandardDeviation) {
  Problem p = problem(hard_shape());
  const double max_log_spread = p.dtype == DType::float16 ? 0.5 : 2.0;
  std::vector<double> spread;
  for (int64_t k = 0; k < p.g.count(); k++) spread.push_back(std::pow(10.0, rng_.uniform(-2.0, max_log_spread)));
  fill_by_statistic(p, [&](int64_t k) {
    const double sd = spread[static_cast<size_t>(k)];
    return (k % 2 ? -1e4 : 1e4) * sd + sd * rng_.standard();
  });
  const reference::Forward ref = p.reference_forward();
  p.forward();
  EXPECT_TRUE(close("y", p.y, ref.y, Problem::tolerance(p.dtype)));
  if (p.g.centred()) {
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean, kFloat32Tolerance, Scale::element));
  }
  // The variance where the reference's is not 0; where it is, invstd must be 1 / sqrt(eps).
  const std::vector<double> variance = variance_from_invstd(p.save_invstd, p.eps_value());
  std::vector<double> got_variance, ref_variance, got_invstd, ref_invstd;
  for (size_t k = 0; k < variance.size(); k++) {
    if (ref.biased_var[k] != 0) {
      got_variance.push_back(variance[k]);
      ref_variance.push_back(ref.biased_var[k]);
    } else {
      got_invstd.push_back(p.save_invstd[k]);
      ref_invstd.push_back(ref.invstd[k]);
    }
  }
  EXPECT_TRUE(close("1 / save_invstd^2 - eps (the variance)", got_variance, ref_variance, 1e-4, Scale::element));
  EXPECT_TRUE(close("save_invstd (variance 0)", got_invstd, ref_invstd, kFloat32Tolerance, Scale::element));

  p.save(ref);
  p.backward();
  expect_backward(p, p.reference_backward());
}

// Every value of a group equal up to 1e-6 noise (variance about 3e-13, far below eps), and group 0 exactly
// constant (variance 0): the variance must not come out negative (NaN) or swamp eps. RMSNorm's counterpart:
// values of about 1e-4, a mean square far below eps, and group 0 constant.
TEST_P(HardNumericsTest, VarianceBelowEps) {
  Problem p = problem(hard_shape());
  std::vector<double> value;
  for (int64_t k = 0; k < p.g.count(); k++) value.push_back(rng_.uniform(0.5, 2.0) * (k % 2 ? -1 : 1));
  const double noise = 1e-6;
  fill_by_statistic(p, [&](int64_t k) {
    const double v = value[static_cast<size_t>(k)];
    if (!p.g.centred()) return k == 0 ? 1e-4 : 1e-4 * v * rng_.uniform(0.5, 1.5);
    return k == 0 ? v : v + noise * rng_.standard();
  });
  const reference::Forward ref = p.reference_forward();
  p.forward();
  // Without an affine transform y is the tiny centred value itself, judged against its own scale.
  EXPECT_TRUE(close("y", p.y, ref.y, Problem::tolerance(p.dtype)));
  if (p.g.centred()) {
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean, kFloat32Tolerance, Scale::element));
  }
  EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd, kFloat32Tolerance, Scale::element));
  if (has_running_statistics(p.norm)) {
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean, kFloat32Tolerance, Scale::element));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var, kFloat32Tolerance, Scale::element));
  }
}

// A NaN in one element reaches its own statistics group only (as in PyTorch): that group's mean and every y
// of it are NaN, every other group's results finite and correct. Tried in the middle of a group and at the
// first element of the last group (where a kernel's shift for the statistics would come from).
TEST_P(HardNumericsTest, NanStaysInItsStatisticsGroup) {
  const Shape shape = hard_shape();
  const reference::Grouping g = grouping_of(variant_.norm, shape, variant_.layout);
  const int64_t channels_per_statistic = variant_.norm == Norm::group ? g.d.c / g.groups : 1;
  struct Where {
    int64_t n, c, s;
  };
  const Where first_of_last{g.d.n - 1, has_channels(variant_.norm) ? g.d.c - channels_per_statistic : 0, 0};
  for (Where where : {Where{1, g.d.c / 2, g.d.s / 2}, first_of_last}) {
    SCOPED_TRACE("NaN at n " + std::to_string(where.n) + ", c " + std::to_string(where.c) + ", s " +
                 std::to_string(where.s));
    Problem p = problem(shape);
    p.x[static_cast<size_t>(g.d.offset(where.n, where.c, where.s))] = kNaN;
    const size_t statistic = static_cast<size_t>(g.index(where.n, where.c));

    reference::Forward ref = p.reference_forward();
    ASSERT_TRUE(std::isnan(ref.invstd[statistic]));
    p.forward();
    // ref.y is NaN over the whole group and finite elsewhere: close() requires exactly that pattern.
    EXPECT_TRUE(close("y", p.y, ref.y, Problem::tolerance(p.dtype)));
    if (p.g.centred()) {
      EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
    }
    // The group's variance is NaN in the reference; a kernel may clamp it, so only the other groups'
    // variance-derived statistics are compared.
    std::vector<float> invstd = p.save_invstd;
    invstd[statistic] = kNaN;
    ref.invstd[statistic] = kNaN;
    EXPECT_TRUE(close("save_invstd (other groups)", invstd, ref.invstd));
    if (has_running_statistics(p.norm)) {
      EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
      std::vector<float> running_var = p.running_var;
      running_var[static_cast<size_t>(where.c)] = kNaN;
      ref.running_var[static_cast<size_t>(where.c)] = kNaN;
      EXPECT_TRUE(close("running_var (other channels)", running_var, ref.running_var));
    }

    // The backward: the NaN reaches the group's sums, so its dx are NaN, and so are the weight gradients of
    // the channels (features) the group covers.
    p.save(ref);
    p.backward();
    expect_backward(p, p.reference_backward());
  }
}

// ---------------------------------------------------------------------------------------------------------
// The autoscheduled variants (Mullapudi2016, Li2018, Adams2019; avx2, affine; generators/CMakeLists.txt), each
// run with set_schedule(its schedule): the training forward and the backward, and BatchNorm's evaluation forward
// and backward, against the reference. Their kernels are planned for the generator's estimates (ResNet-50's
// 32 x 256 x 56 x 56, 8192 rows of 1024) and may refuse other extents with a Halide bounds error: each check runs
// on the first shape of estimate_like_shapes() that the kernels accept (the estimate's layer at a smaller batch
// first, then the estimate itself), and is skipped, with every refusal's message, where they refuse all of them.

struct Autoscheduled {
  Variant variant;
  std::string schedule;
};

// The autoscheduled variants with a kernel of `direction` that this CPU runs.
std::vector<Autoscheduled> autoscheduled_variants(const std::string& direction) {
  const std::vector<std::string> isas = supported_isas();
  std::vector<Autoscheduled> result;
  for (const VariantInfo& info : variants()) {
    if (info.direction != direction || info.schedule == "hand") continue;
    if (std::find(isas.begin(), isas.end(), info.isa) == isas.end()) continue;
    result.push_back({variant_of(info), info.schedule});
  }
  return result;
}

std::vector<Shape> estimate_like_shapes(Norm norm) {
  if (!has_channels(norm)) return {{"rows.512x1024", {512, 1024}}, {"transformer.8192x1024", {8192, 1024}}};
  const int64_t groups = norm == Norm::group ? 32 : 1;
  return {{"resnet50.stage1.n2", {2, 256, 56, 56}, groups}, {"resnet50.stage1", {32, 256, 56, 56}, groups}};
}

class AutoscheduledTest : public ::testing::TestWithParam<Autoscheduled> {
 protected:
  // Runs `check` on the first shape whose calls the kernels accept; returns why each shape was refused, or ""
  // when one ran. Only a kernel's own error (a Halide bounds check) counts as a refusal.
  template <typename Check>
  std::string on_first_accepted_shape(const Check& check) {
    std::string refusals;
    for (const Shape& shape : estimate_like_shapes(variant_.norm)) {
      SCOPED_TRACE(shape.name + " " + shape_string(shape.shape));
      Problem p(variant_, shape, rng_);
      try {
        check(p);
        return "";
      } catch (const Error& e) {
        if (std::string(e.what()).find("failed (Halide error") == std::string::npos) throw;
        refusals += "\n  " + shape.name + " " + shape_string(shape.shape) + ": " + e.what();
      }
    }
    return refusals;
  }

  const Variant variant_ = GetParam().variant;
  const std::string schedule_ = GetParam().schedule;
  test::ScopedMaxIsa isa_{GetParam().variant.isa};
  test::ScopedSchedule scoped_schedule_{GetParam().schedule};
  Random rng_{test::seed_for_current_test()};
};

std::string autoscheduled_case_name(const ::testing::TestParamInfo<Autoscheduled>& info) {
  return test::identifier(variant_name(info.param.variant) + "_" + info.param.schedule);
}

INSTANTIATE_TEST_SUITE_P(Built, AutoscheduledTest, ::testing::ValuesIn(autoscheduled_variants("forward_training")),
                         autoscheduled_case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AutoscheduledTest);  // FUSEDNORM_BUILD_AUTOSCHEDULED=OFF

TEST_P(AutoscheduledTest, ForwardTrainingAndBackward) {
  const std::string refusals = on_first_accepted_shape([&](Problem& p) {
    check_training(p, variant_);
    EXPECT_NE(last_dispatch_report().find("(schedule " + schedule_ + ")"), std::string::npos)
        << last_dispatch_report();
  });
  if (!refusals.empty()) GTEST_SKIP() << "the " << schedule_ << " kernels refuse every shape tried:" << refusals;
}

// BatchNorm's evaluation: the variants with an autoscheduled forward_inference kernel.
class AutoscheduledEvaluationTest : public AutoscheduledTest {};
INSTANTIATE_TEST_SUITE_P(Built, AutoscheduledEvaluationTest,
                         ::testing::ValuesIn(autoscheduled_variants("forward_inference")), autoscheduled_case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AutoscheduledEvaluationTest);

TEST_P(AutoscheduledEvaluationTest, ForwardAndBackward) {
  const std::string refusals = on_first_accepted_shape([&](Problem& p) {
    check_evaluation(p, variant_);
    EXPECT_NE(last_dispatch_report().find("(schedule " + schedule_ + ")"), std::string::npos)
        << last_dispatch_report();
  });
  if (!refusals.empty()) GTEST_SKIP() << "the " << schedule_ << " kernels refuse every shape tried:" << refusals;
}

// ---------------------------------------------------------------------------------------------------------
// Conventions where PyTorch and ONNX differ, and what the API refuses. On the best instruction set: these are
// the runtime's semantics, the same for every kernel.

class ConventionsTest : public ::testing::Test {
 protected:
  // The variant of `norm` without an epilogue, affine as asked, on the best instruction set (the one dispatch
  // picks without a max_isa); nullopt if none.
  static std::optional<Variant> variant(Norm norm, bool affine, Layout layout = Layout::nchw) {
    const std::string best = best_built_isa();
    for (const Variant& v : built_variants()) {
      if (v.norm == norm && v.epilogue == Epilogue::none && v.affine == affine && v.layout == layout && v.isa == best) {
        return v;
      }
    }
    return std::nullopt;
  }

  Random rng_{test::seed_for_current_test()};
};

// RMSNorm's eps=None is torch.finfo(float32).eps = 2^-23 (about 1.2e-7), not ONNX's 1e-5: with a mean square
// of 1e-7 to 1e-6 the two give y several times apart. ONNX's must then be asked for.
TEST_F(ConventionsTest, RmsNormDefaultEpsIsTorchsFloat32Epsilon) {
  const std::optional<Variant> v = variant(Norm::rms, true);
  ASSERT_TRUE(v) << "no RMSNorm kernel built";
  for (std::optional<double> eps : {std::optional<double>(), std::optional<double>(1e-5)}) {
    SCOPED_TRACE(eps ? "eps 1e-5 (ONNX's default)" : "eps std::nullopt (PyTorch's default)");
    Problem p(*v, {"r5_d64", {5, 64}}, rng_);
    for (float& value : p.x) value *= 3e-4f;  // mean square 1e-7 to 1e-6
    p.eps = eps;
    const reference::Forward ref = p.reference_forward();
    const reference::Forward other_eps =
        reference::forward(p.x.data(), p.g, p.affine_parameters(), eps ? kTorchRmsEps : 1e-5);
    ASSERT_GT(std::abs(ref.invstd[0] - other_eps.invstd[0]), 0.5 * ref.invstd[0]) << "eps does not matter here";
    p.forward();
    EXPECT_TRUE(close("y", p.y, ref.y));
    EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
    p.save(ref);
    p.backward();
    expect_backward(p, p.reference_backward());
  }
}

// PyTorch's InstanceNorm with track_running_stats: running = (1 - momentum) running + momentum * the mean over
// samples of each (sample, channel)'s mean and unbiased variance (ONNX InstanceNormalization has no running
// statistics). Written out here from the per-sample statistics, over several steps, for momentum 0.1, 0.5 and
// 0 (PyTorch's InstanceNorm passes momentum=None as 0: the running statistics stay).
TEST_F(ConventionsTest, InstanceNormRunningStatistics) {
  const std::optional<Variant> v = variant(Norm::instance, true, Layout::nhwc);
  ASSERT_TRUE(v) << "no InstanceNorm kernel built";
  for (double momentum : {0.1, 0.5, 0.0}) {
    SCOPED_TRACE("momentum " + std::to_string(momentum));
    Problem p(*v, {"n3_c5_7x9", {3, 5, 7, 9}}, rng_);
    p.momentum = momentum;
    const double spatial = 63;
    for (int step = 1; step <= 3; step++) {
      SCOPED_TRACE("step " + std::to_string(step));
      p.x = grouped_input(p.g, rng_);
      const reference::Forward per_sample = reference::forward(p.x.data(), p.g, {}, kEps);
      std::vector<double> expected_mean, expected_var;
      for (int64_t c = 0; c < p.g.d.c; c++) {
        double mean = 0, var = 0;
        for (int64_t n = 0; n < p.g.d.n; n++) {
          mean += per_sample.mean[static_cast<size_t>(n * p.g.d.c + c)] / 3;
          var += per_sample.biased_var[static_cast<size_t>(n * p.g.d.c + c)] * spatial / (spatial - 1) / 3;
        }
        expected_mean.push_back((1 - momentum) * p.running_mean[static_cast<size_t>(c)] + momentum * mean);
        expected_var.push_back((1 - momentum) * p.running_var[static_cast<size_t>(c)] + momentum * var);
      }
      p.forward();
      EXPECT_TRUE(close("running_mean", p.running_mean, expected_mean));
      EXPECT_TRUE(close("running_var", p.running_var, expected_var));
    }
  }
}

// GroupNorm's scale and bias are per channel (PyTorch; ONNX GroupNormalization from opset 21), not per group
// (opset 18): weights that differ within each group must be applied channel by channel.
TEST_F(ConventionsTest, GroupNormScaleIsPerChannel) {
  const std::optional<Variant> v = variant(Norm::group, true);
  ASSERT_TRUE(v) << "no GroupNorm kernel built";
  Problem p(*v, {"n2_c6_g2_5x5", {2, 6, 5, 5}, 2}, rng_);
  // Within each group of three channels the weights differ by up to 8x and the biases by up to 4: one weight
  // and bias per group would be far off.
  p.weight = {0.5f, 1.0f, 2.0f, -1.0f, 3.0f, 0.25f};
  p.bias = {-1.0f, 0.0f, 1.0f, 2.0f, -2.0f, 0.5f};
  const reference::Forward ref = p.reference_forward();
  p.forward();
  EXPECT_TRUE(close("y", p.y, ref.y));
}

// GroupNorm's NHWC forward works in blocks of whole samples (schedule_nhwc_sample_blocked, generators/schedule_cpu.h):
// samples of 343 KiB (as float32) make blocks of 2 + 1 on x86-64 (1 MiB), the last one partial, and 3 blocks on
// arm-64 (512 KiB). The odd sizes fit one block, the U-Net shape of RealNetworkTest one sample per block. Every
// instruction set and dtype, here rather than in the shared shapes, where it would run for every epilogue too.
TEST_F(ConventionsTest, GroupNormNhwcOverSeveralBlocksOfSamples) {
  const Shape shape{"n3_c24_g4_60x61", {3, 24, 60, 61}, 4};
  int ran_variants = 0;
  for (const Variant& v : built_variants()) {
    if (v.norm != Norm::group || v.layout != Layout::nhwc || v.epilogue != Epilogue::none || !v.affine) continue;
    SCOPED_TRACE(case_name(::testing::TestParamInfo<Variant>(v, 0)));
    test::ScopedMaxIsa limit(v.isa);
    Problem p(v, shape, rng_);
    check_training(p, v);
    ran_variants++;
  }
  EXPECT_GT(ran_variants, 0);
}

// PyTorch's bias=False (LayerNorm, GroupNorm; InstanceNorm and BatchNorm through their functional API): the
// affine kernels with the weight alone, the bias 0.
TEST_F(ConventionsTest, WeightWithoutBias) {
  for (Norm norm : {Norm::instance, Norm::group, Norm::layer}) {
    SCOPED_TRACE(to_string(norm));
    const std::optional<Variant> v = variant(norm, true);
    if (!v) continue;
    Problem p(*v, norm == Norm::layer ? Shape{"r5_d7x13", {5, 7, 13}, 1, 2} : Shape{"n2_c6_7x7", {2, 6, 7, 7}, 3},
              rng_);
    p.bias_given = false;
    check_training(p, *v);
  }
}

// An epilogue the build has no kernel of the norm for is refused with fusednorm::Error, before anything is
// written (BatchNorm and GroupNorm have the option; the build decides which epilogues exist).
TEST_F(ConventionsTest, EpilogueWithoutKernelIsRefused) {
  int refused = 0;
  for (Norm norm : {Norm::batch, Norm::group}) {
    for (Epilogue epilogue : kEpilogues) {
      if (epilogue_built(norm, epilogue)) continue;
      SCOPED_TRACE(std::string(to_string(norm)) + ", epilogue " + to_string(epilogue));
      const std::optional<Variant> v = variant(norm, true);
      ASSERT_TRUE(v);
      Variant asked = *v;
      asked.epilogue = epilogue;
      Problem p(asked, norm == Norm::group ? Shape{"n2_c6_7x7", {2, 6, 7, 7}, 3} : Shape{"n2_c6_7x7", {2, 6, 7, 7}},
                rng_);
      const Problem before = p;
      EXPECT_THROW(p.forward(), Error);
      EXPECT_TRUE(close("y (unwritten)", p.y, test::to_double(before.y)));
      EXPECT_TRUE(p.running_mean == before.running_mean && p.num_batches_tracked == before.num_batches_tracked);
      EXPECT_THROW(p.backward(), Error);
      EXPECT_TRUE(close("grad_input (unwritten)", p.dx, test::to_double(before.dx)));
      refused++;
    }
  }
  RecordProperty("refused", refused);
}

// 16-bit tensors on an instruction set the build made no 16-bit kernels for are refused, naming the dtype, with
// nothing written; and a dtype the build has no kernel for at all likewise.
TEST_F(ConventionsTest, StorageTypeWithoutKernelIsRefused) {
  int refused = 0;
  const std::vector<std::string> isas = supported_isas();  // best first
  for (auto at = isas.begin(); at != isas.end(); ++at) {
    const std::string& isa = *at;
    for (DType dtype : {DType::bfloat16, DType::float16}) {
      // With the limit, dispatch may run this set's kernels and those of every set below it (an AVX-512 CPU runs
      // the avx2 16-bit kernels of a default build).
      const std::vector<Variant> all = built_variants();
      const bool has_kernel = std::any_of(all.begin(), all.end(), [&](const Variant& v) {
        return std::find(at, isas.end(), v.isa) != isas.end() && v.dtype == dtype && v.norm == Norm::layer;
      });
      if (has_kernel) continue;
      SCOPED_TRACE(isa + ", " + name(dtype));
      test::ScopedMaxIsa limit(isa);
      Problem p({Norm::layer, Layout::nchw, Epilogue::none, true, isa, dtype}, {"r5_d64", {5, 64}}, rng_);
      const Problem before = p;
      try {
        p.forward();
        ADD_FAILURE() << "a " << name(dtype) << " call ran on " << isa << ": " << last_dispatch_report();
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(name(dtype)), std::string::npos) << e.what();
      }
      EXPECT_TRUE(close("y (unwritten)", p.y, test::to_double(before.y)));
      refused++;
    }
  }
  RecordProperty("refused", refused);
}

// ---------------------------------------------------------------------------------------------------------
// The reference itself, against values worked out by hand.

TEST(ReferenceTest, HandComputedValues) {
  // Two rows: [1, 2, 3, 4] (mean 2.5, variance 1.25, mean square 7.5) and [-2, 0, 0, 2] (0, 2, 2).
  const float rows[8] = {1, 2, 3, 4, -2, 0, 0, 2};
  const reference::Forward layer = reference::forward(rows, reference::Grouping::rows(Norm::layer, 2, 4), {}, 0);
  EXPECT_EQ(layer.mean, (std::vector<double>{2.5, 0}));
  EXPECT_EQ(layer.biased_var, (std::vector<double>{1.25, 2}));
  EXPECT_DOUBLE_EQ(layer.y[0], -1.5 / std::sqrt(1.25));
  EXPECT_DOUBLE_EQ(layer.y[7], 2 / std::sqrt(2.0));
  const reference::Forward rms = reference::forward(rows, reference::Grouping::rows(Norm::rms, 2, 4), {}, 0);
  EXPECT_EQ(rms.mean, (std::vector<double>{0, 0}));
  EXPECT_EQ(rms.biased_var, (std::vector<double>{7.5, 2}));
  EXPECT_DOUBLE_EQ(rms.y[3], 4 / std::sqrt(7.5));

  // The same numbers as (N 1, C 4, S 2) in 2 groups: channels {0, 1} and {2, 3}.
  const reference::Forward group =
      reference::forward(rows, reference::Grouping::group({1, 4, 2, Layout::nchw}, 2), {}, 0);
  EXPECT_EQ(group.mean, (std::vector<double>{2.5, 0}));
  // As (N 2, C 2, S 2): instances [1, 2], [3, 4], [-2, 0], [0, 2] at c + C n; with running statistics 0 and
  // 1 and momentum 0.5: mean c0 = 0.5 * (1.5 - 1) / 2, var c0 = 0.5 + 0.5 * (0.5 + 2) / 2 (unbiased, S = 2).
  const float running_mean[2] = {0, 0}, running_var[2] = {1, 1};
  const reference::Running running{running_mean, running_var, 0.5};
  const reference::Forward instance = reference::forward(rows, reference::Grouping::instance({2, 2, 2, Layout::nchw}),
                                                         {}, 0, Epilogue::none, nullptr, &running);
  EXPECT_EQ(instance.mean, (std::vector<double>{1.5, 3.5, -1, 1}));
  EXPECT_EQ(instance.biased_var, (std::vector<double>{0.25, 0.25, 1, 1}));
  EXPECT_EQ(instance.running_mean, (std::vector<double>{0.125, 1.125}));
  EXPECT_EQ(instance.running_var, (std::vector<double>{1.125, 1.125}));
  // BatchNorm over the same (N 2, C 2, S 2): channel 0 is {1, 2, -2, 0}.
  const reference::Forward batch = reference::forward(rows, reference::Grouping::batch({2, 2, 2, Layout::nchw}), {}, 0);
  EXPECT_EQ(batch.mean, (std::vector<double>{0.25, 2.25}));

  // Epilogues at v = -1, 0.5 with z = 1: relu 0, 0.5; add_relu 0, 1.5; silu v sigmoid(v).
  EXPECT_EQ(reference::apply_epilogue(Epilogue::relu, -1, 1), 0);
  EXPECT_EQ(reference::apply_epilogue(Epilogue::add_relu, -1, 1), 0);
  EXPECT_EQ(reference::apply_epilogue(Epilogue::add_relu, 0.5, 1), 1.5);
  EXPECT_DOUBLE_EQ(reference::apply_epilogue(Epilogue::silu, 0.5, 1), 0.5 / (1 + std::exp(-0.5)));
  // silu'(0) = 1/2; silu'(v) = s (1 + v (1 - s)).
  EXPECT_DOUBLE_EQ(reference::epilogue_gradient(Epilogue::silu, 2, 0, 0), 1);
  EXPECT_EQ(reference::epilogue_gradient(Epilogue::add_relu, 2, -5, 0.25), 2);
  EXPECT_EQ(reference::epilogue_gradient(Epilogue::relu, 2, 5, 0), 0);
}

// The tests' 16-bit rounding (tests/support/test_data.h) against values worked out by hand, and the runtime's
// conversions (fusednorm/tensor.h) against it: every float16 and bfloat16 pattern back to float, and floats
// across the whole range (every 251st bit pattern, and each half's midpoints with its neighbours) to both.
TEST(ReferenceTest, StorageRoundingByHandAndAgainstTheRuntime) {
  EXPECT_EQ(test::to_bits(DType::float16, 1.0f), 0x3c00);
  EXPECT_EQ(test::to_bits(DType::float16, -2.0f), 0xc000);
  EXPECT_EQ(test::to_bits(DType::float16, 65504.0f), 0x7bff);
  EXPECT_EQ(test::to_bits(DType::float16, 65519.0f), 0x7bff);
  EXPECT_EQ(test::to_bits(DType::float16, 65520.0f), 0x7c00);
  EXPECT_EQ(test::to_bits(DType::float16, 0x1p-24f), 0x0001);  // the smallest subnormal
  EXPECT_EQ(test::to_bits(DType::float16, 0x1p-25f), 0x0000);  // half of it: a tie, to even zero
  EXPECT_EQ(test::to_bits(DType::float16, 1 + 0x1p-11f), 0x3c00);  // tie between 1 and 1 + 2^-10: to even 1
  EXPECT_EQ(test::to_bits(DType::float16, 1 + 3 * 0x1p-11f), 0x3c02);  // tie: to even 1 + 2^-9
  EXPECT_EQ(test::to_bits(DType::float16, -0.0f), 0x8000);
  EXPECT_EQ(test::from_bits(DType::float16, 0x3555), 0x1.554p-2f);
  EXPECT_EQ(test::to_bits(DType::bfloat16, 1 + 0x1p-8f), 0x3f80);
  EXPECT_EQ(test::to_bits(DType::bfloat16, 1 + 3 * 0x1p-8f), 0x3f82);

  auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; };
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto b = static_cast<uint16_t>(bits);
    ASSERT_TRUE(same(to_float(std::bit_cast<float16>(b)), test::from_bits(DType::float16, b))) << std::hex << b;
    ASSERT_TRUE(same(to_float(std::bit_cast<bfloat16>(b)), test::from_bits(DType::bfloat16, b))) << std::hex << b;
  }
  auto check = [](float v) {
    const uint16_t half = std::bit_cast<uint16_t>(to_float16(v)), brain = std::bit_cast<uint16_t>(to_bfloat16(v));
    if (std::isnan(v)) {  // a NaN of the same sign; the payload is the runtime's to keep
      ASSERT_TRUE((half & 0x7c00) == 0x7c00 && (half & 0x3ff) && (half & 0x8000) == (std::signbit(v) ? 0x8000 : 0));
      ASSERT_TRUE((brain & 0x7f80) == 0x7f80 && (brain & 0x7f) && (brain & 0x8000) == (std::signbit(v) ? 0x8000 : 0));
      return;
    }
    ASSERT_EQ(half, test::to_bits(DType::float16, v)) << v;
    ASSERT_EQ(brain, test::to_bits(DType::bfloat16, v)) << v;
  };
  for (uint64_t bits = 0; bits <= 0xffffffffu; bits += 251) check(std::bit_cast<float>(static_cast<uint32_t>(bits)));
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    const float v = test::from_bits(DType::float16, static_cast<uint16_t>(bits));
    const float next = test::from_bits(DType::float16, static_cast<uint16_t>(bits + 1));
    const float mid = static_cast<float>((static_cast<double>(v) + next) / 2);  // exact: 12 significant bits
    for (float w : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), -mid}) check(w);
  }
}

}  // namespace
}  // namespace fusednorm
