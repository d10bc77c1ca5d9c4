// Every malformed argument is refused with a fusednorm::Error whose message names the argument, and where
// there is one, the value and what was expected; and nothing is written before the refusal: every buffer the
// call could see (inputs, outputs, running statistics, the counter) is bit for bit what it was.
//
// Each case starts from a valid call over one set of buffers (x of shape [2, 3, 4, 5], NCHW; GroupNorm with 3
// groups; LayerNorm and RMSNorm over the trailing [4, 5]) and breaks one thing. Buffers have slack beyond the views, so
// a view that a missing check lets through reads and writes memory the test owns (and the comparison catches) rather
// than memory it does not.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <typeinfo>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "fusednorm/layers.h"
#include "fusednorm/state_dict.h"
#include "runtime/call_tensors.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using ::testing::HasSubstr;

const std::vector<int64_t> kShape = {2, 3, 4, 5};
const std::vector<int64_t> kNormalized = {4, 5};        // LayerNorm and RMSNorm: 6 rows of 20
const std::vector<int64_t> kSampleStatistics = {2, 3};  // (N, C) of InstanceNorm, (N, num_groups) of GroupNorm
constexpr int64_t kNumel = 120, kChannels = 3, kGroups = 3, kRows = 6;
// The per-channel, per-element and statistics buffers: twice the largest such view (LayerNorm's weight, 20).
constexpr int64_t kSmall = 2 * 20 + 2;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInfinity = std::numeric_limits<double>::infinity();

// The buffers of one call, random (outputs NaN), twice the size any valid view needs.
struct Buffers {
  Buffers() {
    test::Random rng(test::seed_for_current_test());
    for (std::vector<float>* tensor : {&x, &grad_output, &residual}) {
      *tensor = test::random_vector(2 * kNumel, rng, -2, 2);
    }
    for (std::vector<float>* tensor : {&y, &grad_input, &grad_residual}) *tensor = test::poisoned(2 * kNumel);
    for (std::vector<float>* channel : {&weight, &bias, &running_mean}) {
      *channel = test::random_vector(kSmall, rng, -1, 1);
    }
    running_var = test::random_vector(kSmall, rng, 0.5, 2);
    for (std::vector<float>* channel : {&save_mean, &save_invstd}) *channel = test::random_vector(kSmall, rng, 0.5, 2);
    for (std::vector<float>* channel : {&grad_weight, &grad_bias}) *channel = test::poisoned(kSmall);
  }

  // y is the forward's output, and the backward's mask input (epilogues relu and add_relu).
  std::vector<float> x, y, grad_output, grad_input, weight, bias, running_mean, running_var, save_mean, save_invstd,
      grad_weight, grad_bias, residual, grad_residual;
  int64_t num_batches_tracked = 3;
  int64_t negative_counter = -1;
  int64_t full_counter = std::numeric_limits<int64_t>::max();

  static TensorView channel(std::vector<float>& data) { return TensorView(data.data(), {kChannels}); }
  static TensorView like_x(std::vector<float>& data) { return TensorView(data.data(), kShape); }
  static TensorView per_sample(std::vector<float>& data) { return TensorView(data.data(), kSampleStatistics); }
  static TensorView per_element(std::vector<float>& data) { return TensorView(data.data(), kNormalized); }
  static TensorView per_row(std::vector<float>& data) { return TensorView(data.data(), {kRows}); }

  // A valid training forward with everything given.
  BatchNormForwardTensors forward() {
    BatchNormForwardTensors t;
    t.input = TensorView(x.data(), kShape);
    t.output = TensorView(y.data(), kShape);
    t.weight = channel(weight);
    t.bias = channel(bias);
    t.running_mean = channel(running_mean);
    t.running_var = channel(running_var);
    t.num_batches_tracked = &num_batches_tracked;
    t.save_mean = channel(save_mean);
    t.save_invstd = channel(save_invstd);
    return t;
  }

  // A valid backward (in either mode) with everything given.
  BatchNormBackwardTensors backward() {
    BatchNormBackwardTensors t;
    t.grad_output = TensorView(grad_output.data(), kShape);
    t.input = TensorView(x.data(), kShape);
    t.grad_input = TensorView(grad_input.data(), kShape);
    t.weight = channel(weight);
    t.save_mean = channel(save_mean);
    t.save_invstd = channel(save_invstd);
    t.running_mean = channel(running_mean);
    t.running_var = channel(running_var);
    t.grad_weight = channel(grad_weight);
    t.grad_bias = channel(grad_bias);
    return t;
  }

  // With the epilogue's tensors: the residual z (add_relu); the forward's y and dz in the backward.
  BatchNormForwardTensors forward_with(Epilogue epilogue) {
    BatchNormForwardTensors t = forward();
    if (epilogue == Epilogue::add_relu) t.residual = like_x(residual);
    return t;
  }
  BatchNormBackwardTensors backward_with(Epilogue epilogue) {
    BatchNormBackwardTensors t = backward();
    if (epilogue == Epilogue::relu || epilogue == Epilogue::add_relu) t.output = like_x(y);
    if (epilogue == Epilogue::add_relu) t.grad_residual = like_x(grad_residual);
    return t;
  }

  // A valid call of any norm over these buffers (call_views.h): statistics and parameters shaped by `statistic`
  // and `parameter`; the running statistics per channel. A backward's bias is absent (only SiLU's reads it).
  detail::CallTensors views(bool backward, TensorView (*statistic)(std::vector<float>&),
                            TensorView (*parameter)(std::vector<float>&)) {
    detail::CallTensors c;
    c.input = like_x(x);
    if (backward) {
      c.grad_output = like_x(grad_output);
      c.grad_input = like_x(grad_input);
      c.grad_weight = parameter(grad_weight);
      c.grad_bias = parameter(grad_bias);
    } else {
      c.output = like_x(y);
      c.bias = parameter(bias);
    }
    c.weight = parameter(weight);
    c.running_mean = channel(running_mean);
    c.running_var = channel(running_var);
    c.save_mean = statistic(save_mean);
    c.save_invstd = statistic(save_invstd);
    return c;
  }
  template <typename Tensors>
  Tensors per_sample_call(bool backward) {
    return detail::convert_tensors<Tensors>(views(backward, per_sample, channel));
  }
  template <typename Tensors>
  Tensors per_row_call(bool backward) {
    return detail::convert_tensors<Tensors>(views(backward, per_row, per_element));
  }
  GroupNormForwardTensors group_forward() { return per_sample_call<GroupNormForwardTensors>(false); }
  GroupNormBackwardTensors group_backward() { return per_sample_call<GroupNormBackwardTensors>(true); }
  InstanceNormForwardTensors instance_forward() { return per_sample_call<InstanceNormForwardTensors>(false); }
  InstanceNormBackwardTensors instance_backward() { return per_sample_call<InstanceNormBackwardTensors>(true); }
  LayerNormForwardTensors layer_forward() { return per_row_call<LayerNormForwardTensors>(false); }
  LayerNormBackwardTensors layer_backward() { return per_row_call<LayerNormBackwardTensors>(true); }
  RMSNormForwardTensors rms_forward() { return per_row_call<RMSNormForwardTensors>(false); }
  RMSNormBackwardTensors rms_backward() { return per_row_call<RMSNormBackwardTensors>(true); }

  // Every buffer by name, for the before-and-after comparison.
  static std::vector<std::pair<std::string, std::vector<float> Buffers::*>> all() {
    return {{"x", &Buffers::x},
            {"y", &Buffers::y},
            {"grad_output", &Buffers::grad_output},
            {"grad_input", &Buffers::grad_input},
            {"weight", &Buffers::weight},
            {"bias", &Buffers::bias},
            {"running_mean", &Buffers::running_mean},
            {"running_var", &Buffers::running_var},
            {"save_mean", &Buffers::save_mean},
            {"save_invstd", &Buffers::save_invstd},
            {"grad_weight", &Buffers::grad_weight},
            {"grad_bias", &Buffers::grad_bias},
            {"residual", &Buffers::residual},
            {"grad_residual", &Buffers::grad_residual}};
  }
  std::vector<float>& named(const std::string& name) {
    for (const auto& [buffer_name, member] : all()) {
      if (name == buffer_name) return this->*member;
    }
    throw std::logic_error("no buffer " + name);
  }
};

