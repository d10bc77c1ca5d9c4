// Every malformed argument is refused with a fusednorm::Error whose message names the argument, and where
// there is one, the value and what was expected; and nothing is written before the refusal: every buffer the
// call could see (inputs, outputs, running statistics, the counter) is bit for bit what it was.
//
// Each case starts from a valid call over one set of buffers (x of shape [2, 3, 4, 5], NCHW) and breaks one
// thing. Buffers have slack beyond the views, so a view that a missing check lets through reads and writes
// memory the test owns (and the comparison catches) rather than memory it does not.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <typeinfo>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using ::testing::HasSubstr;

const std::vector<int64_t> kShape = {2, 3, 4, 5};
constexpr int64_t kNumel = 120, kChannels = 3;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInfinity = std::numeric_limits<double>::infinity();

// The buffers of one call, random (outputs NaN), twice the size any valid view needs.
struct Buffers {
  Buffers() {
    test::Random rng(test::seed_for_current_test());
    for (std::vector<float>* tensor : {&x, &grad_output}) *tensor = test::random_vector(2 * kNumel, rng, -2, 2);
    for (std::vector<float>* tensor : {&y, &grad_input}) *tensor = test::poisoned(2 * kNumel);
    for (std::vector<float>* channel : {&weight, &bias, &running_mean}) {
      *channel = test::random_vector(2 * kChannels + 2, rng, -1, 1);
    }
    running_var = test::random_vector(2 * kChannels + 2, rng, 0.5, 2);
    for (std::vector<float>* channel : {&save_mean, &save_invstd}) {
      *channel = test::random_vector(2 * kChannels + 2, rng, 0.5, 2);
    }
    for (std::vector<float>* channel : {&grad_weight, &grad_bias}) *channel = test::poisoned(2 * kChannels + 2);
  }

  std::vector<float> x, y, grad_output, grad_input, weight, bias, running_mean, running_var, save_mean, save_invstd,
      grad_weight, grad_bias;
  int64_t num_batches_tracked = 3;
  int64_t negative_counter = -1;

  static TensorView channel(std::vector<float>& data) { return TensorView(data.data(), {kChannels}); }

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
            {"grad_bias", &Buffers::grad_bias}};
  }
  std::vector<float>& named(const std::string& name) {
    for (const auto& [buffer_name, member] : all()) {
      if (name == buffer_name) return this->*member;
    }
    throw std::logic_error("no buffer " + name);
  }
};

BatchNormOptions training(std::optional<double> momentum = 0.1, double eps = 1e-5) {
  BatchNormOptions options;
  options.momentum = momentum;
  options.eps = eps;
  return options;
}

BatchNormOptions evaluation(double eps = 1e-5) {
  BatchNormOptions options;
  options.training = false;
  options.eps = eps;
  return options;
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
    {"weight", &BatchNormBackwardTensors::weight},
    {"save_mean", &BatchNormBackwardTensors::save_mean},
    {"save_invstd", &BatchNormBackwardTensors::save_invstd},
    {"running_mean", &BatchNormBackwardTensors::running_mean},
    {"running_var", &BatchNormBackwardTensors::running_var},
    {"grad_weight", &BatchNormBackwardTensors::grad_weight},
    {"grad_bias", &BatchNormBackwardTensors::grad_bias}};