BatchNormOptions training(std::optional<double> momentum = 0.1, double eps = 1e-5, Epilogue epilogue = Epilogue::none) {
  BatchNormOptions options;
  options.momentum = momentum;
  options.eps = eps;
  options.epilogue = epilogue;
  return options;
}

BatchNormOptions evaluation(double eps = 1e-5, Epilogue epilogue = Epilogue::none) {
  BatchNormOptions options;
  options.training = false;
  options.eps = eps;
  options.epilogue = epilogue;
  return options;
}

BatchNormOptions training_with(Epilogue epilogue) { return training(0.1, 1e-5, epilogue); }

GroupNormOptions groups(int64_t num_groups = kGroups, Epilogue epilogue = Epilogue::none, double eps = 1e-5) {
  return {.num_groups = num_groups, .eps = eps, .epilogue = epilogue};
}

InstanceNormOptions input_stats(bool use_input_stats = true, double eps = 1e-5, double momentum = 0.1) {
  return {.use_input_stats = use_input_stats, .eps = eps, .momentum = momentum};
}

LayerNormOptions layer(std::vector<int64_t> normalized_shape = kNormalized, double eps = 1e-5) {
  return {.normalized_shape = std::move(normalized_shape), .eps = eps};
}

RMSNormOptions rms(std::vector<int64_t> normalized_shape = kNormalized, std::optional<double> eps = std::nullopt) {
  return {.normalized_shape = std::move(normalized_shape), .eps = eps};
}

struct ErrorCase {
  std::string name;
  std::function<void(Buffers&)> call;  // the malformed call
  std::vector<std::string> message;    // what the message must contain
};

std::string error_case_name(const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.name; }

// The per-channel arguments of each call, and the message parts for a broken one.
using ForwardChannel = std::optional<TensorView> BatchNormForwardTensors::*;
using BackwardChannel = std::optional<TensorView> BatchNormBackwardTensors::*;

const std::vector<std::pair<std::string, ForwardChannel>> kForwardChannels = {
    {"weight", &BatchNormForwardTensors::weight},
    {"bias", &BatchNormForwardTensors::bias},
    {"running_mean", &BatchNormForwardTensors::running_mean},
    {"running_var", &BatchNormForwardTensors::running_var},
    {"save_mean", &BatchNormForwardTensors::save_mean},
    {"save_invstd", &BatchNormForwardTensors::save_invstd}};

const std::vector<std::pair<std::string, BackwardChannel>> kBackwardChannels = {
    {"weight", &BatchNormBackwardTensors::weight},           {"save_mean", &BatchNormBackwardTensors::save_mean},
    {"save_invstd", &BatchNormBackwardTensors::save_invstd}, {"running_mean", &BatchNormBackwardTensors::running_mean},
    {"running_var", &BatchNormBackwardTensors::running_var}, {"grad_weight", &BatchNormBackwardTensors::grad_weight},
    {"grad_bias", &BatchNormBackwardTensors::grad_bias}};

// Four ways to break a per-channel tensor, each with the message it must get. `set` replaces the argument
// (given the buffer the valid view is over) and makes the call.
template <typename SetAndCall>
void add_channel_cases(std::vector<ErrorCase>& cases, const std::string& function, const std::string& prefix,
                       const std::string& name, SetAndCall set_and_call) {
  const std::string of_input = "(one per channel of input [2, 3, 4, 5])";
  cases.push_back({prefix + name + "_wrong_size",
                   [=](Buffers& b) { set_and_call(b, [](float* data) { return TensorView(data, {4}); }); },
                   {function + ": " + name + " has 4 elements, expected 3 " + of_input}});
  cases.push_back({prefix + name + "_wrong_rank",
                   [=](Buffers& b) { set_and_call(b, [](float* data) {
                                       return TensorView(data, {1, 3});
                                     }); },
                   {function + ": " + name + " has shape [1, 3], expected [3] " + of_input}});
  cases.push_back({prefix + name + "_strided",
                   [=](Buffers& b) { set_and_call(b, [](float* data) { return TensorView(data, {3}, {2}); }); },
                   {function + ": " + name + " has stride 2, expected 1 (dense)"}});
  cases.push_back({prefix + name + "_null",
                   [=](Buffers& b) { set_and_call(b, [](float*) { return TensorView(nullptr, {3}); }); },
                   {function + ": " + name + " has a null data pointer"}});
}

// A malformed call of one function: `base` makes its valid tensors, `change` breaks one thing, `call` runs it.
template <typename Tensors, typename Options>
auto case_adder(std::vector<ErrorCase>& cases, const std::string& prefix, Tensors (Buffers::*base)(),
                void (*call)(const Tensors&, const Options&), Options base_options) {
  return [&cases, prefix, base, call, base_options](
             const std::string& name, std::function<void(Buffers&, Tensors&)> change, std::vector<std::string> message,
             std::optional<Options> options = std::nullopt) {
    const Options chosen = options.value_or(base_options);
    cases.push_back({prefix + name,
                     [=](Buffers& b) {
                       Tensors t = (b.*base)();
                       change(b, t);
                       call(t, chosen);
                     },
                     message});
  };
}

// GroupNorm, InstanceNorm, LayerNorm and RMSNorm: what is their own (groups, rows, the statistics' shapes, the
// running statistics of InstanceNorm), and one case of each check they share with BatchNorm.
void add_family_cases(std::vector<ErrorCase>& cases) {
  auto nothing = [](Buffers&, auto&) {};
  const std::string of_input = "(the shape and layout of input [2, 3, 4, 5])";

  // GroupNorm.
  auto group_forward = case_adder(cases, "group_forward_", &Buffers::group_forward, &group_norm_forward, groups());
  auto group_backward = case_adder(cases, "group_backward_", &Buffers::group_backward, &group_norm_backward, groups());
  for (int64_t num_groups : {2, 0, -3}) {
    const std::string message = "group_norm: num_groups is " + std::to_string(num_groups) +
                                ", expected a divisor of C = 3 (input [2, 3, 4, 5])";
    const std::string suffix = num_groups < 0 ? "negative" : std::to_string(num_groups);
    group_forward("num_groups_" + suffix, nothing, {message}, groups(num_groups));
    group_backward("num_groups_" + suffix, nothing, {message}, groups(num_groups));
  }
  group_forward("input_rank_6",
                [](Buffers& b, auto& t) {
                  t.input = TensorView(b.x.data(), {2, 3, 2, 2, 5, 1});
                },
                {"group_norm: input has 6 dimensions (shape [2, 3, 2, 2, 5, 1]), expected 2 to 5"});
  group_forward("input_padded_rows",
                [](Buffers& b, auto& t) {
                  t.input = TensorView(b.x.data(), kShape, {96, 32, 8, 1});
                },
                {"group_norm: input has strides [96, 32, 8, 1] for shape [2, 3, 4, 5]"});
  group_forward("output_nhwc_for_nchw_input",
                [](Buffers& b, auto& t) { t.output = TensorView::channels_last(b.y.data(), kShape); },
                {"group_norm: output has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw, the layout of "
                 "input)"});
  group_forward("save_mean_wrong_count",
                [](Buffers& b, auto& t) {
                  t.save_mean = TensorView(b.save_mean.data(), {2, 2});
                },
                {"group_norm: save_mean has 4 elements (shape [2, 2]), expected 6 (N x num_groups = 2 x 3, for input "
                 "[2, 3, 4, 5])"});
  group_forward("save_invstd_strided",
                [](Buffers& b, auto& t) {
                  t.save_invstd = TensorView(b.save_invstd.data(), {2, 3}, {6, 2});
                },
                {"group_norm: save_invstd has strides [6, 2] for shape [2, 3], expected [3, 1] (dense)"});
  group_forward("save_mean_null", [](Buffers&, auto& t) { t.save_mean = TensorView(nullptr, kSampleStatistics); },
                {"group_norm: save_mean has a null data pointer"});
  group_forward("eps_nan", nothing, {"group_norm: eps is nan, expected a finite number >= 0"},
                groups(kGroups, Epilogue::none, kNaN));
  group_forward("add_relu_without_residual", nothing,
                {"group_norm: residual is absent, expected z " + of_input + ": epilogue add_relu needs it"},
                groups(kGroups, Epilogue::add_relu));
  group_forward(
      "silu_with_residual", [](Buffers& b, auto& t) { t.residual = Buffers::like_x(b.residual); },
      {"group_norm: residual is given, expected none: epilogue silu does not use it (add_relu adds it)"},
      groups(kGroups, Epilogue::silu));
  group_forward("output_overlaps_input", [](Buffers& b, auto& t) { t.output = TensorView(b.x.data() + 1, kShape); },
                {"group_norm: output overlaps input in memory, expected the same view (in place) or disjoint memory"});
  group_forward("save_mean_overlaps_output", [](Buffers& b, auto& t) { t.save_mean = Buffers::per_sample(b.y); },
                {"group_norm: save_mean overlaps output in memory, expected disjoint memory"});
  group_forward("save_invstd_overlaps_bias", [](Buffers& b, auto& t) { t.save_invstd = Buffers::per_sample(b.bias); },
                {"group_norm: save_invstd overlaps bias in memory, expected disjoint memory"});
  group_backward("save_invstd_null", [](Buffers&, auto& t) { t.save_invstd = TensorView(nullptr, kSampleStatistics); },
                 {"group_norm: save_invstd has a null data pointer"});
  group_backward("save_mean_wrong_count", [](Buffers& b, auto& t) { t.save_mean = Buffers::channel(b.save_mean); },
                 {"group_norm: save_mean has 3 elements (shape [3]), expected 6 (N x num_groups = 2 x 3"});
  group_backward("bias_without_silu", [](Buffers& b, auto& t) { t.bias = Buffers::channel(b.bias); },
                 {"group_norm: bias is given, expected none: epilogue none does not use it in the backward"});
  group_backward(
      "silu_bias_wrong_size", [](Buffers& b, auto& t) { t.bias = TensorView(b.bias.data(), {4}); },
      {"group_norm: bias has 4 elements, expected 3 (one per channel of input [2, 3, 4, 5])"},
      groups(kGroups, Epilogue::silu));
  group_backward("relu_without_output", nothing,
                 {"group_norm: output is absent, expected the forward's y, whose sign is the mask"},
                 groups(kGroups, Epilogue::relu));
  group_backward(
      "add_relu_without_grad_residual", [](Buffers& b, auto& t) { t.output = Buffers::like_x(b.y); },
      {"group_norm: grad_residual is absent, expected dz, the residual's gradient"},
      groups(kGroups, Epilogue::add_relu));
  group_backward(
      "silu_with_output", [](Buffers& b, auto& t) { t.output = Buffers::like_x(b.y); },
      {"group_norm: output is given, expected none: epilogue silu does not use it (relu and add_relu do)"},
      groups(kGroups, Epilogue::silu));
  group_backward("grad_input_shape",
                 [](Buffers& b, auto& t) {
                   t.grad_input = TensorView(b.save_mean.data() + 2, {1, 3, 2, 2});
                 },
                 {"group_norm: grad_input has shape [1, 3, 2, 2], expected [2, 3, 4, 5]"});
  group_backward("grad_weight_overlaps_save_invstd",
                 [](Buffers& b, auto& t) { t.grad_weight = Buffers::channel(b.save_invstd); },
                 {"group_norm: grad_weight overlaps save_invstd in memory, expected disjoint memory"});
  group_backward("grad_bias_overlaps_grad_weight",
                 [](Buffers& b, auto& t) { t.grad_bias = TensorView(b.grad_weight.data() + 1, {3}); },
                 {"group_norm: grad_bias overlaps grad_weight in memory, expected disjoint memory"});
  for (const char* name : {"weight", "grad_weight", "grad_bias"}) {
    add_channel_cases(cases, "group_norm", "group_backward_", name, [name](Buffers& b, auto make_view) {
      GroupNormBackwardTensors t = b.group_backward();
      const std::string n = name;
      (n == "weight" ? t.weight : n == "grad_weight" ? t.grad_weight : t.grad_bias) = make_view(b.named(n).data());
      group_norm_backward(t, groups());
    });
  }

  // InstanceNorm.
  auto instance_forward =
      case_adder(cases, "instance_forward_", &Buffers::instance_forward, &instance_norm_forward, input_stats());
  auto instance_backward =
      case_adder(cases, "instance_backward_", &Buffers::instance_backward, &instance_norm_backward, input_stats());
  for (auto [name, shape] : {std::pair<std::string, std::vector<int64_t>>{"2d", {2, 3}},
                             {"4d_1x1", {2, 3, 1, 1}},
                             {"5d_1x1x1", {1, 3, 1, 1, 1}}}) {
    instance_forward(
        "training_one_spatial_element_" + name,
        [shape = shape](Buffers& b, auto& t) {
          t.input = TensorView(b.x.data(), shape);
          t.output = TensorView(b.y.data(), shape);
          t.save_mean.reset();
          t.save_invstd.reset();
        },
        {"instance_norm: Expected more than 1 spatial element when training, got input size " + shape_string(shape)});
  }
  instance_forward("input_no_elements",
                   [](Buffers& b, auto& t) {
                     t.input = TensorView(b.x.data(), {2, 3, 0, 5});
                   },
                   {"instance_norm: input has no elements (shape [2, 3, 0, 5]), expected at least one"});
  instance_forward("output_shape",
                   [](Buffers& b, auto& t) {
                     t.output = TensorView(b.y.data(), {2, 3, 5, 4});
                   },
                   {"instance_norm: output has shape [2, 3, 5, 4], expected [2, 3, 4, 5] (the shape of input)"});
  instance_forward("running_mean_without_running_var", [](Buffers&, auto& t) { t.running_var.reset(); },
                   {"instance_norm: running_mean is given but running_var is not, expected both or neither"});
  instance_forward("running_mean_wrong_size",
                   [](Buffers& b, auto& t) { t.running_mean = TensorView(b.running_mean.data(), {6}); },
                   {"instance_norm: running_mean has 6 elements, expected 3 (one per channel of input [2, 3, 4, 5])"});
  instance_forward("save_mean_wrong_count", [](Buffers& b, auto& t) { t.save_mean = Buffers::channel(b.save_mean); },
                   {"instance_norm: save_mean has 3 elements (shape [3]), expected 6 (N x C = 2 x 3, for input [2, 3, "
                    "4, 5])"});
  instance_forward("momentum_nan", nothing, {"instance_norm: momentum is nan, expected a number in [0, 1]"},
                   input_stats(true, 1e-5, kNaN));
  instance_forward("eps_negative", nothing, {"instance_norm: eps is -1, expected a finite number >= 0"},
                   input_stats(true, -1.0));
  instance_forward(
      "running_statistics_without_input_stats_absent",
      [](Buffers&, auto& t) {
        t.running_mean.reset();
        t.running_var.reset();
        t.save_mean.reset();
        t.save_invstd.reset();
      },
      {"instance_norm: running_mean and running_var are absent, expected both: use_input_stats = false "
       "normalizes with the running statistics"},
      input_stats(false));
  instance_forward(
      "save_mean_without_input_stats", [](Buffers&, auto& t) { t.save_invstd.reset(); },
      {"instance_norm: save_mean is given, expected none: use_input_stats = false normalizes with the "
       "running statistics"},
      input_stats(false));
  instance_forward("running_var_overlaps_running_mean",
                   [](Buffers& b, auto& t) { t.running_var = TensorView(b.running_mean.data() + 2, {3}); },
                   {"instance_norm: running_var overlaps running_mean in memory, expected disjoint memory"});
  instance_forward("running_mean_overlaps_input",
                   [](Buffers& b, auto& t) { t.running_mean = TensorView(b.x.data() + 3, {3}); },
                   {"instance_norm: running_mean overlaps input in memory, expected disjoint memory"});
  instance_forward("save_invstd_overlaps_save_mean",
                   [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.save_mean.data() + 5, kSampleStatistics); },
                   {"instance_norm: save_invstd overlaps save_mean in memory, expected disjoint memory"});
  instance_forward(
      "evaluation_output_shape",
      [](Buffers& b, auto& t) {
        t.save_mean.reset();
        t.save_invstd.reset();
        t.output = TensorView(b.running_var.data(), {1, 3, 2, 2});
      },
      {"instance_norm: output has shape [1, 3, 2, 2], expected [2, 3, 4, 5]"}, input_stats(false));
  instance_backward("without_save_invstd", [](Buffers&, auto& t) { t.save_invstd.reset(); },
                    {"instance_norm: save_invstd is absent, expected save_mean and save_invstd from the forward "
                     "(use_input_stats = true)"});
  instance_backward(
      "evaluation_without_running_var", [](Buffers&, auto& t) { t.running_var.reset(); },
      {"instance_norm: running_var is absent, expected running_mean and running_var: the forward "
       "(use_input_stats = false) normalized with them"},
      input_stats(false));
  instance_backward("evaluation_eps_nan", nothing, {"instance_norm: eps is nan, expected a finite number >= 0"},
                    input_stats(false, kNaN));
  instance_backward("save_invstd_wrong_count",
                    [](Buffers& b, auto& t) {
                      t.save_invstd = TensorView(b.save_invstd.data(), {2, 4});
                    },
                    {"instance_norm: save_invstd has 8 elements (shape [2, 4]), expected 6 (N x C = 2 x 3"});
  instance_backward("grad_input_layout",
                    [](Buffers& b, auto& t) { t.grad_input = TensorView::channels_last(b.grad_input.data(), kShape); },
                    {"instance_norm: grad_input has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"});
  instance_backward("grad_input_is_grad_output",
                    [](Buffers& b, auto& t) { t.grad_input = Buffers::like_x(b.grad_output); },
                    {"instance_norm: grad_input overlaps grad_output in memory, expected disjoint memory"});
  instance_backward("grad_bias_overlaps_running_var",
                    [](Buffers& b, auto& t) { t.grad_bias = TensorView(b.running_var.data() + 1, {3}); },
                    {"instance_norm: grad_bias overlaps running_var in memory, expected disjoint memory"});

  // LayerNorm.
  auto layer_forward = case_adder(cases, "layer_forward_", &Buffers::layer_forward, &layer_norm_forward, layer());
  auto layer_backward = case_adder(cases, "layer_backward_", &Buffers::layer_backward, &layer_norm_backward, layer());
  layer_forward("normalized_shape_empty", nothing,
                {"layer_norm: normalized_shape is [], expected at least one dimension (the trailing dimensions of "
                 "input [2, 3, 4, 5])"},
                layer({}));
  layer_forward("normalized_shape_not_trailing", nothing,
                {"layer_norm: input has shape [2, 3, 4, 5], expected [*, 5, 4]: its trailing dimensions equal to "
                 "normalized_shape [5, 4]"},
                layer({5, 4}));
  layer_forward("normalized_shape_longer_than_input", nothing,
                {"layer_norm: input has shape [2, 3, 4, 5], expected [*, 1, 2, 3, 4, 5]"}, layer({1, 2, 3, 4, 5}));
  layer_backward("normalized_shape_not_trailing", nothing,
                 {"layer_norm: input has shape [2, 3, 4, 5], expected [*, 3, 5]"}, layer({3, 5}));
  layer_forward("input_channels_last",
                [](Buffers& b, auto& t) { t.input = TensorView::channels_last(b.x.data(), kShape); },
                {"layer_norm: input has strides [60, 1, 15, 3] for shape [2, 3, 4, 5], expected contiguous "
                 "(row-major, strides [60, 20, 5, 1]); FusedNorm does not copy into another layout"});
  layer_forward("input_null", [](Buffers&, auto& t) { t.input = TensorView(nullptr, kShape); },
                {"layer_norm: input has a null data pointer"});
  layer_forward("input_no_elements",
                [](Buffers& b, auto& t) {
                  t.input = TensorView(b.x.data(), {0, 3, 4, 5});
                },
                {"layer_norm: input has no elements (shape [0, 3, 4, 5]), expected at least one"});
  layer_forward("output_channels_last",
                [](Buffers& b, auto& t) { t.output = TensorView::channels_last(b.y.data(), kShape); },
                {"layer_norm: output has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (contiguous, the layout of "
                 "input)"});
  layer_forward("weight_flat", [](Buffers& b, auto& t) { t.weight = TensorView(b.weight.data(), {20}); },
                {"layer_norm: weight has shape [20], expected [4, 5] (normalized_shape)"});
  layer_forward("bias_strided",
                [](Buffers& b, auto& t) {
                  t.bias = TensorView(b.bias.data(), kNormalized, {10, 2});
                },
                {"layer_norm: bias has strides [10, 2], expected [5, 1] (contiguous)"});
  layer_forward("bias_null", [](Buffers&, auto& t) { t.bias = TensorView(nullptr, kNormalized); },
                {"layer_norm: bias has a null data pointer"});
  layer_forward("save_mean_wrong_count", [](Buffers& b, auto& t) { t.save_mean = TensorView(b.save_mean.data(), {5}); },
                {"layer_norm: save_mean has 5 elements (shape [5]), expected 6 (one per row, the product of the "
                 "dimensions before normalized_shape, for input [2, 3, 4, 5])"});
  layer_forward("eps_negative", nothing, {"layer_norm: eps is -0.5, expected a finite number >= 0"},
                layer(kNormalized, -0.5));
  layer_forward("output_overlaps_input", [](Buffers& b, auto& t) { t.output = TensorView(b.x.data() + 20, kShape); },
                {"layer_norm: output overlaps input in memory, expected the same view (in place) or disjoint memory"});
  layer_forward("save_invstd_overlaps_weight",
                [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.weight.data() + 19, {kRows}); },
                {"layer_norm: save_invstd overlaps weight in memory, expected disjoint memory"});
  layer_backward("grad_weight_shape",
                 [](Buffers& b, auto& t) {
                   t.grad_weight = TensorView(b.grad_weight.data(), {5, 4});
                 },
                 {"layer_norm: grad_weight has shape [5, 4], expected [4, 5] (normalized_shape)"});
  layer_backward("save_invstd_null", [](Buffers&, auto& t) { t.save_invstd = TensorView(nullptr, {kRows}); },
                 {"layer_norm: save_invstd has a null data pointer"});
  layer_backward("grad_output_shape",
                 [](Buffers& b, auto& t) {
                   t.grad_output = TensorView(b.grad_output.data(), {6, 20});
                 },
                 {"layer_norm: grad_output has shape [6, 20], expected [2, 3, 4, 5] (the shape of input)"});
  layer_backward("grad_bias_overlaps_weight", [](Buffers& b, auto& t) { t.grad_bias = Buffers::per_element(b.weight); },
                 {"layer_norm: grad_bias overlaps weight in memory, expected disjoint memory"});
  layer_backward("grad_input_overlaps_input",
                 [](Buffers& b, auto& t) { t.grad_input = TensorView(b.x.data() + 60, kShape); },
                 {"layer_norm: grad_input overlaps input in memory, expected disjoint memory"});

  // RMSNorm.
  auto rms_forward = case_adder(cases, "rms_forward_", &Buffers::rms_forward, &rms_norm_forward, rms());
  auto rms_backward = case_adder(cases, "rms_backward_", &Buffers::rms_backward, &rms_norm_backward, rms());
  rms_forward("normalized_shape_not_trailing", nothing,
              {"rms_norm: input has shape [2, 3, 4, 5], expected [*, 3, 4]: its trailing dimensions equal to "
               "normalized_shape [3, 4]"},
              rms({3, 4}));
  rms_forward("eps_nan", nothing, {"rms_norm: eps is nan, expected a finite number >= 0"}, rms(kNormalized, kNaN));
  rms_forward("weight_wrong_shape",
              [](Buffers& b, auto& t) {
                t.weight = TensorView(b.weight.data(), {1, 4, 5});
              },
              {"rms_norm: weight has shape [1, 4, 5], expected [4, 5] (normalized_shape)"});
  rms_forward("save_invstd_wrong_count",
              [](Buffers& b, auto& t) {
                t.save_invstd = TensorView(b.save_invstd.data(), {2, 3, 4});
              },
              {"rms_norm: save_invstd has 24 elements (shape [2, 3, 4]), expected 6 (one per row"});
  rms_forward("output_overlaps_save_invstd", [](Buffers& b, auto& t) { t.save_invstd = Buffers::per_row(b.y); },
              {"rms_norm: save_invstd overlaps output in memory, expected disjoint memory"});
  rms_backward("input_transposed",
               [](Buffers& b, auto& t) {
                 t.input = TensorView(b.x.data(), kShape, {60, 20, 1, 4});
               },
               {"rms_norm: input has strides [60, 20, 1, 4] for shape [2, 3, 4, 5], expected contiguous"});
  rms_backward("grad_weight_overlaps_grad_input",
               [](Buffers& b, auto& t) { t.grad_weight = TensorView(b.grad_input.data() + 100, kNormalized); },
               {"rms_norm: grad_weight overlaps grad_input in memory, expected disjoint memory"});
  rms_backward("save_invstd_strided",
               [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.save_invstd.data(), {kRows}, {2}); },
               {"rms_norm: save_invstd has strides [2] for shape [6], expected [1] (dense)"});
}