// Four ways to break a per-channel tensor, each with the message it must get. `set` replaces the argument
// (given the buffer the valid view is over) and makes the call.
template <typename SetAndCall>
void add_channel_cases(std::vector<ErrorCase>& cases, const std::string& prefix, const std::string& name,
                       SetAndCall set_and_call) {
  const std::string of_input = "(one per channel of input [2, 3, 4, 5])";
  cases.push_back({prefix + name + "_wrong_size",
                   [=](Buffers& b) { set_and_call(b, [](float* data) { return TensorView(data, {4}); }); },
                   {"batch_norm: " + name + " has 4 elements, expected 3 " + of_input}});
  cases.push_back({prefix + name + "_wrong_rank",
                   [=](Buffers& b) { set_and_call(b, [](float* data) { return TensorView(data, {1, 3}); }); },
                   {"batch_norm: " + name + " has shape [1, 3], expected [3] " + of_input}});
  cases.push_back({prefix + name + "_strided",
                   [=](Buffers& b) { set_and_call(b, [](float* data) { return TensorView(data, {3}, {2}); }); },
                   {"batch_norm: " + name + " has stride 2, expected 1 (dense)"}});
  cases.push_back({prefix + name + "_null",
                   [=](Buffers& b) { set_and_call(b, [](float*) { return TensorView(nullptr, {3}); }); },
                   {"batch_norm: " + name + " has a null data pointer"}});
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
  forward("input_rank_6", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {2, 3, 2, 2, 5, 1}); },
          {"batch_norm: input has 6 dimensions (shape [2, 3, 2, 2, 5, 1]), expected 2 to 5"});
  forward("input_no_elements", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {2, 0, 4, 5}); },
          {"batch_norm: input has no elements (shape [2, 0, 4, 5]), expected at least one"});
  forward("input_null", [](Buffers&, auto& t) { t.input = TensorView(nullptr, kShape); },
          {"batch_norm: input has a null data pointer"});
  forward("input_padded_rows", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), kShape, {96, 32, 8, 1}); },
          {"batch_norm: input has strides [96, 32, 8, 1] for shape [2, 3, 4, 5]",
           "expected a dense NCHW layout (strides [60, 20, 5, 1]) or NHWC (channels-last, strides [60, 1, 15, 3])"});
  forward("input_transposed_spatial",
          [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), kShape, {60, 20, 1, 4}); },
          {"batch_norm: input has strides [60, 20, 1, 4] for shape [2, 3, 4, 5]", "expected a dense NCHW layout"});
  forward("input_too_large_for_a_kernel_dimension",
          [](Buffers& b, auto& t) {
            t.input = TensorView(b.x.data(), {1, 2, int64_t{1} << 30, 2});
            t.output = TensorView(b.y.data(), {1, 2, int64_t{1} << 30, 2});
          },
          {"batch_norm: input has shape [1, 2, 1073741824, 2]", "(C x spatial = 4294967296)",
           "exceeds 2^31 - 1 elements"});
  backward("input_rank_1", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {120}); },
           {"batch_norm: input has 1 dimensions (shape [120]), expected 2 to 5"});
  backward("input_no_elements", [](Buffers& b, auto& t) { t.input = TensorView(b.x.data(), {0, 3, 4, 5}); },
           {"batch_norm: input has no elements (shape [0, 3, 4, 5])"});
  backward("input_null", [](Buffers&, auto& t) { t.input = TensorView(nullptr, kShape); },
           {"batch_norm: input has a null data pointer"});

  // Tensors like the input: shape, pointer, layout.
  forward("output_null", [](Buffers&, auto& t) { t.output = TensorView(nullptr, kShape); },
          {"batch_norm: output has a null data pointer"});
  forward("output_shape", [](Buffers& b, auto& t) { t.output = TensorView(b.y.data(), {2, 3, 4, 6}); },
          {"batch_norm: output has shape [2, 3, 4, 6], expected [2, 3, 4, 5] (the shape of input)"});
  forward("output_rank", [](Buffers& b, auto& t) { t.output = TensorView(b.y.data(), {2, 3, 20}); },
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
           [](Buffers& b, auto& t) { t.grad_output = TensorView(b.grad_output.data(), {2, 3, 5, 4}); },
           {"batch_norm: grad_output has shape [2, 3, 5, 4], expected [2, 3, 4, 5] (the shape of input)"});
  backward("grad_output_layout",
           [](Buffers& b, auto& t) { t.grad_output = TensorView::channels_last(b.grad_output.data(), kShape); },
           {"batch_norm: grad_output has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"});
  backward("grad_input_null", [](Buffers&, auto& t) { t.grad_input = TensorView(nullptr, kShape); },
           {"batch_norm: grad_input has a null data pointer"});
  backward("grad_input_shape", [](Buffers& b, auto& t) { t.grad_input = TensorView(b.grad_input.data(), {2, 3, 4}); },
           {"batch_norm: grad_input has shape [2, 3, 4], expected [2, 3, 4, 5]"});
  backward("grad_input_layout",
           [](Buffers& b, auto& t) { t.grad_input = TensorView::channels_last(b.grad_input.data(), kShape); },
           {"batch_norm: grad_input has strides [60, 1, 15, 3], expected [60, 20, 5, 1] (dense nchw"});

  // Per-channel tensors: size, rank, stride, pointer; each argument of each call.
  for (const auto& [name, member] : kForwardChannels) {
    add_channel_cases(cases, "forward_", name, [name = name, member = member](Buffers& b, auto make_view) {
      BatchNormForwardTensors t = b.forward();
      t.*member = make_view(b.named(name).data());
      batch_norm_forward(t, training());
    });
  }
  for (const auto& [name, member] : kBackwardChannels) {
    add_channel_cases(cases, "backward_", name, [name = name, member = member](Buffers& b, auto make_view) {
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
  forward("evaluation_without_running_statistics",
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
  forward("eps_infinite", nothing, {"batch_norm: eps is inf, expected a finite number >= 0"},
          training(0.1, kInfinity));
  forward("evaluation_eps_negative", nothing, {"batch_norm: eps is -1, expected a finite number >= 0"},
          evaluation(-1.0));
  forward("momentum_nan", nothing,
          {"batch_norm: momentum is nan, expected a finite number (or std::nullopt for a cumulative moving average)"},
          training(kNaN));
  forward("momentum_infinite", nothing, {"batch_norm: momentum is inf, expected a finite number"},
          training(kInfinity));
  forward("cumulative_average_without_counter", [](Buffers&, auto& t) { t.num_batches_tracked = nullptr; },
          {"batch_norm: num_batches_tracked is null, expected a counter: momentum is std::nullopt"},
          training(std::nullopt));
  forward("counter_negative", [](Buffers& b, auto& t) { t.num_batches_tracked = &b.negative_counter; },
          {"batch_norm: num_batches_tracked is -1, expected >= 0"});

  // Training needs more than one value per channel (PyTorch's message).
  for (auto [name, shape] : {std::pair<std::string, std::vector<int64_t>>{"2d", {1, 3}},
                             {"4d_1x1", {1, 3, 1, 1}},
                             {"5d_1x1x1", {1, 3, 1, 1, 1}}}) {
    forward("training_one_value_per_channel_" + name,
            [shape = shape](Buffers& b, auto& t) {
              t.input = TensorView(b.x.data(), shape);
              t.output = TensorView(b.y.data(), shape);
            },
            {"batch_norm: Expected more than 1 value per channel when training, got input size " +
             shape_string(shape)});
  }

  // The backward's statistics: the saved ones in training, the running ones in evaluation.
  backward("training_without_save_mean", [](Buffers&, auto& t) { t.save_mean.reset(); },
           {"batch_norm: save_mean is absent, expected save_mean and save_invstd from the training forward"});
  backward("training_without_save_invstd", [](Buffers&, auto& t) { t.save_invstd.reset(); },
           {"batch_norm: save_invstd is absent, expected save_mean and save_invstd from the training forward"});
  backward("evaluation_without_running_mean", [](Buffers&, auto& t) { t.running_mean.reset(); },
           {"batch_norm: running_mean is absent, expected running_mean and running_var"}, evaluation());
  backward("evaluation_without_running_var", [](Buffers&, auto& t) { t.running_var.reset(); },
           {"batch_norm: running_var is absent, expected running_mean and running_var"}, evaluation());
  backward("evaluation_eps_nan", nothing, {"batch_norm: eps is nan, expected a finite number >= 0"},
           evaluation(kNaN));

  // Overlapping memory: outputs must not overlap inputs (or each other), except y exactly over x.
  forward("output_overlaps_input",
          [](Buffers& b, auto& t) { t.output = TensorView(b.x.data() + 1, kShape); },
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
  forward("save_invstd_overlaps_output",
          [](Buffers& b, auto& t) { t.save_invstd = TensorView(b.y.data() + 100, {3}); },
          {"batch_norm: save_invstd overlaps output in memory, expected disjoint memory"});
  forward("running_var_overlaps_running_mean",
          [](Buffers& b, auto& t) { t.running_var = TensorView(b.running_mean.data() + 1, {3}); },
          {"batch_norm: running_var overlaps running_mean in memory, expected disjoint memory"});
  forward("running_mean_is_running_var",
          [](Buffers& b, auto& t) { t.running_mean = TensorView(b.running_var.data(), {3}); },
          {"batch_norm: running_var overlaps running_mean in memory, expected disjoint memory"});
  forward("running_mean_overlaps_input",
          [](Buffers& b, auto& t) { t.running_mean = TensorView(b.x.data() + 30, {3}); },
          {"batch_norm: running_mean overlaps input in memory, expected disjoint memory"});
  forward("running_var_overlaps_weight",
          [](Buffers& b, auto& t) { t.running_var = TensorView(b.weight.data(), {3}); },
          {"batch_norm: running_var overlaps weight in memory, expected disjoint memory"});
  backward("grad_input_is_grad_output",
           [](Buffers& b, auto& t) { t.grad_input = TensorView(b.grad_output.data(), kShape); },
           {"batch_norm: grad_input overlaps grad_output in memory, expected disjoint memory"});
  backward("grad_input_overlaps_input",
           [](Buffers& b, auto& t) { t.grad_input = TensorView(b.x.data() + 60, kShape); },
           {"batch_norm: grad_input overlaps input in memory, expected disjoint memory"});
  backward("grad_weight_overlaps_grad_bias",
           [](Buffers& b, auto& t) { t.grad_weight = TensorView(b.grad_bias.data() + 2, {3}); },
           {"batch_norm: grad_bias overlaps grad_weight in memory, expected disjoint memory"});
  backward("grad_bias_overlaps_weight", [](Buffers& b, auto& t) { t.grad_bias = TensorView(b.weight.data(), {3}); },
           {"batch_norm: grad_bias overlaps weight in memory, expected disjoint memory"});
  backward("grad_weight_overlaps_grad_input",
           [](Buffers& b, auto& t) { t.grad_weight = TensorView(b.grad_input.data() + 119, {3}); },
           {"batch_norm: grad_weight overlaps grad_input in memory, expected disjoint memory"});

  // Views that cannot be made, and instruction sets that do not exist.
  cases.push_back({"tensor_view_negative_extent", [](Buffers& b) { TensorView(b.x.data(), {2, -3}); },
                   {"TensorView: shape [2, -3] has a negative extent"}});
  cases.push_back({"tensor_view_strides_count", [](Buffers& b) { TensorView(b.x.data(), {2, 3}, {1}); },
                   {"TensorView: strides [1] have 1 entries, expected 2 (one per dimension of shape [2, 3])"}});
  cases.push_back({"set_max_isa_bogus", [](Buffers&) { set_max_isa("bogus"); },
                   {"set_max_isa: isa is 'bogus', expected one of avx512, avx2, sse41 (or empty for the best "
                    "available)"}});
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
  EXPECT_EQ(max_isa(), isa_before) << "max_isa was changed";
}

INSTANTIATE_TEST_SUITE_P(Malformed, ErrorTest, ::testing::ValuesIn(error_cases()), error_case_name);

// The valid call every case starts from runs, so each refusal above is the broken argument's doing.
TEST(ErrorBaseline, TheBaseCallsAreValid) {
  Buffers b;
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), training()));
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), evaluation()));
  EXPECT_NO_THROW(batch_norm_forward(b.forward(), training(std::nullopt)));
  EXPECT_NO_THROW(batch_norm_backward(b.backward(), training()));
  EXPECT_NO_THROW(batch_norm_backward(b.backward(), evaluation()));
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