std::vector<ErrorCase> error_cases() {
  std::vector<ErrorCase> cases;
  auto forward = [&cases](std::string name, std::function<void(Buffers&, BatchNormForwardTensors&)> change,
                          std::vector<std::string> message, BatchNormOptions options = training()) {
    cases.push_back({"forward_" + name,
                     [=](Buffers& b) {
                       BatchNormForwardTensors t = b.forward();
                       change(b, t);
                       batch_norm_forward(t, options);
                     },
                     message});
  };
  auto backward = [&cases](std::string name, std::function<void(Buffers&, BatchNormBackwardTensors&)> change,
                           std::vector<std::string> message, BatchNormOptions options = training()) {
    cases.push_back({"backward_" + name,
                     [=](Buffers& b) {
                       BatchNormBackwardTensors t = b.backward();
                       change(b, t);
                       batch_norm_backward(t, options);
                     },
                     message});
  };
  auto nothing = [](Buffers&, auto&) {};

  // The input: rank, elements, pointer, strides, size limits.
  forward("input_rank_1", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {120}); },
          {"batch_norm: input has 1 dimensions (shape [120]), expected 2 to 5"});
  forward("input_rank_6",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {2, 3, 2, 2, 5, 1});
          },
          {"batch_norm: input has 6 dimensions (shape [2, 3, 2, 2, 5, 1]), expected 2 to 5"});
  // Shapes whose element count wraps int64 (C x spatial = 3 x 6148914691236517207 wrapped to 5 and reached the
  // kernels, which crashed): refused where the view is made, before any call can use it.
  constexpr int64_t kWraps = 6148914691236517207;  // 3 * kWraps = 5 modulo 2^64
  forward("input_shape_wraps",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {1, 3, kWraps});
          },
          {"TensorView: shape [1, 3, 6148914691236517207] has more than 2^63 - 1 elements"});
  forward("input_shape_4d_wraps",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {1, 1, 3, kWraps});
          },
          {"TensorView: shape [1, 1, 3, 6148914691236517207] has more than 2^63 - 1 elements"});
  forward("input_shape_wraps_behind_a_zero",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {0, 3, kWraps});
          },
          {"TensorView: shape [0, 3, 6148914691236517207] has more than 2^63 - 1 elements"});
  forward("input_strides_reach_beyond_int64",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {2, 3, 4, 5}, {std::numeric_limits<int64_t>::max(), 20, 5, 1});
          },
          {"TensorView: strides [9223372036854775807, 20, 5, 1] for shape [2, 3, 4, 5] reach beyond 2^63 - 1"});
  backward("input_shape_wraps",
           [](Buffers& b, auto& t) {
             t.input = TensorView(b.x.data(), {1, 3, kWraps});
           },
           {"TensorView: shape [1, 3, 6148914691236517207] has more than 2^63 - 1 elements"});
  forward("input_no_elements",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {2, 0, 4, 5});
          },
          {"batch_norm: input has no elements (shape [2, 0, 4, 5]), expected at least one"});
  forward("input_null", [](Buffers&, auto& t) { t.input = TensorView(nullptr, kShape); },
          {"batch_norm: input has a null data pointer"});
  forward("input_padded_rows",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), kShape, {96, 32, 8, 1});
          },
          {"batch_norm: input has strides [96, 32, 8, 1] for shape [2, 3, 4, 5]",
           "expected a dense NCHW layout (strides [60, 20, 5, 1]) or NHWC (channels-last, strides [60, 1, 15, 3])"});
  forward("input_transposed_spatial",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), kShape, {60, 20, 1, 4});
          },
          {"batch_norm: input has strides [60, 20, 1, 4] for shape [2, 3, 4, 5]", "expected a dense NCHW layout"});
  forward(
      "input_too_large_for_a_kernel_dimension",
      [](Buffers& b, auto& t) {
        t.input = TensorView(b.x.data(), {1, 2, int64_t{1} << 30, 2});
        t.output = TensorView(b.y.data(), {1, 2, int64_t{1} << 30, 2});
      },
      {"batch_norm: input has shape [1, 2, 1073741824, 2]", "(C x spatial = 4294967296)", "exceeds 2^31 - 1 elements"});
  backward("input_rank_1", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {120}); },
           {"batch_norm: input has 1 dimensions (shape [120]), expected 2 to 5"});
  backward("input_no_elements",
           [](Buffers& b, auto& t) {
             t.input = TensorView(b.x.data(), {0, 3, 4, 5});
           },
           {"batch_norm: input has no elements (shape [0, 3, 4, 5])"});
  backward("input_null", [](Buffers&, auto& t) { t.input = TensorView(nullptr, kShape); },
           {"batch_norm: input has a null data pointer"});

  // Tensors like the input: shape, pointer, layout.
  forward("output_null", [](Buffers&, auto& t) { t.output = TensorView(nullptr, kShape); },
          {"batch_norm: output has a null data pointer"});
  forward("output_shape",
          [](Buffers& b, auto& t) {
            t.output = TensorView(b.y.data(), {2, 3, 4, 6});
          },
          {"batch_norm: output has shape [2, 3, 4, 6], expected [2, 3, 4, 5] (the shape of input)"});
  forward("output_rank",
          [](Buffers& b, auto& t) {
            t.output = TensorView(b.y.data(), {2, 3, 20});
          },
          {"batch_norm: output has shape [2, 3, 20], expected [2, 3, 4, 5]"});
  forward("output_nhwc_for_nchw_input",
          [](Buffers& b, auto& t) { t.output = TensorView::channels_last(b.y.data(), kShape); },
          {"batch_norm: output has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw, the layout of "
           "input)"});
  forward("output_nchw_for_nhwc_input",
          [](Buffers& b, auto& t) { t.input = TensorView::channels_last(b.x.data(), kShape); },
          {"batch_norm: output has strides [60, 20, 5, 1], expected [60, 1, 15, 3] (dense nhwc, the layout of "
           "input)"});
  backward("grad_output_null", [](Buffers&, auto& t) { t.grad_output = TensorView(nullptr, kShape); },
           {"batch_norm: grad_output has a null data pointer"});
  backward("grad_output_shape",
           [](Buffers& b, auto& t) {
             t.grad_output = TensorView(b.grad_output.data(), {2, 3, 5, 4});
           },
           {"batch_norm: grad_output has shape [2, 3, 5, 4], expected [2, 3, 4, 5] (the shape of input)"});
  backward("grad_output_layout",
           [](Buffers& b, auto& t) { t.grad_output = TensorView::channels_last(b.grad_output.data(), kShape); },
           {"batch_norm: grad_output has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"});
  backward("grad_input_null", [](Buffers&, auto& t) { t.grad_input = TensorView(nullptr, kShape); },
           {"batch_norm: grad_input has a null data pointer"});
  backward("grad_input_shape",
           [](Buffers& b, auto& t) {
             t.grad_input = TensorView(b.grad_input.data(), {2, 3, 4});
           },
           {"batch_norm: grad_input has shape [2, 3, 4], expected [2, 3, 4, 5]"});
  backward("grad_input_layout",
           [](Buffers& b, auto& t) { t.grad_input = TensorView::channels_last(b.grad_input.data(), kShape); },
           {"batch_norm: grad_input has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"});

  // Per-channel tensors: size, rank, stride, pointer; each argument of each call.
  for (const auto& [name, member] : kForwardChannels) {
    add_channel_cases(cases, "batch_norm", "forward_", name,
                      [name = name, member = member](Buffers& b, auto make_view) {
                        BatchNormForwardTensors t = b.forward();
                        t.*member = make_view(b.named(name).data());
                        batch_norm_forward(t, training());
                      });
  }
  for (const auto& [name, member] : kBackwardChannels) {
    add_channel_cases(cases, "batch_norm", "backward_", name,
                      [name = name, member = member](Buffers& b, auto make_view) {
                        BatchNormBackwardTensors t = b.backward();
                        t.*member = make_view(b.named(name).data());
                        batch_norm_backward(t, training());
                      });
  }

  // Running statistics: both or neither; required in evaluation.
  forward("running_mean_without_running_var", [](Buffers&, auto& t) { t.running_var.reset(); },
          {"batch_norm: running_mean is given but running_var is not, expected both or neither"});
  forward("running_var_without_running_mean", [](Buffers&, auto& t) { t.running_mean.reset(); },
          {"batch_norm: running_var is given but running_mean is not, expected both or neither"});
  forward(
      "evaluation_without_running_statistics",
      [](Buffers&, auto& t) {
        t.running_mean.reset();
        t.running_var.reset();
      },
      {"batch_norm: running_mean and running_var are absent, expected both",
       "evaluation (training = false) normalizes with the running statistics"},
      evaluation());

  // Options: eps and momentum.
  forward("eps_negative", nothing, {"batch_norm: eps is -1e-05, expected a finite number >= 0"}, training(0.1, -1e-5));
  forward("eps_nan", nothing, {"batch_norm: eps is nan, expected a finite number >= 0"}, training(0.1, kNaN));
  forward("eps_infinite", nothing, {"batch_norm: eps is inf, expected a finite number >= 0"}, training(0.1, kInfinity));
  forward("evaluation_eps_negative", nothing, {"batch_norm: eps is -1, expected a finite number >= 0"},
          evaluation(-1.0));
  forward("momentum_nan", nothing,
          {"batch_norm: momentum is nan, expected a number in [0, 1] "
           "(or std::nullopt for a cumulative moving average)"},
          training(kNaN));
  forward("momentum_infinite", nothing, {"batch_norm: momentum is inf, expected a number in [0, 1]"},
          training(kInfinity));
  // Finite, but inf as the kernels' float32: the running statistics became NaN.
  forward("momentum_too_large", nothing, {"batch_norm: momentum is 1e+300, expected a number in [0, 1]"},
          training(1e300));
  forward("momentum_negative", nothing, {"batch_norm: momentum is -0.1, expected a number in [0, 1]"}, training(-0.1));
  forward(
      "cumulative_average_without_counter", [](Buffers&, auto& t) { t.num_batches_tracked = nullptr; },
      {"batch_norm: num_batches_tracked is null, expected a counter: momentum is std::nullopt"},
      training(std::nullopt));
  forward("counter_negative", [](Buffers& b, auto& t) { t.num_batches_tracked = &b.negative_counter; },
          {"batch_norm: num_batches_tracked is -1, expected 0 to 2^63 - 2"});
  // One more batch would overflow the counter (signed overflow before).
  forward("counter_at_int64_max", [](Buffers& b, auto& t) { t.num_batches_tracked = &b.full_counter; },
          {"batch_norm: num_batches_tracked is 9223372036854775807, expected 0 to 2^63 - 2"}, training(std::nullopt));

  // Training needs more than one value per channel (PyTorch's message).
  for (auto [name, shape] : {std::pair<std::string, std::vector<int64_t>>{"2d", {1, 3}},
                             {"4d_1x1", {1, 3, 1, 1}},
                             {"5d_1x1x1", {1, 3, 1, 1, 1}}}) {
    forward(
        "training_one_value_per_channel_" + name,
        [shape = shape](Buffers& b, auto& t) {
          t.input = TensorView(b.x.data(), shape);
          t.output = TensorView(b.y.data(), shape);
        },
        {"batch_norm: Expected more than 1 value per channel when training, got input size " + shape_string(shape)});
    // The backward in training refuses what the forward refuses (it returned NaN before).
    backward(
        "training_one_value_per_channel_" + name,
        [shape = shape](Buffers& b, auto& t) {
          t.grad_output = TensorView(b.grad_output.data(), shape);
          t.input = TensorView(b.x.data(), shape);
          t.grad_input = TensorView(b.grad_input.data(), shape);
        },
        {"batch_norm: Expected more than 1 value per channel when training, got input size " + shape_string(shape)});
  }

  // The backward's statistics: the saved ones in training, the running ones in evaluation.
  backward("training_without_save_mean", [](Buffers&, auto& t) { t.save_mean.reset(); },
           {"batch_norm: save_mean is absent, expected save_mean and save_invstd from the forward (training = true)"});
  backward("training_without_save_invstd", [](Buffers&, auto& t) { t.save_invstd.reset(); },
           {"batch_norm: save_invstd is absent, expected save_mean and save_invstd from the forward (training = "
            "true)"});
  backward(
      "evaluation_without_running_mean", [](Buffers&, auto& t) { t.running_mean.reset(); },
      {"batch_norm: running_mean is absent, expected running_mean and running_var"}, evaluation());
  backward(
      "evaluation_without_running_var", [](Buffers&, auto& t) { t.running_var.reset(); },
      {"batch_norm: running_var is absent, expected running_mean and running_var"}, evaluation());
  backward("evaluation_eps_nan", nothing, {"batch_norm: eps is nan, expected a finite number >= 0"}, evaluation(kNaN));

  // Overlapping memory: outputs must not overlap inputs (or each other), except y exactly over x.
  forward("output_overlaps_input", [](Buffers& b, auto& t) { t.output = TensorView(b.x.data() + 1, kShape); },
          {"batch_norm: output overlaps input in memory, expected the same view (in place) or disjoint memory"});
  forward("in_place_in_another_layout",
          [](Buffers& b, auto& t) { t.output = TensorView::channels_last(b.x.data(), kShape); },
          {"batch_norm: output has strides [60, 1, 15, 3], expected [60, 20, 5, 1]"});
  forward("output_overlaps_weight", [](Buffers& b, auto& t) { t.weight = TensorView(b.y.data() + 7, {3}); },
          {"batch_norm: output overlaps weight in memory, expected disjoint memory"});
  forward("save_mean_overlaps_input", [](Buffers& b, auto& t) { t.save_mean = TensorView(b.x.data() + 10, {3}); },
          {"batch_norm: save_mean overlaps input in memory, expected disjoint memory"});
  forward("save_mean_overlaps_running_mean",
          [](Buffers& b, auto& t) { t.save_mean = TensorView(b.running_mean.data() + 1, {3}); },
          {"batch_norm: save_mean overlaps running_mean in memory, expected disjoint memory"});
  forward("save_invstd_overlaps_save_mean",
          [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.save_mean.data() + 2, {3}); },
          {"batch_norm: save_invstd overlaps save_mean in memory, expected disjoint memory"});
  forward("save_invstd_overlaps_output", [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.y.data() + 100, {3}); },
          {"batch_norm: save_invstd overlaps output in memory, expected disjoint memory"});
  forward("running_var_overlaps_running_mean",
          [](Buffers& b, auto& t) { t.running_var = TensorView(b.running_mean.data() + 1, {3}); },
          {"batch_norm: running_var overlaps running_mean in memory, expected disjoint memory"});
  forward("running_mean_is_running_var",
          [](Buffers& b, auto& t) { t.running_mean = TensorView(b.running_var.data(), {3}); },
          {"batch_norm: running_var overlaps running_mean in memory, expected disjoint memory"});
  forward("running_mean_overlaps_input", [](Buffers& b, auto& t) { t.running_mean = TensorView(b.x.data() + 30, {3}); },
          {"batch_norm: running_mean overlaps input in memory, expected disjoint memory"});
  forward("running_var_overlaps_weight", [](Buffers& b, auto& t) { t.running_var = TensorView(b.weight.data(), {3}); },
          {"batch_norm: running_var overlaps weight in memory, expected disjoint memory"});
  backward("grad_input_is_grad_output",
           [](Buffers& b, auto& t) { t.grad_input = TensorView(b.grad_output.data(), kShape); },
           {"batch_norm: grad_input overlaps grad_output in memory, expected disjoint memory"});
  backward("grad_input_overlaps_input", [](Buffers& b, auto& t) { t.grad_input = TensorView(b.x.data() + 60, kShape); },
           {"batch_norm: grad_input overlaps input in memory, expected disjoint memory"});
  backward("grad_weight_overlaps_grad_bias",
           [](Buffers& b, auto& t) { t.grad_weight = TensorView(b.grad_bias.data() + 2, {3}); },
           {"batch_norm: grad_bias overlaps grad_weight in memory, expected disjoint memory"});
  backward("grad_bias_overlaps_weight", [](Buffers& b, auto& t) { t.grad_bias = TensorView(b.weight.data(), {3}); },
           {"batch_norm: grad_bias overlaps weight in memory, expected disjoint memory"});
  backward("grad_weight_overlaps_grad_input",
           [](Buffers& b, auto& t) { t.grad_weight = TensorView(b.grad_input.data() + 119, {3}); },
           {"batch_norm: grad_weight overlaps grad_input in memory, expected disjoint memory"});

  // Epilogues: the residual z in the forward (add_relu only); the forward's y (relu, add_relu) and dz (add_relu)
  // in the backward; silu, which no batch_norm kernel has.
  const std::string of_input = "(the shape and layout of input [2, 3, 4, 5])";
  forward("add_relu_without_residual", nothing,
          {"batch_norm: residual is absent, expected z " + of_input + ": epilogue add_relu needs it"},
          training_with(Epilogue::add_relu));
  forward("evaluation_add_relu_without_residual", nothing, {"batch_norm: residual is absent, expected z"},
          evaluation(1e-5, Epilogue::add_relu));
  for (Epilogue epilogue : {Epilogue::none, Epilogue::relu}) {
    const std::string e = to_string(epilogue);
    forward(
        e + "_with_residual", [](Buffers& b, auto& t) { t.residual = Buffers::like_x(b.residual); },
        {"batch_norm: residual is given, expected none: epilogue " + e + " does not use it (add_relu adds it)"},
        training_with(epilogue));
  }
  forward(
      "residual_shape",
      [](Buffers& b, auto& t) {
        t.residual = TensorView(b.residual.data(), {2, 3, 4, 6});
      },
      {"batch_norm: residual has shape [2, 3, 4, 6], expected [2, 3, 4, 5] (the shape of input)"},
      training_with(Epilogue::add_relu));
  forward(
      "residual_layout", [](Buffers& b, auto& t) { t.residual = TensorView::channels_last(b.residual.data(), kShape); },
      {"batch_norm: residual has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"},
      training_with(Epilogue::add_relu));
  forward(
      "residual_null", [](Buffers&, auto& t) { t.residual = TensorView(nullptr, kShape); },
      {"batch_norm: residual has a null data pointer"}, training_with(Epilogue::add_relu));
  forward(
      "output_overlaps_residual", [](Buffers& b, auto& t) { t.residual = TensorView(b.y.data() + 5, kShape); },
      {"batch_norm: output overlaps residual in memory, expected disjoint memory"}, training_with(Epilogue::add_relu));
  forward(
      "running_mean_overlaps_residual",
      [](Buffers& b, auto& t) {
        t.residual = Buffers::like_x(b.residual);
        t.running_mean = TensorView(b.residual.data() + 7, {3});
      },
      {"batch_norm: running_mean overlaps residual in memory, expected disjoint memory"},
      training_with(Epilogue::add_relu));
  forward("silu", nothing,
          {"batch_norm: epilogue is silu, expected none, relu or add_relu (the epilogues of the batch_norm "
           "forward_training kernels this build has)"},
          training_with(Epilogue::silu));
  forward("evaluation_silu", nothing,
          {"batch_norm: epilogue is silu, expected none, relu or add_relu (the epilogues of the batch_norm "
           "forward_inference kernels this build has)"},
          evaluation(1e-5, Epilogue::silu));
  backward("silu", nothing, {"batch_norm: epilogue is silu, expected none, relu or add_relu"},
           training_with(Epilogue::silu));
  for (Epilogue epilogue : {Epilogue::relu, Epilogue::add_relu}) {
    const std::string e = to_string(epilogue);
    backward(
        e + "_without_output", [epilogue](Buffers& b, auto& t) { t = b.backward_with(epilogue), t.output.reset(); },
        {"batch_norm: output is absent, expected the forward's y, whose sign is the mask " + of_input + ": epilogue " +
         e + " needs it"},
        training_with(epilogue));
  }
  backward("none_with_output", [](Buffers& b, auto& t) { t.output = Buffers::like_x(b.y); },
           {"batch_norm: output is given, expected none: epilogue none does not use it (relu and add_relu do)"});
  backward(
      "add_relu_without_grad_residual",
      [](Buffers& b, auto& t) { t = b.backward_with(Epilogue::add_relu), t.grad_residual.reset(); },
      {"batch_norm: grad_residual is absent, expected dz, the residual's gradient " + of_input +
       ": epilogue add_relu needs it"},
      training_with(Epilogue::add_relu));
  backward(
      "relu_with_grad_residual",
      [](Buffers& b, auto& t) {
        t = b.backward_with(Epilogue::relu);
        t.grad_residual = Buffers::like_x(b.grad_residual);
      },
      {"batch_norm: grad_residual is given, expected none: epilogue relu does not use it (add_relu writes it)"},
      training_with(Epilogue::relu));
  backward(
      "output_shape",
      [](Buffers& b, auto& t) {
        t = b.backward_with(Epilogue::relu);
        t.output = TensorView(b.y.data(), {2, 3, 20});
      },
      {"batch_norm: output has shape [2, 3, 20], expected [2, 3, 4, 5] (the shape of input)"},
      training_with(Epilogue::relu));
  backward(
      "grad_residual_layout",
      [](Buffers& b, auto& t) {
        t = b.backward_with(Epilogue::add_relu);
        t.grad_residual = TensorView::channels_last(b.grad_residual.data(), kShape);
      },
      {"batch_norm: grad_residual has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"},
      training_with(Epilogue::add_relu));
  backward(
      "grad_residual_is_grad_input",
      [](Buffers& b, auto& t) {
        t = b.backward_with(Epilogue::add_relu);
        t.grad_residual = Buffers::like_x(b.grad_input);
      },
      {"batch_norm: grad_residual overlaps grad_input in memory, expected disjoint memory"},
      training_with(Epilogue::add_relu));
  backward(
      "grad_input_overlaps_output",
      [](Buffers& b, auto& t) {
        t = b.backward_with(Epilogue::relu);
        t.grad_input = TensorView(b.y.data() + 1, kShape);
      },
      {"batch_norm: grad_input overlaps output in memory, expected disjoint memory"}, training_with(Epilogue::relu));

  // Element types: the float buffers viewed as 16-bit (half their bytes), which a refusal must leave unwritten.
  auto as = [](std::vector<float>& data, DType dtype, std::span<const int64_t> shape) {
    return TensorView({data.data(), dtype}, shape);
  };
  const std::vector<int64_t> channels = {kChannels};
  // x and y (the forwards) in `dtype`.
  auto forward_in = [=](Buffers& b, auto& t, DType dtype) {
    t.input = as(b.x, dtype, kShape);
    t.output = as(b.y, dtype, kShape);
  };
  forward("output_dtype_other_than_input",
          [=](Buffers& b, auto& t) { t.output = as(b.y, DType::bfloat16, kShape); },
          {"batch_norm: output has dtype bfloat16, expected float32 (the dtype of input)"});
  forward("weight_dtype_neither_float32_nor_input",
          [=](Buffers& b, auto& t) {
            forward_in(b, t, DType::bfloat16);
            t.weight = as(b.weight, DType::float16, channels);
          },
          {"batch_norm: weight has dtype float16, expected float32 or bfloat16 (the dtype of input)"});
  forward("bias_dtype_other_than_weight",
          [=](Buffers& b, auto& t) {
            forward_in(b, t, DType::float16);
            t.bias = as(b.bias, DType::float16, channels);
          },
          {"batch_norm: bias has dtype float16, expected float32 (the dtype of weight: the parameters and their "
           "gradients share one)"});
  forward("running_mean_16_bit",
          [=](Buffers& b, auto& t) {
            forward_in(b, t, DType::bfloat16);
            t.running_mean = as(b.running_mean, DType::bfloat16, channels);
          },
          {"batch_norm: running_mean has dtype bfloat16, expected float32 (statistics are float32 whatever the "
           "dtype of input, bfloat16)"});
  backward("grad_input_dtype_other_than_input",
           [=](Buffers& b, auto& t) { t.grad_input = as(b.grad_input, DType::float16, kShape); },
           {"batch_norm: grad_input has dtype float16, expected float32 (the dtype of input)"});
  backward("grad_weight_dtype_other_than_weight",
           [=](Buffers& b, auto& t) {
             t.input = as(b.x, DType::bfloat16, kShape);
             t.grad_output = as(b.grad_output, DType::bfloat16, kShape);
             t.grad_input = as(b.grad_input, DType::bfloat16, kShape);
             t.grad_weight = as(b.grad_weight, DType::bfloat16, channels);
           },
           {"batch_norm: grad_weight has dtype bfloat16, expected float32 (the dtype of weight: the parameters and "
            "their gradients share one)"});

  add_family_cases(cases);

  // Views that cannot be made, and instruction sets that do not exist.
  cases.push_back({"tensor_view_negative_extent",
                   [](Buffers& b) {
                     TensorView(b.x.data(), {2, -3});
                   },
                   {"TensorView: shape [2, -3] has a negative extent"}});
  cases.push_back({"tensor_view_strides_count",
                   [](Buffers& b) {
                     TensorView(b.x.data(), {2, 3}, {1});
                   },
                   {"TensorView: strides [1] have 1 entries, expected 2 (one per dimension of shape [2, 3])"}});
  cases.push_back({"tensor_view_rank_above_max",
                   [](Buffers& b) {
                     TensorView(b.x.data(), {1, 2, 1, 1, 1, 1, 1, 1, 3});
                   },
                   {"TensorView: shape [1, 2, 1, 1, 1, 1, 1, 1, 3] has 9 dimensions, expected at most 8"}});
  cases.push_back({"tensor_view_channels_last_rank_above_max",
                   [](Buffers& b) {
                     const std::vector<int64_t> shape(9, 1);
                     TensorView::channels_last(b.x.data(), shape);
                   },
                   {"TensorView: shape [1, 1, 1, 1, 1, 1, 1, 1, 1] has 9 dimensions, expected at most 8"}});
  cases.push_back({"tensor_view_data_of_another_dtype",
                   [](Buffers& b) {
                     TensorView({b.x.data(), DType::bfloat16}, {2, 3}).data();
                   },
                   {"TensorView: data<float32>() of a view of dtype bfloat16, expected data<bfloat16>() or data_ptr()"}});
  cases.push_back({"set_max_isa_bogus",
                   [](Buffers&) { set_max_isa("bogus"); },
                   {"set_max_isa: isa is 'bogus', expected one of "
#if defined(__aarch64__)
                    "neon"
#else
                    "avx512, avx2, sse41"
#endif
                    " (or empty for the best available)"}});
  return cases;
}

class ErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ErrorTest, RefusedWithANamedArgumentAndNothingWritten) {
  Buffers buffers;
  const Buffers before = buffers;
  const std::string isa_before = max_isa();
  try {
    GetParam().call(buffers);
    ADD_FAILURE() << "no fusednorm::Error was thrown";
  } catch (const Error& error) {
    for (const std::string& part : GetParam().message) EXPECT_THAT(error.what(), HasSubstr(part));
  } catch (const std::exception& other) {
    ADD_FAILURE() << "threw " << typeid(other).name() << " instead of fusednorm::Error: " << other.what();
  }
  for (const auto& [name, member] : Buffers::all()) {
    const std::vector<float>&now = buffers.*member, &then = before.*member;
    EXPECT_EQ(0, std::memcmp(now.data(), then.data(), then.size() * sizeof(float))) << name << " was written";
  }
  EXPECT_EQ(buffers.num_batches_tracked, before.num_batches_tracked) << "num_batches_tracked was written";
  EXPECT_EQ(buffers.negative_counter, before.negative_counter) << "num_batches_tracked was written";
  EXPECT_EQ(buffers.full_counter, before.full_counter) << "num_batches_tracked was written";
  EXPECT_EQ(max_isa(), isa_before) << "max_isa was changed";
}

INSTANTIATE_TEST_SUITE_P(Malformed, ErrorTest, ::testing::ValuesIn(error_cases()), error_case_name);

// The layers and state-dict tensors take their shapes through the same checked product as TensorView.
TEST(ShapeArithmetic, LayersAndStateTensorsRefuseShapesThatWrap) {
  constexpr int64_t kWraps = 6148914691236517207;  // 3 * kWraps = 5 modulo 2^64
  try {
    LayerNorm layer({3, kWraps});
    ADD_FAILURE() << "LayerNorm({3, 6148914691236517207}) was accepted";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("LayerNorm: normalized_shape [3, 6148914691236517207] has more than 2^63 - 1"));
  }
  StateTensor t;
  t.shape = {3, kWraps};
  EXPECT_THROW(t.numel(), Error);
  // Large shapes that fit are views like any other: 2^62 elements, never allocated.
  EXPECT_EQ(TensorView(nullptr, {2, int64_t{1} << 61}).numel(), int64_t{1} << 62);
  EXPECT_EQ(TensorView(nullptr, {0, int64_t{1} << 62}).numel(), 0);
}

// The valid call every case starts from runs, so each refusal above is the broken argument's doing.
TEST(ErrorBaseline, TheBaseCallsAreValid) {
  Buffers b;
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), training()));
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), evaluation()));
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), training(std::nullopt)));
  EXPECT_NO_THROW(batch_norm_backward(b.backward(), training()));
  EXPECT_NO_THROW(batch_norm_backward(b.backward(), evaluation()));
  for (Epilogue epilogue : {Epilogue::relu, Epilogue::add_relu}) {
    SCOPED_TRACE(to_string(epilogue));
    EXPECT_NO_THROW(batch_norm_forward(b.forward_with(epilogue), training_with(epilogue)));
    EXPECT_NO_THROW(batch_norm_forward(b.forward_with(epilogue), evaluation(1e-5, epilogue)));
    EXPECT_NO_THROW(batch_norm_backward(b.backward_with(epilogue), training_with(epilogue)));
  }
  EXPECT_NO_THROW(group_norm_forward(b.group_forward(), groups()));
  GroupNormForwardTensors one_group = b.group_forward();
  one_group.save_mean = TensorView(b.save_mean.data(), {2, 1});
  one_group.save_invstd.reset();
  EXPECT_NO_THROW(group_norm_forward(one_group, groups(1)));
  EXPECT_NO_THROW(group_norm_backward(b.group_backward(), groups()));
  GroupNormBackwardTensors silu = b.group_backward();
  silu.bias = Buffers::channel(b.bias);
  EXPECT_NO_THROW(group_norm_backward(silu, groups(kGroups, Epilogue::silu)));
  EXPECT_NO_THROW(instance_norm_forward(b.instance_forward(), input_stats()));
  InstanceNormForwardTensors with_running = b.instance_forward();
  with_running.save_mean.reset();
  with_running.save_invstd.reset();
  EXPECT_NO_THROW(instance_norm_forward(with_running, input_stats(false)));
  EXPECT_NO_THROW(instance_norm_backward(b.instance_backward(), input_stats()));
  EXPECT_NO_THROW(instance_norm_backward(b.instance_backward(), input_stats(false)));
  EXPECT_NO_THROW(layer_norm_forward(b.layer_forward(), layer()));
  EXPECT_NO_THROW(layer_norm_backward(b.layer_backward(), layer()));
  EXPECT_NO_THROW(rms_norm_forward(b.rms_forward(), rms()));
  EXPECT_NO_THROW(rms_norm_backward(b.rms_backward(), rms()));
}

// The rows of LayerNorm and RMSNorm are the dimensions before normalized_shape, whatever their number; an input
// of exactly normalized_shape is one row. The statistics may have PyTorch's shape (*, 1, ..., 1).
TEST(ErrorBaseline, RowsAreTheLeadingDimensions) {
  Buffers b;
  LayerNormForwardTensors t = b.layer_forward();
  t.save_mean = TensorView(b.save_mean.data(), {2, 3, 1, 1});
  EXPECT_NO_THROW(layer_norm_forward(t, layer()));
  t.save_mean = TensorView(b.save_mean.data(), {kNumel / 5});
  t.save_invstd = TensorView(b.save_invstd.data(), {kNumel / 5});
  t.weight = TensorView(b.weight.data(), {5});
  t.bias.reset();
  EXPECT_NO_THROW(layer_norm_forward(t, layer({5})));
  RMSNormForwardTensors whole = b.rms_forward();
  whole.input = TensorView(b.x.data(), kNormalized);
  whole.output = TensorView(b.y.data(), kNormalized);
  whole.save_invstd = TensorView(b.save_invstd.data(), {1});
  EXPECT_NO_THROW(rms_norm_forward(whole, rms()));
}

// Where evaluation only reads the running statistics, sharing memory among inputs is allowed.
TEST(ErrorBaseline, EvaluationMayShareReadOnlyMemory) {
  Buffers b;
  BatchNormForwardTensors t = b.forward();
  t.running_var = t.running_mean = TensorView(b.running_var.data(), {3});
  t.save_mean.reset();
  t.save_invstd.reset();
  EXPECT_NO_THROW(batch_norm_forward(t, evaluation()));
}

}  // namespace
}  // namespace fusednorm
