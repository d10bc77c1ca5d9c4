// The layer API (include/fusednorm/layers.h) and what comes with it: state dicts in safetensors files
// (include/fusednorm/state_dict.h) and the thread-pool controls (include/fusednorm/threads.h).
//
// BatchNorm in depth first, then the rest of the family (InstanceNorm, GroupNorm, LayerNorm, RMSNorm) and the
// epilogues through the NormLayer interface they share: forward and backward against the shared float64
// reference (support/norm_reference.h), InstanceNorm's running statistics, refusals, PyTorch's state_dict keys.
//
// - Training: several steps on fresh data, each checked against a float64 model of PyTorch's update of the
//   running statistics written here (the batch statistics come from the shared reference), with momentum and
//   with the cumulative moving average; then evaluation with the running statistics.
// - affine = false, track_running_stats = false, gradient accumulation and zero_grad.
// - Refusals: fusednorm::Error naming the argument, and the layer bit for bit as a twin built the same way
//   that never saw the bad call (parameters, buffers, gradients, and whether a backward is pending).
// - State dicts: round trips through a file, prefixes, a file assembled byte by byte from the format's spec,
//   malformed files.
// - Threads: results do not depend on the pool's size; the setter's contract.
// - A kernel's own error (Halide's bounds check) arrives as fusednorm::Error with Halide's text, and nothing
//   is printed.
#include "fusednorm/layers.h"

#include <HalideRuntime.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <typeinfo>
#include <vector>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm/state_dict.h"
#include "fusednorm/threads.h"
#include "runtime/backend.h"
#include "runtime/bind.h"
#include "runtime/plan.h"
#include "support/batch_norm_reference.h"
#include "support/norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using test::close;
using test::Random;
using ::testing::HasSubstr;

constexpr double kEps = 1e-5;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

// BatchNorm1d for (N, C) and (N, C, L), 2d for (N, C, H, W), 3d for (N, C, D, H, W).
std::unique_ptr<BatchNorm> make_layer(size_t rank, int64_t channels, BatchNormLayerOptions options = {}) {
  if (rank == 4) return std::make_unique<BatchNorm2d>(channels, options);
  if (rank == 5) return std::make_unique<BatchNorm3d>(channels, options);
  return std::make_unique<BatchNorm1d>(channels, options);
}

BatchNormLayerOptions with_momentum(std::optional<double> momentum) {
  BatchNormLayerOptions options;
  options.momentum = momentum;
  return options;
}

std::vector<uint32_t> bits(const std::vector<float>& values) {
  std::vector<uint32_t> result(values.size());
  if (!values.empty()) std::memcpy(result.data(), values.data(), values.size() * sizeof(float));
  return result;
}

// Everything a layer holds, as bit patterns (NaN and -0 compare as what they are).
struct LayerState {
  std::vector<uint32_t> weight, bias, grad_weight, grad_bias, running_mean, running_var;
  int64_t num_batches_tracked;
  bool training;
};

LayerState state_of(BatchNorm& layer) {
  return {bits(layer.weight()),       bits(layer.bias()),        bits(layer.grad_weight()),   bits(layer.grad_bias()),
          bits(layer.running_mean()), bits(layer.running_var()), layer.num_batches_tracked(), layer.is_training()};
}

void expect_same_state(const LayerState& got, const LayerState& expected, const std::string& context) {
  EXPECT_EQ(got.weight, expected.weight) << context << ": weight";
  EXPECT_EQ(got.bias, expected.bias) << context << ": bias";
  EXPECT_EQ(got.grad_weight, expected.grad_weight) << context << ": grad_weight";
  EXPECT_EQ(got.grad_bias, expected.grad_bias) << context << ": grad_bias";
  EXPECT_EQ(got.running_mean, expected.running_mean) << context << ": running_mean";
  EXPECT_EQ(got.running_var, expected.running_var) << context << ": running_var";
  EXPECT_EQ(got.num_batches_tracked, expected.num_batches_tracked) << context << ": num_batches_tracked";
  EXPECT_EQ(got.training, expected.training) << context << ": training";
}

// `call` must throw fusednorm::Error itself (not another std::runtime_error) whose message has every part.
void expect_error(const std::function<void()>& call, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "no fusednorm::Error was thrown";
  } catch (const Error& error) {
    EXPECT_EQ(typeid(error), typeid(Error));
    for (const std::string& part : parts) EXPECT_THAT(error.what(), HasSubstr(part));
  } catch (const std::exception& other) {
    ADD_FAILURE() << "threw " << typeid(other).name() << " instead of fusednorm::Error: " << other.what();
  }
}

// One batch: x and dy random, y and dx poisoned, viewed in one layout.
struct Batch {
  Batch(std::vector<int64_t> shape_, Layout layout_, Random& rng)
      : shape(std::move(shape_)),
        layout(layout_),
        d(test::dims_of(shape, layout)),
        x(test::random_input(d, rng)),
        dy(test::random_input(d, rng)),
        y(test::poisoned(d.numel())),
        dx(test::poisoned(d.numel())) {}

  TensorView view(std::vector<float>& data) const { return TensorView::with_layout(data.data(), shape, layout); }
  double count() const { return static_cast<double>(d.n * d.s); }

  std::vector<int64_t> shape;
  Layout layout;
  reference::Dims d;
  std::vector<float> x, dy, y, dx;
};

const float* or_null(const std::vector<float>& values) { return values.empty() ? nullptr : values.data(); }

// The reference's training forward with the layer's parameters (batch statistics only).
reference::ForwardTraining reference_training(const Batch& b, BatchNorm& layer) {
  return reference::batch_norm_forward_training(b.x.data(), b.d, or_null(layer.weight()), or_null(layer.bias()),
                                                nullptr, nullptr, 0.0, kEps);
}

reference::Backward reference_backward(const Batch& b, BatchNorm& layer, const reference::ForwardTraining& forward) {
  return reference::batch_norm_backward(b.x.data(), b.dy.data(), b.d, or_null(layer.weight()), forward.mean.data(),
                                        forward.invstd.data(), true);
}

// PyTorch's update of the running statistics in training (torch/nn/modules/batchnorm.py and
// native_batch_norm), in float64, written apart from the runtime:
//   num_batches_tracked += 1
//   factor = momentum, or 1 / num_batches_tracked when momentum is None (cumulative moving average)
//   running_mean = (1 - factor) * running_mean + factor * batch_mean
//   running_var  = (1 - factor) * running_var  + factor * batch_var * count / (count - 1)   (unbiased)
// starting from running_mean 0, running_var 1, num_batches_tracked 0.
struct RunningStatisticsModel {
  explicit RunningStatisticsModel(int64_t channels)
      : mean(static_cast<size_t>(channels), 0.0), var(static_cast<size_t>(channels), 1.0) {}

  void update(const reference::ForwardTraining& batch, double count, std::optional<double> momentum) {
    num_batches_tracked += 1;
    const double factor = momentum ? *momentum : 1.0 / static_cast<double>(num_batches_tracked);
    for (size_t c = 0; c < mean.size(); c++) {
      mean[c] = (1 - factor) * mean[c] + factor * batch.mean[c];
      var[c] = (1 - factor) * var[c] + factor * batch.biased_var[c] * count / (count - 1);
    }
  }

  std::vector<double> mean, var;
  int64_t num_batches_tracked = 0;
};

// A directory of its own for the running test (ctest runs tests of this file in parallel processes), removed
// afterwards.
class TempDir {
 public:
  TempDir() {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            test::identifier(std::string("fusednorm_layers_test_") + std::to_string(::getpid()) + "_" +
                             info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::set<std::string> keys_of(const StateDict& state) {
  std::set<std::string> keys;
  for (const auto& entry : state) keys.insert(entry.first);
  return keys;
}

// Test parameters are structs with a name: gtest names the cases, and prints them, by it.
template <typename Case>
std::string case_name(const ::testing::TestParamInfo<Case>& param) {
  return param.param.name;
}

// ---------------------------------------------------------------------------------------------------------------
// Training steps against the model of PyTorch's update

struct TrainingCase {
  std::string name;
  std::vector<int64_t> shape;  // of the first step; N grows by one every other step
  Layout layout;
  std::optional<double> momentum;
};

std::vector<TrainingCase> training_cases() {
  std::vector<TrainingCase> cases;
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    const std::string suffix = momentum ? "_momentum" : "_cumulative";
    cases.push_back({"1d_n9_c4" + suffix, {9, 4}, Layout::nchw, momentum});
    cases.push_back({"1d_n4_c3_l5" + suffix, {4, 3, 5}, Layout::nchw, momentum});
    cases.push_back({"2d_n6_c5_7x3" + suffix, {6, 5, 7, 3}, Layout::nchw, momentum});
    cases.push_back({"2d_n6_c5_7x3_channels_last" + suffix, {6, 5, 7, 3}, Layout::nhwc, momentum});
    cases.push_back({"3d_n2_c3_3x4x5" + suffix, {2, 3, 3, 4, 5}, Layout::nchw, momentum});
  }
  return cases;
}

void PrintTo(const TrainingCase& c, std::ostream* os) { *os << c.name; }

class LayerTrainingTest : public ::testing::TestWithParam<TrainingCase> {};

// Five steps, each on a fresh batch (N varies, so the unbiased correction count / (count - 1) does too);
// after each, y, the running statistics and num_batches_tracked match the model. Then evaluation normalizes
// with the running statistics and changes nothing in the layer.
TEST_P(LayerTrainingTest, RunningStatisticsFollowPyTorchsUpdateAtEveryStep) {
  const TrainingCase& p = GetParam();
  Random rng(test::seed_for_current_test());
  const int64_t channels = p.shape[1];
  std::unique_ptr<BatchNorm> layer = make_layer(p.shape.size(), channels, with_momentum(p.momentum));
  // Parameters the user set: the forward must use them, not PyTorch's initial 1 and 0.
  layer->weight() = test::random_vector(channels, rng, 0.5, 2.0);
  layer->bias() = test::random_vector(channels, rng, -1.0, 1.0);
  RunningStatisticsModel model(channels);

  for (int step = 0; step < 5; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<int64_t> shape = p.shape;
    shape[0] += step % 2;
    Batch b(shape, p.layout, rng);
    layer->forward(b.view(b.x), b.view(b.y));
    const reference::ForwardTraining ref = reference_training(b, *layer);
    model.update(ref, b.count(), p.momentum);
    EXPECT_TRUE(close("y", b.y, ref.y));
    EXPECT_TRUE(close("running_mean", layer->running_mean(), model.mean));
    EXPECT_TRUE(close("running_var", layer->running_var(), model.var));
    EXPECT_EQ(layer->num_batches_tracked(), model.num_batches_tracked);
  }

  layer->eval();
  const LayerState before = state_of(*layer);
  Batch b(p.shape, p.layout, rng);
  layer->forward(b.view(b.x), b.view(b.y));
  EXPECT_TRUE(
      close("y (evaluation)", b.y,
            reference::batch_norm_forward_inference(b.x.data(), b.d, layer->weight().data(), layer->bias().data(),
                                                    layer->running_mean().data(), layer->running_var().data(), kEps)));
  expect_same_state(state_of(*layer), before, "after the evaluation forward");
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerTrainingTest, ::testing::ValuesIn(training_cases()), case_name<TrainingCase>);

// PyTorch's initial state: weight 1, bias 0, running_mean 0, running_var 1, no batches, gradients 0, training.
TEST(LayerTest, StartsWithPyTorchsInitialState) {
  BatchNorm2d layer(3);
  EXPECT_EQ(layer.weight(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(layer.bias(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(layer.grad_weight(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(layer.grad_bias(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(layer.running_mean(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(layer.running_var(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  EXPECT_TRUE(layer.is_training());
  EXPECT_EQ(layer.num_features(), 3);
  layer.eval();
  EXPECT_FALSE(layer.is_training());
  layer.train();
  EXPECT_TRUE(layer.is_training());
}

// reset_running_stats() returns the buffers to their initial values.
TEST(LayerTest, ResetRunningStatsRestoresTheInitialBuffers) {
  Random rng(test::seed_for_current_test());
  BatchNorm2d layer(3);
  Batch b({2, 3, 4, 5}, Layout::nchw, rng);
  layer.forward(b.view(b.x), b.view(b.y));
  ASSERT_EQ(layer.num_batches_tracked(), 1);
  layer.reset_running_stats();
  EXPECT_EQ(layer.running_mean(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(layer.running_var(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(layer.num_batches_tracked(), 0);
}

// weight() and bias() are the vectors themselves: one resized is refused by the pass that reads it, with its size,
// before anything is written (the kernels read past a resized weight before), as a resized buffer is; resized back,
// it works. (BatchNorm's backward does not read the bias.)
TEST(LayerTest, ResizedParametersAreRefusedLikeTheBuffers) {
  Random rng(test::seed_for_current_test());
  BatchNorm2d layer(3);
  Batch b({2, 3, 4, 5}, Layout::nchw, rng);
  const std::vector<uint32_t> y_before = bits(b.y);
  for (std::vector<float>* parameter : {&layer.weight(), &layer.bias()}) {
    const std::string what = parameter == &layer.weight() ? "weight" : "bias";
    SCOPED_TRACE(what);
    const std::vector<float> values = *parameter;
    parameter->resize(parameter == &layer.weight() ? 1 : 7);
    expect_error([&] { layer.forward(b.view(b.x), b.view(b.y)); },
                 {"BatchNorm2d: " + what + " has " + std::to_string(parameter->size()) +
                  " values, expected 3 (the layer's feature shape [3]); resize it back"});
    EXPECT_EQ(bits(b.y), y_before) << "y was written";
    EXPECT_EQ(layer.running_mean(), std::vector<float>(3, 0.0f));
    EXPECT_EQ(layer.num_batches_tracked(), 0);
    *parameter = values;
  }
  layer.forward(b.view(b.x), b.view(b.y));
  EXPECT_EQ(layer.num_batches_tracked(), 1);

  const std::vector<uint32_t> dx_before = bits(b.dx);
  layer.weight().resize(2);
  expect_error([&] { layer.backward(b.view(b.dy), b.view(b.dx)); },
               {"BatchNorm2d: weight has 2 values, expected 3 (the layer's feature shape [3]); resize it back"});
  EXPECT_EQ(bits(b.dx), dx_before) << "dx was written";
  EXPECT_EQ(layer.grad_weight(), std::vector<float>(3, 0.0f));
  layer.weight().resize(3, 1.0f);
  layer.backward(b.view(b.dy), b.view(b.dx));  // the refused backward left the forward to differentiate
  EXPECT_NE(layer.grad_weight(), std::vector<float>(3, 0.0f));
}

// ---------------------------------------------------------------------------------------------------------------
// affine, track_running_stats, gradients

// A batch (or rows) far beyond what a kernel addresses is refused with fusednorm::Error before the layer allocates
// the statistics its forward would save (issue 13, row 7: bad_alloc or length_error before, and N = 2^31 zero-filled
// gigabytes first). The views' data is a few floats: nothing may be read.
TEST(LayerTest, HugeBatchesAreRefusedBeforeTheLayerAllocates) {
  std::vector<float> few(16, 1.0f);
  const int64_t huge = int64_t{1} << 40;
  const TensorView channels(few.data(), {huge, 4, 1, 1}), rows(few.data(), {huge, 4});
  const std::string limit = "exceeds 2^31 - 1";
  GroupNorm group(2, 4);
  expect_error([&] { group.forward(channels, channels); },
               {"group_norm: input has shape [1099511627776, 4, 1, 1]", limit});
  InstanceNorm2d instance(4);
  expect_error([&] { instance.forward(channels, channels); }, {"instance_norm: input has shape", limit});
  LayerNorm layer({4});
  expect_error([&] { layer.forward(rows, rows); }, {"layer_norm: input has shape [1099511627776, 4]", limit});
  RMSNorm rms({4});
  expect_error([&] { rms.forward(rows, rows); }, {"rms_norm: input has shape [1099511627776, 4]", limit});
  for (float v : few) EXPECT_EQ(v, 1.0f);
}

TEST(LayerTest, WithoutAffineThereAreNoParametersAndTheStateDictHasOnlyBuffers) {
  Random rng(test::seed_for_current_test());
  BatchNormLayerOptions options;
  options.affine = false;
  BatchNorm2d layer(5, options);
  EXPECT_TRUE(layer.weight().empty());
  EXPECT_TRUE(layer.bias().empty());
  EXPECT_TRUE(layer.grad_weight().empty());
  EXPECT_TRUE(layer.grad_bias().empty());

  Batch b({3, 5, 4, 7}, Layout::nchw, rng);
  layer.forward(b.view(b.x), b.view(b.y));
  const reference::ForwardTraining ref = reference_training(b, layer);
  EXPECT_TRUE(close("y", b.y, ref.y));
  layer.backward(b.view(b.dy), b.view(b.dx));
  EXPECT_TRUE(close("dx", b.dx, reference_backward(b, layer, ref).dx));
  EXPECT_TRUE(layer.grad_weight().empty());

  StateDict state;
  layer.save_to(state, "bn.");
  EXPECT_EQ(keys_of(state), (std::set<std::string>{"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}));
}

// Batch statistics in evaluation too (as PyTorch does), no buffers, nothing counted; and since the forward
// used batch statistics, its backward is the training one.
TEST(LayerTest, WithoutRunningStatsEvaluationUsesBatchStatistics) {
  Random rng(test::seed_for_current_test());
  BatchNormLayerOptions options;
  options.track_running_stats = false;
  BatchNorm1d layer(4, options);
  layer.weight() = test::random_vector(4, rng, 0.5, 2.0);
  layer.bias() = test::random_vector(4, rng, -1.0, 1.0);
  EXPECT_TRUE(layer.running_mean().empty());
  EXPECT_TRUE(layer.running_var().empty());

  Batch train(std::vector<int64_t>{5, 4, 6}, Layout::nchw, rng);
  layer.forward(train.view(train.x), train.view(train.y));
  EXPECT_TRUE(close("y (training)", train.y, reference_training(train, layer).y));
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  EXPECT_TRUE(layer.running_mean().empty());

  layer.eval();
  Batch eval(std::vector<int64_t>{5, 4, 6}, Layout::nchw, rng);
  layer.forward(eval.view(eval.x), eval.view(eval.y));
  const reference::ForwardTraining ref = reference_training(eval, layer);
  EXPECT_TRUE(close("y (evaluation)", eval.y, ref.y));
  EXPECT_EQ(layer.num_batches_tracked(), 0);
  layer.backward(eval.view(eval.dy), eval.view(eval.dx));
  const reference::Backward ref_backward = reference_backward(eval, layer, ref);
  EXPECT_TRUE(close("dx", eval.dx, ref_backward.dx));
  EXPECT_TRUE(close("grad_weight", layer.grad_weight(), ref_backward.dweight));
  EXPECT_TRUE(close("grad_bias", layer.grad_bias(), ref_backward.dbias));

  StateDict state;
  layer.save_to(state, "bn.");
  EXPECT_EQ(keys_of(state), (std::set<std::string>{"bn.weight", "bn.bias"}));
}

// Two forward/backward pairs: dx is each pair's own, the parameter gradients their sum; zero_grad clears them
// and the next pair starts from zero.
TEST(LayerTest, ParameterGradientsAccumulateUntilZeroGrad) {
  Random rng(test::seed_for_current_test());
  const std::vector<int64_t> shape{2, 3, 3, 4, 5};
  BatchNorm3d layer(3);
  layer.weight() = test::random_vector(3, rng, 0.5, 2.0);
  layer.bias() = test::random_vector(3, rng, -1.0, 1.0);

  std::vector<double> sum_dweight(3, 0.0), sum_dbias(3, 0.0);
  for (int pair = 0; pair < 2; pair++) {
    SCOPED_TRACE("pair " + std::to_string(pair));
    Batch b(shape, Layout::nchw, rng);
    layer.forward(b.view(b.x), b.view(b.y));
    layer.backward(b.view(b.dy), b.view(b.dx));
    const reference::Backward ref = reference_backward(b, layer, reference_training(b, layer));
    EXPECT_TRUE(close("dx", b.dx, ref.dx));
    for (size_t c = 0; c < 3; c++) {
      sum_dweight[c] += ref.dweight[c];
      sum_dbias[c] += ref.dbias[c];
    }
    EXPECT_TRUE(close("grad_weight", layer.grad_weight(), sum_dweight));
    EXPECT_TRUE(close("grad_bias", layer.grad_bias(), sum_dbias));
  }

  layer.zero_grad();
  EXPECT_EQ(bits(layer.grad_weight()), bits(std::vector<float>(3, 0.0f)));
  EXPECT_EQ(bits(layer.grad_bias()), bits(std::vector<float>(3, 0.0f)));

  Batch b(shape, Layout::nchw, rng);
  layer.forward(b.view(b.x), b.view(b.y));
  layer.backward(b.view(b.dy), b.view(b.dx));
  const reference::Backward ref = reference_backward(b, layer, reference_training(b, layer));
  EXPECT_TRUE(close("grad_weight after zero_grad", layer.grad_weight(), ref.dweight));
  EXPECT_TRUE(close("grad_bias after zero_grad", layer.grad_bias(), ref.dbias));
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals leave the layer as it was

// How the scene's last forward stands before the bad call.
enum class Last {
  fresh,              // no forward ever
  pending,            // a training forward whose backward has not run
  consumed,           // a training forward and its backward
  eval,               // evaluation mode, after an evaluation forward (with running statistics when tracked)
  in_place,           // a training forward with y = x, whose backward has not run
  pending_then_eval,  // a training forward whose backward has not run, then eval() (no forward since)
};

// A layer two training steps in (each a forward and a backward, with user-set parameters), then `last`. Built
// twice from one seed, the two are bit for bit the same: the twin never sees the bad call.
struct Scene {
  Scene(size_t rank, BatchNormLayerOptions options, Last last, uint64_t seed) : rng(seed) {
    static const std::vector<int64_t> shapes[] = {{}, {}, {6, 4}, {3, 4, 5}, {3, 4, 5, 2}, {2, 4, 3, 2, 3}};
    shape = shapes[rank];
    layer = make_layer(rank, 4, options);
    if (options.affine) {
      layer->weight() = test::random_vector(4, rng, 0.5, 2.0);
      layer->bias() = test::random_vector(4, rng, -1.0, 1.0);
    }
    const int steps = last == Last::fresh ? 0 : 2;
    for (int step = 0; step < steps; step++) {
      batch = std::make_unique<Batch>(shape, Layout::nchw, rng);
      layer->forward(batch->view(batch->x), batch->view(batch->y));
      layer->backward(batch->view(batch->dy), batch->view(batch->dx));
    }
    batch = std::make_unique<Batch>(shape, Layout::nchw, rng);
    if (last == Last::eval) layer->eval();
    if (last == Last::in_place) {
      layer->forward(batch->view(batch->x), batch->view(batch->x));
    } else if (last != Last::fresh) {
      layer->forward(batch->view(batch->x), batch->view(batch->y));
    }
    if (last == Last::consumed) layer->backward(batch->view(batch->dy), batch->view(batch->dx));
    if (last == Last::pending_then_eval) layer->eval();
    other = test::random_vector(4 * batch->d.numel(), rng, -1.0, 1.0);
  }

  // A state dict of another layer (other values everywhere) with this layer's keys under "bn.".
  StateDict other_state() {
    std::unique_ptr<BatchNorm> donor = make_layer(shape.size(), 4, layer->options());
    if (layer->options().affine) {
      donor->weight() = test::random_vector(4, rng, 0.5, 2.0);
      donor->bias() = test::random_vector(4, rng, -1.0, 1.0);
    }
    Batch b(shape, Layout::nchw, rng);
    donor->forward(b.view(b.x), b.view(b.y));
    StateDict state;
    donor->save_to(state, "bn.");
    return state;
  }

  TensorView x() { return batch->view(batch->x); }
  TensorView y() { return batch->view(batch->y); }
  TensorView dy() { return batch->view(batch->dy); }
  TensorView dx() { return batch->view(batch->dx); }
  // Memory of the test's own, for views of other shapes.
  TensorView other_view(std::vector<int64_t> other_shape) { return TensorView(other.data(), std::move(other_shape)); }

  Random rng;
  std::vector<int64_t> shape;
  std::unique_ptr<BatchNorm> layer;
  std::unique_ptr<Batch> batch;
  std::vector<float> other;
};

struct LayerErrorCase {
  std::string name;
  size_t rank;  // 2 or 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d
  Last last;
  std::function<void(Scene&)> call;
  std::vector<std::string> message;
  BatchNormLayerOptions options = {};
};

BatchNormLayerOptions without_affine() {
  BatchNormLayerOptions options;
  options.affine = false;
  return options;
}

BatchNormLayerOptions without_running_stats() {
  BatchNormLayerOptions options;
  options.track_running_stats = false;
  return options;
}

std::vector<LayerErrorCase> layer_error_cases() {
  std::vector<LayerErrorCase> cases;
  auto add = [&cases](std::string name, size_t rank, Last last, std::function<void(Scene&)> call,
                      std::vector<std::string> message, BatchNormLayerOptions options = {}) {
    cases.push_back({std::move(name), rank, last, std::move(call), std::move(message), options});
  };
  const std::string no_forward = "backward has no forward to differentiate, expected a forward with batch statistics";

  // Input rank and channels, in both directions.
  add("BatchNorm1d_input_rank_4", 2, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.other_view({6, 4, 1, 1}), s.y());
      },
      {"BatchNorm1d: input has 4 dimensions (shape [6, 4, 1, 1]), expected 2 or 3"});
  add("BatchNorm2d_input_rank_3", 4, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.other_view({3, 4, 10}), s.y());
      },
      {"BatchNorm2d: input has 3 dimensions (shape [3, 4, 10]), expected 4"});
  add("BatchNorm2d_input_rank_5", 4, Last::consumed,
      [](Scene& s) {
        s.layer->forward(s.other_view({3, 4, 5, 2, 1}), s.y());
      },
      {"BatchNorm2d: input has 5 dimensions (shape [3, 4, 5, 2, 1]), expected 4"});
  add("BatchNorm3d_input_rank_4", 5, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.other_view({2, 4, 3, 6}), s.y());
      },
      {"BatchNorm3d: input has 4 dimensions (shape [2, 4, 3, 6]), expected 5"});
  add("BatchNorm2d_input_channels", 4, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.other_view({3, 5, 5, 2}), s.other_view({3, 5, 5, 2}));
      },
      {"BatchNorm2d: input has 5 channels (shape [3, 5, 5, 2]), expected 4 (num_features)"});
  add("BatchNorm1d_input_channels_in_evaluation", 3, Last::eval,
      [](Scene& s) {
        s.layer->forward(s.other_view({3, 3, 5}), s.y());
      },
      {"BatchNorm1d: input has 3 channels (shape [3, 3, 5]), expected 4 (num_features)"});
  // A refused evaluation forward keeps the training forward before it differentiable.
  add("BatchNorm2d_input_channels_in_evaluation_after_a_training_forward", 4, Last::pending_then_eval,
      [](Scene& s) {
        s.layer->forward(s.other_view({3, 2, 5, 2}), s.other_view({3, 2, 5, 2}));
      },
      {"BatchNorm2d: input has 2 channels (shape [3, 2, 5, 2]), expected 4 (num_features)"});
  add("output_in_evaluation_after_a_training_forward", 5, Last::pending_then_eval,
      [](Scene& s) {
        s.layer->forward(s.x(), s.other_view({2, 4, 3, 3, 2}));
      },
      {"batch_norm: output has shape [2, 4, 3, 3, 2], expected [2, 4, 3, 2, 3] (the shape of input)"});
  add("BatchNorm2d_grad_output_rank", 4, Last::pending,
      [](Scene& s) {
        s.layer->backward(s.other_view({3, 4, 10}), s.dx());
      },
      {"BatchNorm2d: grad_output has 3 dimensions (shape [3, 4, 10]), expected 4"});
  add("BatchNorm3d_grad_output_channels", 5, Last::pending,
      [](Scene& s) {
        s.layer->backward(s.other_view({2, 3, 3, 2, 3}), s.dx());
      },
      {"BatchNorm3d: grad_output has 3 channels (shape [2, 3, 3, 2, 3]), expected 4 (num_features)"});
  add("BatchNorm2d_grad_output_not_the_inputs_shape", 4, Last::pending,
      [](Scene& s) {
        s.layer->backward(s.other_view({2, 4, 5, 2}), s.dx());
      },
      {"batch_norm: grad_output has shape [2, 4, 5, 2], expected [3, 4, 5, 2] (the shape of input)"});

  // Outputs the functional API refuses: the layer passes the refusal on and keeps its pending backward.
  add("output_shape", 4, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.x(), s.other_view({3, 4, 2, 5}));
      },
      {"batch_norm: output has shape [3, 4, 2, 5], expected [3, 4, 5, 2] (the shape of input)"});
  add("output_strides", 4, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.x(), TensorView::channels_last(s.other.data(), {3, 4, 5, 2}));
      },
      {"batch_norm: output has strides [40, 1, 8, 4], expected [40, 10, 2, 1] (dense nchw"});
  add("output_overlaps_input", 3, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.x(), TensorView(s.batch->x.data() + 1, {3, 4, 5}));
      },
      {"batch_norm: output overlaps input in memory"});
  add("output_in_evaluation", 2, Last::eval,
      [](Scene& s) {
        s.layer->forward(s.x(), s.other_view({6, 5}));
      },
      {"batch_norm: output has shape [6, 5], expected [6, 4] (the shape of input)"});
  add("grad_input_shape", 4, Last::pending,
      [](Scene& s) {
        s.layer->backward(s.dy(), s.other_view({3, 4, 10, 1}));
      },
      {"batch_norm: grad_input has shape [3, 4, 10, 1], expected [3, 4, 5, 2] (the shape of input)"});

  // Backward without a forward to differentiate.
  add("backward_without_forward", 4, Last::fresh, [](Scene& s) { s.layer->backward(s.dy(), s.dx()); },
      {"BatchNorm2d: " + no_forward});
  add("backward_twice", 3, Last::consumed, [](Scene& s) { s.layer->backward(s.dy(), s.dx()); },
      {"BatchNorm1d: " + no_forward});
  add("backward_after_evaluation_forward", 5, Last::eval, [](Scene& s) { s.layer->backward(s.dy(), s.dx()); },
      {"BatchNorm3d: " + no_forward});
  // The forward wrote y over x: the input the backward needs is gone (PyTorch's autograd refuses a backward
  // through a tensor modified in place the same way).
  add("backward_after_in_place_forward", 4, Last::in_place, [](Scene& s) { s.layer->backward(s.dy(), s.dx()); },
      {"BatchNorm2d: backward of a forward that ran in place (output was input)"});

  // Training needs more than one value per channel.
  add("one_value_per_channel_1d", 2, Last::pending,
      [](Scene& s) {
        s.layer->forward(s.other_view({1, 4}), TensorView(s.batch->y.data(), {1, 4}));
      },
      {"batch_norm: Expected more than 1 value per channel when training, got input size [1, 4]"});
  add("one_value_per_channel_2d", 4, Last::consumed,
      [](Scene& s) {
        s.layer->forward(s.other_view({1, 4, 1, 1}), TensorView(s.batch->y.data(), {1, 4, 1, 1}));
      },
      {"batch_norm: Expected more than 1 value per channel when training, got input size [1, 4, 1, 1]"});
  // Evaluation without running statistics uses batch statistics, so its forward is pending a backward.
  add(
      "one_value_per_channel_without_running_stats_in_evaluation", 3, Last::eval,
      [](Scene& s) {
        s.layer->forward(s.other_view({1, 4, 1}), TensorView(s.batch->y.data(), {1, 4, 1}));
      },
      {"batch_norm: Expected more than 1 value per channel when training, got input size [1, 4, 1]"},
      without_running_stats());

  // load_from: strict, and all or nothing. The state is another layer's, so a partial load would show.
  auto load = [&add](std::string name, size_t rank, BatchNormLayerOptions options,
                     std::function<void(StateDict&)> change, std::vector<std::string> message) {
    add(
        "load_from_" + name, rank, Last::pending,
        [change](Scene& s) {
          StateDict state = s.other_state();
          change(state);
          s.layer->load_from(state, "bn.");
        },
        message, options);
  };
  load("missing_weight", 4, {}, [](StateDict& s) { s.erase("bn.weight"); },
       {"BatchNorm2d: load_from: missing key 'bn.weight'"});
  load("missing_num_batches_tracked", 4, {}, [](StateDict& s) { s.erase("bn.num_batches_tracked"); },
       {"BatchNorm2d: load_from: missing key 'bn.num_batches_tracked'"});
  load("wrong_prefix", 2, {},
       [](StateDict& s) {
         s = StateDict{{"bn1.weight", s.at("bn.weight")}};
       },
       {"BatchNorm1d: load_from: missing key 'bn.weight'"});
  load("unexpected_weight", 5, without_affine(),
       [](StateDict& s) {
         s["bn.weight"] = StateTensor::from_floats({1, 2, 3, 4});
       },
       {"BatchNorm3d: load_from: unexpected key 'bn.weight' (affine=false, track_running_stats=true)"});
  load("unexpected_running_var", 4, without_running_stats(),
       [](StateDict& s) {
         s["bn.running_var"] = StateTensor::from_floats({1, 2, 3, 4});
       },
       {"BatchNorm2d: load_from: unexpected key 'bn.running_var' (affine=true, track_running_stats=false)"});
  load("running_var_shape", 4, {},
       [](StateDict& s) {
         s["bn.running_var"] = StateTensor::from_floats({1, 2, 3});
       },
       {"BatchNorm2d: load_from: 'bn.running_var' is float32 [3], expected float32 [4]"});
  load("bias_rank", 3, {},
       [](StateDict& s) {
         s["bn.bias"].shape = {1, 4};
       },
       {"BatchNorm1d: load_from: 'bn.bias' is float32 [1, 4], expected float32 [4]"});
  load("num_batches_tracked_dtype", 4, {},
       [](StateDict& s) {
         StateTensor t;
         t.f32 = {7.0f};
         s["bn.num_batches_tracked"] = t;
       },
       {"BatchNorm2d: load_from: 'bn.num_batches_tracked' is float32 [], expected int64 []"});
  load("weight_dtype", 4, {},
       [](StateDict& s) {
         StateTensor t;
         t.dtype = StateTensor::DType::int64;
         t.shape = {4};
         t.i64 = {1, 2, 3, 4};
         s["bn.weight"] = t;
       },
       {"BatchNorm2d: load_from: 'bn.weight' is int64 [4], expected float32, bfloat16 or float16 [4]"});
  // Tensors built by hand whose values do not fill their shape.
  load("running_mean_values", 4, {}, [](StateDict& s) { s["bn.running_mean"].f32.pop_back(); },
       {"BatchNorm2d: load_from: 'bn.running_mean' has 3 values, expected 4 (shape [4])"});
  load("num_batches_tracked_values", 4, {}, [](StateDict& s) { s["bn.num_batches_tracked"].i64.clear(); },
       {"BatchNorm2d: load_from: 'bn.num_batches_tracked' has 0 values, expected 1 (shape [])"});
  // A counter the next training forward cannot increment (signed overflow before), or a negative one.
  load("num_batches_tracked_at_int64_max", 4, {},
       [](StateDict& s) { s["bn.num_batches_tracked"].i64 = {std::numeric_limits<int64_t>::max()}; },
       {"BatchNorm2d: load_from: 'bn.num_batches_tracked' is 9223372036854775807, expected 0 to 2^63 - 2"});
  load("num_batches_tracked_negative", 4, {}, [](StateDict& s) { s["bn.num_batches_tracked"].i64 = {-5}; },
       {"BatchNorm2d: load_from: 'bn.num_batches_tracked' is -5, expected 0 to 2^63 - 2"});
  return cases;
}

void PrintTo(const LayerErrorCase& c, std::ostream* os) { *os << c.name; }

class LayerErrorTest : public ::testing::TestWithParam<LayerErrorCase> {};

// The bad call throws; then the layer, and the memory its pending backward reads, are bit for bit the twin's;
// and a backward does what it does on the twin (the same dx and gradients, or the same refusal).
TEST_P(LayerErrorTest, RefusedWithANamedArgumentAndTheLayerUnchanged) {
  const LayerErrorCase& p = GetParam();
  const uint64_t seed = test::seed_for_current_test();
  Scene scene(p.rank, p.options, p.last, seed), twin(p.rank, p.options, p.last, seed);
  expect_error([&] { p.call(scene); }, p.message);

  expect_same_state(state_of(*scene.layer), state_of(*twin.layer), "after the refusal");
  EXPECT_EQ(bits(scene.batch->x), bits(twin.batch->x)) << "x was written";
  EXPECT_EQ(bits(scene.batch->y), bits(twin.batch->y)) << "y was written";
  EXPECT_EQ(bits(scene.batch->dx), bits(twin.batch->dx)) << "dx was written";

  std::string scene_refusal, twin_refusal;
  try {
    twin.layer->backward(twin.dy(), twin.dx());
  } catch (const Error& error) {
    twin_refusal = error.what();
  }
  try {
    scene.layer->backward(scene.dy(), scene.dx());
  } catch (const Error& error) {
    scene_refusal = error.what();
  }
  EXPECT_EQ(scene_refusal, twin_refusal) << "a backward after the refusal";
  EXPECT_EQ(bits(scene.batch->dx), bits(twin.batch->dx)) << "dx of a backward after the refusal";
  expect_same_state(state_of(*scene.layer), state_of(*twin.layer), "after a backward");
}

INSTANTIATE_TEST_SUITE_P(Malformed, LayerErrorTest, ::testing::ValuesIn(layer_error_cases()),
                         case_name<LayerErrorCase>);

TEST(LayerErrorTest, ConstructorRefusesNumFeaturesBelowOneAndBadEps) {
  for (int64_t features : {0, -3}) {
    const std::string value = std::to_string(features);
    expect_error([&] { BatchNorm1d layer(features); }, {"BatchNorm1d: num_features is " + value + ", expected >= 1"});
    expect_error([&] { BatchNorm2d layer(features); }, {"BatchNorm2d: num_features is " + value + ", expected >= 1"});
    expect_error([&] { BatchNorm3d layer(features); }, {"BatchNorm3d: num_features is " + value + ", expected >= 1"});
  }
  for (double eps : {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    BatchNormLayerOptions options;
    options.eps = eps;
    expect_error([&] { BatchNorm2d layer(3, options); }, {"BatchNorm2d: eps is ", "expected a finite number >= 0"});
  }
  // Refused when the layer is made, not first at a training forward.
  for (double momentum : {std::numeric_limits<double>::quiet_NaN(), 1e300, -0.5, 1.5}) {
    BatchNormLayerOptions options;
    options.momentum = momentum;
    expect_error([&] { BatchNorm2d layer(3, options); }, {"BatchNorm2d: momentum is ", "expected a number in [0, 1]"});
    InstanceNormLayerOptions instance;
    instance.momentum = momentum;
    expect_error([&] { InstanceNorm2d layer(3, instance); },
                 {"InstanceNorm2d: momentum is ", "expected a number in [0, 1]"});
  }
  for (double momentum : {0.0, 1.0}) {
    BatchNormLayerOptions options;
    options.momentum = momentum;
    EXPECT_NO_THROW(BatchNorm2d(3, options));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// State dicts

void train_a_little(BatchNorm& layer, const std::vector<int64_t>& shape, Random& rng, int steps = 3) {
  if (!layer.weight().empty()) {
    layer.weight() = test::random_vector(layer.num_features(), rng, 0.5, 2.0);
    layer.bias() = test::random_vector(layer.num_features(), rng, -1.0, 1.0);
  }
  for (int step = 0; step < steps; step++) {
    Batch b(shape, Layout::nchw, rng);
    layer.forward(b.view(b.x), b.view(b.y));
    layer.backward(b.view(b.dy), b.view(b.dx));
  }
}

// Save, write, read, load into a fresh layer: the same state bit for bit (gradients are not state, and stay
// zero), and the same outputs bit for bit in evaluation and in training.
TEST(StateDictTest, RoundTripThroughAFileIsBitForBit) {
  struct Config {
    std::string name;
    std::vector<int64_t> shape;
    BatchNormLayerOptions options;
    std::set<std::string> keys;
  };
  const std::set<std::string> all = {"encoder.bn.weight", "encoder.bn.bias", "encoder.bn.running_mean",
                                     "encoder.bn.running_var", "encoder.bn.num_batches_tracked"};
  const std::vector<Config> configs = {
      {"2d cumulative", {4, 5, 3, 2}, with_momentum(std::nullopt), all},
      {"1d without affine",
       {7, 6},
       without_affine(),
       {"encoder.bn.running_mean", "encoder.bn.running_var", "encoder.bn.num_batches_tracked"}},
      {"3d without running stats", {2, 3, 2, 2, 3}, without_running_stats(), {"encoder.bn.weight", "encoder.bn.bias"}}};
  TempDir dir;
  Random rng(test::seed_for_current_test());
  for (const Config& config : configs) {
    SCOPED_TRACE(config.name);
    const int64_t channels = config.shape[1];
    std::unique_ptr<BatchNorm> layer = make_layer(config.shape.size(), channels, config.options);
    train_a_little(*layer, config.shape, rng);
    StateDict saved;
    layer->save_to(saved, "encoder.bn.");
    EXPECT_EQ(keys_of(saved), config.keys);
    const std::string path = dir.file(test::identifier(config.name) + ".safetensors");
    save_state_dict(saved, path);

    std::unique_ptr<BatchNorm> restored = make_layer(config.shape.size(), channels, config.options);
    restored->load_from(load_state_dict(path), "encoder.bn.");
    layer->zero_grad();
    expect_same_state(state_of(*restored), state_of(*layer), "restored");

    for (bool training : {false, true}) {
      layer->train(training);
      restored->train(training);
      Batch b(config.shape, Layout::nchw, rng);
      std::vector<float> restored_y = test::poisoned(b.d.numel());
      layer->forward(b.view(b.x), b.view(b.y));
      restored->forward(b.view(b.x), b.view(restored_y));
      EXPECT_EQ(bits(restored_y), bits(b.y)) << (training ? "training" : "evaluation") << " forward";
      expect_same_state(state_of(*restored), state_of(*layer), "after a forward");
    }
  }
}

// Several layers in one dict, each under its own prefix, beside keys of other modules; the empty prefix.
TEST(StateDictTest, PrefixesKeepLayersApart) {
  Random rng(test::seed_for_current_test());
  BatchNorm2d first(3), second(3);
  train_a_little(first, {2, 3, 4, 4}, rng, 1);
  train_a_little(second, {2, 3, 4, 4}, rng, 2);
  StateDict state;
  state["fc.weight"] = StateTensor::from_floats({1, 2, 3, 4, 5, 6});
  first.save_to(state, "features.0.");
  second.save_to(state, "features.1.");
  EXPECT_EQ(state.size(), 11u);

  TempDir dir;
  save_state_dict(state, dir.file("model.safetensors"));
  const StateDict loaded = load_state_dict(dir.file("model.safetensors"));
  EXPECT_EQ(keys_of(loaded), keys_of(state));
  BatchNorm2d first_restored(3), second_restored(3);
  first_restored.load_from(loaded, "features.0.");
  second_restored.load_from(loaded, "features.1.");
  first.zero_grad();
  second.zero_grad();
  expect_same_state(state_of(first_restored), state_of(first), "features.0.");
  expect_same_state(state_of(second_restored), state_of(second), "features.1.");
  EXPECT_EQ(second_restored.num_batches_tracked(), 2);

  StateDict bare;
  second.save_to(bare);
  EXPECT_EQ(keys_of(bare),
            (std::set<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  BatchNorm2d bare_restored(3);
  bare_restored.load_from(bare);
  expect_same_state(state_of(bare_restored), state_of(second), "no prefix");
}

// A safetensors file as another writer (Python's safetensors) makes it, assembled here byte by byte from the
// format's description: an 8-byte little-endian header length, a JSON header with "__metadata__" and the
// tensors in an order of its own (not ours, which is sorted), spaces after separators, padded with spaces to
// 8 bytes, then the data in yet another order.
void append_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; i++) out += static_cast<char>((value >> (8 * i)) & 0xff);
}

struct HandTensor {
  std::string name, dtype, shape;  // shape as JSON, e.g. "[3]"
  std::string data;                // little-endian bytes
};

std::string float_bytes(const std::vector<float>& values) {
  std::string out;
  for (float value : values) append_little_endian(out, std::bit_cast<uint32_t>(value), 4);
  return out;
}

std::string int64_bytes(int64_t value) {
  std::string out;
  append_little_endian(out, static_cast<uint64_t>(value), 8);
  return out;
}

// Header entries in `order`, data laid out in `data_order` (indices into tensors).
std::string safetensors_file(const std::vector<HandTensor>& tensors, const std::vector<size_t>& order,
                             const std::vector<size_t>& data_order, const std::string& metadata) {
  std::vector<std::pair<size_t, size_t>> offsets(tensors.size());
  std::string data;
  for (size_t i : data_order) {
    offsets[i] = {data.size(), data.size() + tensors[i].data.size()};
    data += tensors[i].data;
  }
  std::string header = "{";
  for (size_t k = 0; k < order.size(); k++) {
    if (k == 1) header += "\"__metadata__\": " + metadata + ", ";
    const HandTensor& t = tensors[order[k]];
    header += "\"" + t.name + "\": {\"dtype\": \"" + t.dtype + "\", \"shape\": " + t.shape + ", \"data_offsets\": [" +
              std::to_string(offsets[order[k]].first) + ", " + std::to_string(offsets[order[k]].second) + "]}";
    if (k + 1 < order.size()) header += ", ";
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string file;
  append_little_endian(file, header.size(), 8);
  return file + header + data;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

TEST(StateDictTest, LoadsAFileFromAnotherWriter) {
  const std::vector<float> weight{0.5f, -1.25f, 3.0f}, bias{0.125f, 0.0f, -2.5f};
  const std::vector<float> running_mean{1.5f, -0.75f, 1e-3f}, running_var{2.0f, 0.25f, 7.5f};
  const std::vector<HandTensor> tensors = {{"bn.weight", "F32", "[3]", float_bytes(weight)},
                                           {"bn.bias", "F32", "[3]", float_bytes(bias)},
                                           {"bn.running_mean", "F32", "[3]", float_bytes(running_mean)},
                                           {"bn.running_var", "F32", "[3]", float_bytes(running_var)},
                                           {"bn.num_batches_tracked", "I64", "[]", int64_bytes(7)}};
  TempDir dir;
  const std::string path = dir.file("from_python.safetensors");
  write_file(path, safetensors_file(tensors, {4, 2, 0, 3, 1}, {1, 3, 4, 0, 2}, "{\"format\": \"pt\"}"));

  const StateDict state = load_state_dict(path);
  EXPECT_EQ(keys_of(state), (std::set<std::string>{"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                                   "bn.num_batches_tracked"}));
  EXPECT_EQ(state.at("bn.num_batches_tracked").dtype, StateTensor::DType::int64);
  EXPECT_TRUE(state.at("bn.num_batches_tracked").shape.empty());
  EXPECT_EQ(state.at("bn.weight").shape, std::vector<int64_t>{3});
  BatchNorm2d layer(3);
  layer.load_from(state, "bn.");
  EXPECT_EQ(bits(layer.weight()), bits(weight));
  EXPECT_EQ(bits(layer.bias()), bits(bias));
  EXPECT_EQ(bits(layer.running_mean()), bits(running_mean));
  EXPECT_EQ(bits(layer.running_var()), bits(running_var));
  EXPECT_EQ(layer.num_batches_tracked(), 7);
}

// A tensor of no elements (shape [0], data_offsets [n, n]) loads as one (issue 13, row 6: UBSan's memcpy from null
// under the asan preset before).
TEST(StateDictTest, LoadsTensorsOfNoElements) {
  const std::vector<HandTensor> tensors = {{"empty", "F32", "[0]", ""},
                                           {"bn.weight", "F32", "[2]", float_bytes({0.5f, 2.0f})},
                                           {"empty_counter", "I64", "[0, 3]", ""}};
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  write_file(path, safetensors_file(tensors, {0, 1, 2}, {0, 1, 2}, "{}"));
  const StateDict state = load_state_dict(path);
  EXPECT_EQ(state.at("empty").shape, std::vector<int64_t>{0});
  EXPECT_TRUE(state.at("empty").f32.empty());
  EXPECT_EQ(state.at("empty_counter").shape, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(state.at("empty_counter").i64.empty());
  EXPECT_EQ(state.at("bn.weight").f32, (std::vector<float>{0.5f, 2.0f}));
}

std::string uint16_bytes(const std::vector<uint16_t>& values) {
  std::string out;
  for (uint16_t value : values) append_little_endian(out, value, 2);
  return out;
}

// F16 and BF16 tensors (PyTorch's torch.float16 and torch.bfloat16 state) load keeping their dtype, their values
// widened exactly: normal, subnormal, largest, infinite and NaN values; they save back bit for bit, and load into a
// layer of float32 parameters.
TEST(StateDictTest, LoadsAndSavesFloat16AndBfloat16) {
  const float inf = std::numeric_limits<float>::infinity();
  // float16: 1, -2, 65504 (the largest), 2^-24 (the smallest subnormal), -2^-14 (the smallest normal), 1/3 rounded,
  // +-inf, NaN.
  const std::vector<uint16_t> half_bits = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8400, 0x3555, 0x7c00, 0xfc00, 0x7e00};
  const std::vector<float> half_values = {1.0f, -2.0f, 65504.0f, 0x1p-24f, -0x1p-14f, 0x1.554p-2f, inf, -inf};
  // bfloat16: 1, -3, 2^-133 (a subnormal), 1/3 rounded, inf, NaN.
  const std::vector<uint16_t> bf16_bits = {0x3f80, 0xc040, 0x0001, 0x3eab, 0x7f80, 0x7fc0};
  const std::vector<float> bf16_values = {1.0f, -3.0f, 0x1p-133f, 0x1.56p-2f, inf};
  const std::vector<HandTensor> tensors = {
      {"half", "F16", "[9]", uint16_bytes(half_bits)},
      {"bf16", "BF16", "[2, 3]", uint16_bytes(bf16_bits)},
      {"bn.weight", "F16", "[3]", uint16_bytes({0x3c00, 0x3800, 0xc200})},  // 1, 0.5, -3
      {"bn.bias", "BF16", "[3]", uint16_bytes({0x0000, 0x3e80, 0xbf00})},   // 0, 0.25, -0.5
      {"bn.running_mean", "F32", "[3]", float_bytes({0.5f, -1.0f, 2.0f})},
      {"bn.running_var", "BF16", "[3]", uint16_bytes({0x4000, 0x3f80, 0x4080})},  // 2, 1, 4
      {"bn.num_batches_tracked", "I64", "[]", int64_bytes(3)}};
  TempDir dir;
  const std::string path = dir.file("half.safetensors");
  write_file(path, safetensors_file(tensors, {0, 1, 2, 3, 4, 5, 6}, {6, 4, 0, 1, 2, 3, 5}, "{\"format\": \"pt\"}"));
  const StateDict state = load_state_dict(path);

  const StateTensor& half = state.at("half");
  EXPECT_EQ(half.dtype, StateTensor::DType::float16);
  ASSERT_EQ(half.f32.size(), 9u);
  EXPECT_EQ(bits(std::vector<float>(half.f32.begin(), half.f32.end() - 1)), bits(half_values));
  EXPECT_TRUE(std::isnan(half.f32.back()));
  const StateTensor& bf16 = state.at("bf16");
  EXPECT_EQ(bf16.dtype, StateTensor::DType::bfloat16);
  EXPECT_EQ(bf16.shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(bf16.f32.size(), 6u);
  EXPECT_EQ(bits(std::vector<float>(bf16.f32.begin(), bf16.f32.end() - 1)), bits(bf16_values));
  EXPECT_TRUE(std::isnan(bf16.f32.back()));

  // Saved again, each tensor's bytes are the ones PyTorch wrote, under the same dtype.
  const std::string again = dir.file("again.safetensors");
  save_state_dict(state, again);
  std::ifstream in(again, std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const HandTensor& t : tensors) {
    EXPECT_NE(file.find("\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\""), std::string::npos) << t.name;
    EXPECT_NE(file.find(t.data), std::string::npos) << t.name;
  }
  const StateDict reloaded = load_state_dict(again);
  for (const auto& [name, t] : state) {
    EXPECT_EQ(reloaded.at(name).dtype, t.dtype) << name;
    EXPECT_EQ(bits(reloaded.at(name).f32), bits(t.f32)) << name;
  }

  BatchNorm2d layer(3);
  layer.load_from(state, "bn.");
  EXPECT_EQ(layer.weight(), (std::vector<float>{1.0f, 0.5f, -3.0f}));
  EXPECT_EQ(layer.bias(), (std::vector<float>{0.0f, 0.25f, -0.5f}));
  EXPECT_EQ(layer.running_var(), (std::vector<float>{2.0f, 1.0f, 4.0f}));
  EXPECT_EQ(layer.num_batches_tracked(), 3);
}

// What we write is what the format says, byte for byte where it is fixed: the length, a JSON object, 8-byte
// alignment, and each tensor's little-endian bytes at its offsets.
TEST(StateDictTest, WritesTheFormat) {
  StateDict state;
  state["b"] = StateTensor::from_floats({1.5f, -2.0f});
  state["a"] = StateTensor::scalar_int64(-3);
  TempDir dir;
  save_state_dict(state, dir.file("ours.safetensors"));
  std::ifstream in(dir.file("ours.safetensors"), std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(file.size(), 8u);
  uint64_t length = 0;
  for (int i = 7; i >= 0; i--) length = (length << 8) | static_cast<unsigned char>(file[static_cast<size_t>(i)]);
  ASSERT_EQ(length % 8, 0u);
  ASSERT_EQ(file.size(), 8 + length + 8 + 8);
  const std::string header = file.substr(8, length);
  EXPECT_EQ(header.front(), '{');
  EXPECT_THAT(header, HasSubstr("\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}"));
  EXPECT_THAT(header, HasSubstr("\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}"));
  EXPECT_EQ(file.substr(8 + length), int64_bytes(-3) + float_bytes({1.5f, -2.0f}));
}

// Files that are not valid safetensors (or that use what we do not read) are refused with the path named.
TEST(StateDictTest, MalformedFilesAreRefusedNamingThePath) {
  TempDir dir;
  const std::vector<HandTensor> good = {{"bn.weight", "F32", "[3]", float_bytes({1, 2, 3})},
                                        {"bn.num_batches_tracked", "I64", "[]", int64_bytes(2)}};
  const std::string valid = safetensors_file(good, {0, 1}, {0, 1}, "{}");
  auto with_header = [](const std::string& header, const std::string& data) {
    std::string file;
    append_little_endian(file, header.size(), 8);
    return file + header + data;
  };
  const std::string twelve_bytes = float_bytes({1, 2, 3});
  struct Case {
    std::string name, bytes;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"empty", "", {"has 0 bytes, expected at least 8"}},
      {"shorter_than_the_length", valid.substr(0, 5), {"has 5 bytes, expected at least 8"}},
      {"truncated_data",
       valid.substr(0, valid.size() - 4),
       {"the tensors' data ends at byte 20 of the 16-byte data section"}},
      {"truncated_header", valid.substr(0, 20), {"declares a", "-byte header, but the file has 20 bytes"}},
      {"header_length_too_large",
       with_header("{}", "").replace(0, 8, int64_bytes(int64_t{1} << 40)),
       {"declares a 1099511627776-byte header"}},
      {"header_length_wraps", with_header("{}", "").replace(0, 8, int64_bytes(-1)), {"-byte header"}},
      {"bad_json_missing_comma",
       with_header("{\"w\": {\"dtype\": \"F32\" \"shape\": [3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"malformed safetensors header", "expected '}'"}},
      {"bad_json_unterminated", with_header("{\"w\": {\"dtype\": \"F3", ""), {"malformed safetensors header"}},
      {"bad_json_trailing", with_header("{} x", ""), {"malformed safetensors header", "expected end of input"}},
      {"header_not_an_object", with_header("[1, 2]", ""), {"the header is not a JSON object"}},
      {"unsupported_dtype_F64",
       with_header("{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", int64_bytes(0)),
       {"tensor 'w' has dtype 'F64', expected F32, F16, BF16 or I64"}},
      {"data_offsets_out_of_range",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [4, 16]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [4, 16], expected them to begin at 0"}},
      {"data_offsets_reversed",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [12, 0]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [12, 0], expected 12 bytes for its dtype and shape"}},
      {"data_offsets_not_the_shape",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [0, 12], expected 8 bytes for its dtype and shape"}},
      {"data_offsets_one_entry",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [12]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [12], expected two integers >= 0"}},
      {"entry_lacks_shape",
       with_header("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' lacks dtype, shape or data_offsets"}},
      {"entry_not_an_object", with_header("{\"w\": 5}", ""), {"tensor 'w' is not an object"}},
      // JSON of the wrong type where the format has a string, an array or an integer.
      {"dtype_not_a_string",
       with_header("{\"w\": {\"dtype\": 32, \"shape\": [3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' has a dtype that is not a string"}},
      {"shape_not_an_array",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": 3, \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' has shape 3, expected an array of integers >= 0"}},
      {"shape_of_strings",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [\"3\"], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' has shape [\"3\"], expected an array of integers >= 0"}},
      {"data_offsets_not_integers",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [\"0\", 12]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [\"0\",12], expected two integers >= 0"}},
      {"negative_extents",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, -3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"tensor 'w' has shape [-1,-3], expected an array of integers >= 0"}},
      {"extents_overflow",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4], \"data_offsets\": [0, 0]}}",
                   ""),
       {"tensor 'w' has shape [4294967296,4294967296,4]: too many elements"}},
      {"integer_too_large",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 99999999999999999999999]}}",
                   twelve_bytes),
       {"tensor 'w' has data_offsets [0,9.999999999999999e+22], expected two integers >= 0"}},
      {"lone_minus", with_header("{\"w\": -}", ""), {"malformed safetensors header", "expected digit after '-'"}},
      {"fraction",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12.0]}}", twelve_bytes),
       {"tensor 'w' has data_offsets [0,12.0], expected two integers >= 0"}},
      {"unknown_escape",
       with_header("{\"w\\q\": 1}", ""),
       {"malformed safetensors header", "forbidden character after backslash"}},
      {"bad_unicode_escape",
       with_header("{\"w\\u12x4\": 1}", ""),
       {"malformed safetensors header", "'\\u' must be followed by 4 hex digits"}},
      {"duplicate_name",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}, "
                   "\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}",
                   twelve_bytes),
       {"malformed safetensors header: the key 'w' appears twice in one object"}},
      // Issue 13, row 9: what the reference reader refuses and the loader accepted before.
      {"duplicate_field",  // the first dtype, I64, won before
       with_header("{\"w\": {\"dtype\": \"I64\", \"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
                   float_bytes({1, 2})),
       {"malformed safetensors header: the key 'dtype' appears twice in one object"}},
      {"overlapping_offsets",
       with_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                   twelve_bytes),
       {"tensor 'b' has data_offsets [4, 12], expected them to begin at 12"}},
      {"gapped_offsets",
       with_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
                   twelve_bytes),
       {"tensor 'b' has data_offsets [8, 12], expected them to begin at 4"}},
      {"bytes_after_the_tensors",
       with_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", twelve_bytes),
       {"the tensors' data ends at byte 8 of the 12-byte data section"}},
      {"lone_surrogate",
       with_header("{\"w\\ud800\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"malformed safetensors header", "surrogate"}},
      {"invalid_utf8",
       with_header("{\"w\xff\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"malformed safetensors header", "ill-formed UTF-8 byte"}},
      {"raw_control_character",
       with_header("{\"w\x01\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}", twelve_bytes),
       {"malformed safetensors header", "control character U+0001"}},
      {"leading_zeros",
       with_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [00, 12]}}", twelve_bytes),
       {"malformed safetensors header", "unexpected number literal"}},
      {"metadata_not_an_object",
       with_header("{\"__metadata__\": 5, \"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}",
                   twelve_bytes),
       {"__metadata__ is 5, expected an object of strings"}},
      {"metadata_not_strings",
       with_header("{\"__metadata__\": {\"format\": 1}}", ""),
       {"__metadata__ is {\"format\":1}, expected an object of strings"}},
      {"header_over_the_format_limit",
       with_header("{}", std::string(100'000'000, ' ')).replace(0, 8, int64_bytes(100'000'001)),
       {"declares a 100000001-byte header", "at most 100000000"}},
      {"nested_too_deep",
       with_header(std::string(100000, '[') + std::string(100000, ']'), ""),
       {"malformed safetensors header", "nested deeper than"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.file(c.name + ".safetensors");
    write_file(path, c.bytes);
    std::vector<std::string> parts = c.message;
    parts.push_back("load_state_dict: '" + path + "'");
    expect_error([&] { load_state_dict(path); }, parts);
  }
  // A directory (std::ios_base::failure before, issue 13 row 7).
  expect_error([&] { load_state_dict(dir.file("")); }, {"load_state_dict: '" + dir.file("") + "' is a directory"});
  expect_error([&] { load_state_dict(dir.file("absent.safetensors")); },
               {"load_state_dict: cannot open '" + dir.file("absent.safetensors") + "'"});
  expect_error([&] { save_state_dict({}, dir.file("no/such/directory.safetensors")); },
               {"save_state_dict: cannot write '" + dir.file("no/such/directory.safetensors") + "'"});
  // Errors of the file system say so in their kind; a malformed file is an invalid argument.
  for (const auto& [call, kind] :
       {std::pair<std::function<void()>, Error::Kind>{[&] { load_state_dict(dir.file("absent.safetensors")); },
                                                      Error::Kind::io},
        {[&] { save_state_dict({}, dir.file("no/such/directory.safetensors")); }, Error::Kind::io},
        {[&] { load_state_dict(dir.file("")); }, Error::Kind::invalid_argument}}) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
    }
  }
}

// Names with characters JSON escapes survive our round trip, and another writer's escapes (\u, surrogate
// pairs, \/) are read as JSON defines them.
TEST(StateDictTest, NamesAreEscapedAsJsonDefines) {
  StateDict state;
  state["quote\"back\\slash"] = StateTensor::from_floats({1.0f});
  state["control\x01\ttab\nnewline"] = StateTensor::from_floats({2.0f});
  state["caf\xc3\xa9"] = StateTensor::from_floats({3.0f});
  TempDir dir;
  save_state_dict(state, dir.file("escaped.safetensors"));
  EXPECT_EQ(keys_of(load_state_dict(dir.file("escaped.safetensors"))), keys_of(state));

  const std::vector<HandTensor> tensors = {{"bn\\u002eweight", "F32", "[1]", float_bytes({1})},
                                           {"a\\/b", "F32", "[1]", float_bytes({2})},
                                           {"caf\\u00e9 \\ud83d\\ude00", "F32", "[1]", float_bytes({3})}};
  write_file(dir.file("theirs.safetensors"), safetensors_file(tensors, {0, 1, 2}, {0, 1, 2}, "{}"));
  EXPECT_EQ(keys_of(load_state_dict(dir.file("theirs.safetensors"))),
            (std::set<std::string>{"bn.weight", "a/b", "caf\xc3\xa9 \xf0\x9f\x98\x80"}));
}

// ---------------------------------------------------------------------------------------------------------------
// The rest of the family: InstanceNorm, GroupNorm, LayerNorm, RMSNorm, and the epilogues (BatchNorm's too).
// Every layer against the shared float64 reference (support/norm_reference.h), through the NormLayer interface.

enum class Kind { batch, instance, group, layer, rms };

// One layer and the input it takes. The fields a kind does not use are ignored.
struct FamilyCase {
  std::string name;
  Kind kind;
  std::vector<int64_t> shape;  // the input's
  Layout layout = Layout::nchw;
  Epilogue epilogue = Epilogue::none;
  bool affine = true;  // BatchNorm, InstanceNorm and GroupNorm: affine; LayerNorm and RMSNorm: elementwise_affine
  bool bias = true;    // LayerNorm
  int64_t groups = 1;  // GroupNorm
  int64_t normalized_dims = 1;           // LayerNorm and RMSNorm: how many trailing dimensions of the input
  bool unbatched = false;                // InstanceNorm: (C, *spatial)
  bool track_running_stats = false;      // InstanceNorm
  std::optional<double> momentum = 0.1;  // InstanceNorm
  std::optional<double> rms_eps = std::nullopt;
  DType dtype = DType::float32;  // of the parameters
};

void PrintTo(const FamilyCase& c, std::ostream* os) { *os << c.name; }

std::vector<int64_t> trailing(const std::vector<int64_t>& shape, int64_t dims) {
  return {shape.end() - dims, shape.end()};
}

std::unique_ptr<NormLayer> make_family_layer(const FamilyCase& c) {
  const int64_t channels = c.shape.size() > 1 ? c.shape[c.unbatched ? 0 : 1] : 0;  // not for LayerNorm, RMSNorm
  switch (c.kind) {
    case Kind::batch: {
      BatchNormLayerOptions options;
      options.affine = c.affine;
      options.epilogue = c.epilogue;
      options.dtype = c.dtype;
      return make_layer(c.shape.size(), channels, options);
    }
    case Kind::instance: {
      const InstanceNormLayerOptions options{
          .momentum = c.momentum, .affine = c.affine, .track_running_stats = c.track_running_stats, .dtype = c.dtype};
      const size_t spatial = c.shape.size() - (c.unbatched ? 1 : 2);
      if (spatial == 3) return std::make_unique<InstanceNorm3d>(channels, options);
      if (spatial == 2) return std::make_unique<InstanceNorm2d>(channels, options);
      return std::make_unique<InstanceNorm1d>(channels, options);
    }
    case Kind::group:
      return std::make_unique<GroupNorm>(
          c.groups, channels, GroupNormLayerOptions{.affine = c.affine, .epilogue = c.epilogue, .dtype = c.dtype});
    case Kind::layer:
      return std::make_unique<LayerNorm>(
          trailing(c.shape, c.normalized_dims),
          LayerNormLayerOptions{.elementwise_affine = c.affine, .bias = c.bias, .dtype = c.dtype});
    case Kind::rms:
      return std::make_unique<RMSNorm>(
          trailing(c.shape, c.normalized_dims),
          RMSNormLayerOptions{.eps = c.rms_eps, .elementwise_affine = c.affine, .dtype = c.dtype});
  }
  return nullptr;
}

// Which elements share statistics, over the input's memory.
reference::Grouping grouping_of(const FamilyCase& c) {
  if (c.kind == Kind::layer || c.kind == Kind::rms) {
    // (rows, D, 1): the leading dimensions are rows, the normalized ones a row of D.
    int64_t rows = 1, features = 1;
    for (size_t d = 0; d < c.shape.size(); d++) {
      (d + static_cast<size_t>(c.normalized_dims) < c.shape.size() ? rows : features) *= c.shape[d];
    }
    return reference::Grouping::rows(c.kind == Kind::layer ? reference::Norm::layer : reference::Norm::rms, rows,
                                     features);
  }
  std::vector<int64_t> shape = c.shape;
  if (c.unbatched) shape.insert(shape.begin(), 1);
  const reference::Dims d = test::dims_of(shape, c.layout);
  if (c.kind == Kind::batch) return reference::Grouping::batch(d);
  if (c.kind == Kind::instance) return reference::Grouping::instance(d);
  return reference::Grouping::group(d, c.groups);
}

double eps_of(const FamilyCase& c) { return c.kind == Kind::rms ? c.rms_eps.value_or(0x1p-23) : kEps; }

reference::Affine affine_of(NormLayer& layer) { return {or_null(layer.weight()), or_null(layer.bias())}; }

void randomize_parameters(NormLayer& layer, Random& rng) {
  layer.weight() = test::random_vector(static_cast<int64_t>(layer.weight().size()), rng, 0.5, 2.0);
  layer.bias() = test::random_vector(static_cast<int64_t>(layer.bias().size()), rng, -1.0, 1.0);
}

// One batch of a FamilyCase: x, z and dy random, y, dx and dz poisoned.
struct FamilyBatch {
  FamilyBatch(const FamilyCase& c_, Random& rng)
      : c(c_),
        g(grouping_of(c)),
        x(test::random_input(g.d, rng)),
        z(test::random_input(g.d, rng)),
        dy(test::random_input(g.d, rng)),
        y(test::poisoned(g.d.numel())),
        dx(test::poisoned(g.d.numel())),
        dz(test::poisoned(g.d.numel())) {}

  TensorView view(std::vector<float>& data) const { return TensorView::with_layout(data.data(), c.shape, c.layout); }

  void forward(NormLayer& layer) {
    if (c.epilogue == Epilogue::add_relu) {
      layer.forward(view(x), view(z), view(y));
    } else {
      layer.forward(view(x), view(y));
    }
  }
  void backward(NormLayer& layer) {
    if (c.epilogue == Epilogue::add_relu) {
      layer.backward(view(dy), view(dx), view(dz));
    } else {
      layer.backward(view(dy), view(dx));
    }
  }

  // The forward with the input's own statistics, and its gradients (the relu masks from the layer's y).
  reference::Forward reference_forward(NormLayer& layer) const {
    return reference::forward(x.data(), g, affine_of(layer), eps_of(c), c.epilogue,
                              c.epilogue == Epilogue::add_relu ? z.data() : nullptr);
  }
  // Evaluation with running statistics (BatchNorm, InstanceNorm): per channel, whatever the norm.
  std::vector<double> reference_evaluation(NormLayer& layer, const std::vector<float>& running_mean,
                                           const std::vector<float>& running_var) const {
    std::vector<double> mean, invstd;
    for (size_t ch = 0; ch < running_mean.size(); ch++) {
      mean.push_back(running_mean[ch]);
      invstd.push_back(1.0 / std::sqrt(static_cast<double>(running_var[ch]) + kEps));
    }
    return reference::normalize(x.data(), reference::Grouping::batch(g.d), mean.data(), invstd.data(), affine_of(layer),
                                c.epilogue, c.epilogue == Epilogue::add_relu ? z.data() : nullptr);
  }
  reference::Backward reference_backward(NormLayer& layer, const reference::Forward& forward) const {
    return reference::backward(x.data(), dy.data(), g, g.centred() ? forward.mean.data() : nullptr,
                               forward.invstd.data(), affine_of(layer), true, c.epilogue, y.data());
  }

  FamilyCase c;
  reference::Grouping g;
  std::vector<float> x, z, dy, y, dx, dz;
};

std::vector<FamilyCase> family_cases() {
  using E = Epilogue;
  return {
      // InstanceNorm: every rank, both layouts, unbatched, with and without affine.
      {.name = "InstanceNorm1d_n3_c4_l9", .kind = Kind::instance, .shape = {3, 4, 9}},
      {.name = "InstanceNorm1d_affine_unbatched_c4_l9", .kind = Kind::instance, .shape = {4, 9}, .unbatched = true},
      {.name = "InstanceNorm2d_affine_n2_c3_5x4_channels_last",
       .kind = Kind::instance,
       .shape = {2, 3, 5, 4},
       .layout = Layout::nhwc},
      {.name = "InstanceNorm2d_plain_unbatched_c3_5x4",
       .kind = Kind::instance,
       .shape = {3, 5, 4},
       .affine = false,
       .unbatched = true},
      {.name = "InstanceNorm3d_plain_n2_c3_2x3x4", .kind = Kind::instance, .shape = {2, 3, 2, 3, 4}, .affine = false},
      // GroupNorm: every epilogue, ranks 2 to 5, both layouts.
      {.name = "GroupNorm_g3_n2_c6_5x4", .kind = Kind::group, .shape = {2, 6, 5, 4}, .groups = 3},
      {.name = "GroupNorm_g3_n3_c12", .kind = Kind::group, .shape = {3, 12}, .groups = 3},
      {.name = "GroupNorm_relu_g2_n2_c4_3x5_channels_last",
       .kind = Kind::group,
       .shape = {2, 4, 3, 5},
       .layout = Layout::nhwc,
       .epilogue = E::relu,
       .groups = 2},
      {.name = "GroupNorm_add_relu_g4_n2_c8_3x3",
       .kind = Kind::group,
       .shape = {2, 8, 3, 3},
       .epilogue = E::add_relu,
       .groups = 4},
      {.name = "GroupNorm_silu_g3_n2_c6_l7", .kind = Kind::group, .shape = {2, 6, 7}, .epilogue = E::silu, .groups = 3},
      {.name = "GroupNorm_silu_plain_g2_n2_c4_3x3_channels_last",
       .kind = Kind::group,
       .shape = {2, 4, 3, 3},
       .layout = Layout::nhwc,
       .epilogue = E::silu,
       .affine = false,
       .groups = 2},
      {.name = "GroupNorm_plain_g2_n2_c4_2x3x3",
       .kind = Kind::group,
       .shape = {2, 4, 2, 3, 3},
       .affine = false,
       .groups = 2},
      // LayerNorm: one and two normalized dimensions, no leading dimension, without bias, without affine.
      {.name = "LayerNorm_4x7", .kind = Kind::layer, .shape = {4, 7}},
      {.name = "LayerNorm_2x3_of_4x5", .kind = Kind::layer, .shape = {2, 3, 4, 5}, .normalized_dims = 2},
      {.name = "LayerNorm_one_row_of_9", .kind = Kind::layer, .shape = {9}},
      {.name = "LayerNorm_without_bias_5x6", .kind = Kind::layer, .shape = {5, 6}, .bias = false},
      {.name = "LayerNorm_plain_3x2x8", .kind = Kind::layer, .shape = {3, 2, 8}, .affine = false},
      // RMSNorm: PyTorch's default eps and an explicit one.
      {.name = "RMSNorm_4x7", .kind = Kind::rms, .shape = {4, 7}},
      {.name = "RMSNorm_eps_1e_5_2x3_of_4x5",
       .kind = Kind::rms,
       .shape = {2, 3, 4, 5},
       .normalized_dims = 2,
       .rms_eps = 1e-5},
      {.name = "RMSNorm_plain_6x5", .kind = Kind::rms, .shape = {6, 5}, .affine = false},
      // BatchNorm's epilogues (training; evaluation below).
      {.name = "BatchNorm2d_relu_n3_c4_5x2", .kind = Kind::batch, .shape = {3, 4, 5, 2}, .epilogue = E::relu},
      {.name = "BatchNorm2d_add_relu_n3_c4_5x2_channels_last",
       .kind = Kind::batch,
       .shape = {3, 4, 5, 2},
       .layout = Layout::nhwc,
       .epilogue = E::add_relu},
      {.name = "BatchNorm1d_add_relu_plain_n6_c4",
       .kind = Kind::batch,
       .shape = {6, 4},
       .epilogue = E::add_relu,
       .affine = false},
      {.name = "BatchNorm3d_relu_n2_c3_2x3x2", .kind = Kind::batch, .shape = {2, 3, 2, 3, 2}, .epilogue = E::relu},
  };
}

class FamilyLayerTest : public ::testing::TestWithParam<FamilyCase> {};

// Two forward / backward pairs on fresh data: y, dx (and dz) are each pair's own, the parameter gradients their
// sum; zero_grad clears them. Every output starts as NaN, so an element left unwritten fails.
TEST_P(FamilyLayerTest, ForwardAndBackwardMatchTheReferenceAndGradientsAccumulate) {
  const FamilyCase& p = GetParam();
  Random rng(test::seed_for_current_test());
  std::unique_ptr<NormLayer> layer = make_family_layer(p);
  randomize_parameters(*layer, rng);
  std::vector<double> sum_dweight(layer->weight().size(), 0.0), sum_dbias(layer->bias().size(), 0.0);
  for (int pair = 0; pair < 2; pair++) {
    SCOPED_TRACE("pair " + std::to_string(pair));
    FamilyBatch b(p, rng);
    b.forward(*layer);
    const reference::Forward ref = b.reference_forward(*layer);
    EXPECT_TRUE(close("y", b.y, ref.y));
    b.backward(*layer);
    const reference::Backward ref_backward = b.reference_backward(*layer, ref);
    EXPECT_TRUE(close("dx", b.dx, ref_backward.dx));
    if (p.epilogue == Epilogue::add_relu) {
      EXPECT_TRUE(close("dz", b.dz, ref_backward.dz));
    }
    for (size_t i = 0; i < sum_dweight.size(); i++) sum_dweight[i] += ref_backward.dweight[i];
    for (size_t i = 0; i < sum_dbias.size(); i++) sum_dbias[i] += ref_backward.dbias[i];
    EXPECT_TRUE(close("grad_weight", layer->grad_weight(), sum_dweight));
    EXPECT_TRUE(close("grad_bias", layer->grad_bias(), sum_dbias));
  }
  layer->zero_grad();
  EXPECT_EQ(bits(layer->grad_weight()), bits(std::vector<float>(sum_dweight.size(), 0.0f)));
  EXPECT_EQ(bits(layer->grad_bias()), bits(std::vector<float>(sum_dbias.size(), 0.0f)));
}

INSTANTIATE_TEST_SUITE_P(Layers, FamilyLayerTest, ::testing::ValuesIn(family_cases()), case_name<FamilyCase>);

// The 16-bit twin of FamilyLayerTest: x, z and dy in bfloat16 or float16, rounded before the reference sees them,
// y, dx and dz poisoned; the layer's parameters float32 (autocast's) or in the dtype of x. Tolerances:
// test::storage_tolerance, derived in test_data.h.
struct HalfFamilyCase {
  std::string name;
  FamilyCase c;
  DType dtype;           // of x and the tensors like it
  bool half_parameters;  // the layer's dtype is the inputs'
};
void PrintTo(const HalfFamilyCase& c, std::ostream* os) { *os << c.name; }

std::vector<HalfFamilyCase> half_family_cases() {
  std::vector<HalfFamilyCase> result;
  for (DType dtype : {DType::bfloat16, DType::float16}) {
    for (bool half_parameters : {false, true}) {
      for (FamilyCase c : family_cases()) {
        c.name += std::string("_") + name(dtype) + (half_parameters ? "_parameters" : "");
        if (half_parameters) c.dtype = dtype;
        result.push_back({c.name, c, dtype, half_parameters});
      }
    }
  }
  return result;
}

bool runs_here(DType dtype) {
  for (const VariantInfo& v : variants()) {
    if (v.dtype == name(dtype) && v.runs_here) return true;
  }
  return false;
}

// A FamilyBatch whose x, z and dy are rounded to `dtype` (the reference reads them), and the 16-bit tensors the
// layer is called with; after each call its outputs widened into the batch's y, dx and dz.
struct HalfFamilyBatch {
  HalfFamilyBatch(const FamilyCase& c, DType dtype_, Random& rng) : b(c, rng), dtype(dtype_) {
    for (std::vector<float>* v : {&b.x, &b.z, &b.dy}) test::round_to(dtype, *v);
    x = narrow(b.x), z = narrow(b.z), dy = narrow(b.dy), y = narrow(b.y), dx = narrow(b.dx), dz = narrow(b.dz);
  }
  std::vector<uint16_t> narrow(const std::vector<float>& values) const {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); i++) bits[i] = test::to_bits(dtype, values[i]);
    return bits;
  }
  void widen(const std::vector<uint16_t>& bits, std::vector<float>& values) const {
    for (size_t i = 0; i < bits.size(); i++) values[i] = test::from_bits(dtype, bits[i]);
  }
  TensorView view(std::vector<uint16_t>& data) const {
    return TensorView::with_layout({data.data(), dtype}, b.c.shape, b.c.layout);
  }
  void forward(NormLayer& layer) {
    if (b.c.epilogue == Epilogue::add_relu) {
      layer.forward(view(x), view(z), view(y));
    } else {
      layer.forward(view(x), view(y));
    }
    widen(y, b.y);
  }
  void backward(NormLayer& layer) {
    if (b.c.epilogue == Epilogue::add_relu) {
      layer.backward(view(dy), view(dx), view(dz));
    } else {
      layer.backward(view(dy), view(dx));
    }
    widen(dx, b.dx);
    widen(dz, b.dz);
  }

  FamilyBatch b;
  DType dtype;
  std::vector<uint16_t> x, z, dy, y, dx, dz;
};

class HalfFamilyLayerTest : public ::testing::TestWithParam<HalfFamilyCase> {};

// Two forward / backward pairs, as FamilyLayerTest's. The parameter gradients are float32 sums with float32
// parameters; with 16-bit ones each batch's gradient is rounded to the dtype, and so is each sum (as PyTorch
// accumulates .grad), which the expected sums repeat on the reference's values: one rounding of the batch's
// gradient (u) and one of the sum (u) apart, at most 2u + kFloat32Tolerance of the scale.
TEST_P(HalfFamilyLayerTest, ForwardAndBackwardMatchTheReferenceOnRoundedInputs) {
  const HalfFamilyCase& p = GetParam();
  if (!runs_here(p.dtype)) GTEST_SKIP() << "no " << name(p.dtype) << " kernel of this build runs on this CPU";
  Random rng(test::seed_for_current_test());
  std::unique_ptr<NormLayer> layer = make_family_layer(p.c);
  ASSERT_EQ(layer->dtype(), p.half_parameters ? p.dtype : DType::float32);
  randomize_parameters(*layer, rng);
  // The reference's parameters are the ones the kernels see: rounded to the layer's dtype.
  std::vector<float> weight = layer->weight(), bias = layer->bias();
  test::round_to(layer->dtype(), weight);
  test::round_to(layer->dtype(), bias);
  const DType grad_dtype = layer->dtype();
  const double u = test::unit_roundoff(p.dtype);
  std::vector<double> sum_dweight(weight.size(), 0.0), sum_dbias(bias.size(), 0.0);
  for (int pair = 0; pair < 2; pair++) {
    SCOPED_TRACE("pair " + std::to_string(pair));
    HalfFamilyBatch h(p.c, p.dtype, rng);
    h.forward(*layer);
    std::vector<float> kept_weight = layer->weight(), kept_bias = layer->bias();
    layer->weight() = weight;
    layer->bias() = bias;
    const reference::Forward ref = h.b.reference_forward(*layer);
    EXPECT_TRUE(close("y", h.b.y, ref.y, test::storage_tolerance(p.dtype)));
    h.backward(*layer);
    const reference::Backward ref_backward = h.b.reference_backward(*layer, ref);
    layer->weight() = kept_weight;
    layer->bias() = kept_bias;
    EXPECT_TRUE(close("dx", h.b.dx, ref_backward.dx, test::storage_tolerance(p.dtype)));
    if (p.c.epilogue == Epilogue::add_relu) {
      EXPECT_TRUE(close("dz", h.b.dz, ref_backward.dz, test::storage_tolerance(p.dtype)));
    }
    for (size_t i = 0; i < sum_dweight.size(); i++) {
      sum_dweight[i] = test::stored(grad_dtype, sum_dweight[i] + test::stored(grad_dtype, ref_backward.dweight[i]));
    }
    for (size_t i = 0; i < sum_dbias.size(); i++) {
      sum_dbias[i] = test::stored(grad_dtype, sum_dbias[i] + test::stored(grad_dtype, ref_backward.dbias[i]));
    }
    const double tolerance =
        p.half_parameters ? test::storage_tolerance(p.dtype, test::kFloat32Tolerance + 2 * u) : test::kFloat32Tolerance;
    EXPECT_TRUE(close("grad_weight", layer->grad_weight(), sum_dweight, tolerance));
    EXPECT_TRUE(close("grad_bias", layer->grad_bias(), sum_dbias, tolerance));
    // A 16-bit layer's gradients are values of its dtype.
    std::vector<float> grads = layer->grad_weight();
    grads.insert(grads.end(), layer->grad_bias().begin(), layer->grad_bias().end());
    std::vector<float> rounded = grads;
    test::round_to(grad_dtype, rounded);
    EXPECT_EQ(bits(grads), bits(rounded));
  }
}

INSTANTIATE_TEST_SUITE_P(Layers, HalfFamilyLayerTest, ::testing::ValuesIn(half_family_cases()),
                         case_name<HalfFamilyCase>);

// A 16-bit layer: its parameters are saved in its dtype (PyTorch's BF16 / F16 entries) and its running statistics
// in float32; they load back bit for bit, and into a float32 layer; inputs of the other 16-bit dtype are refused
// with the layer unchanged (its parameters are not theirs: PyTorch refuses these too).
TEST(HalfLayerTest, StateDictKeepsTheParametersDtypeAndOtherInputsAreRefused) {
  if (!runs_here(DType::bfloat16)) GTEST_SKIP() << "no bfloat16 kernel of this build runs on this CPU";
  Random rng(test::seed_for_current_test());
  BatchNorm2d layer(3, {.dtype = DType::bfloat16});
  layer.weight() = test::random_vector(3, rng, 0.5, 2.0);
  layer.bias() = test::random_vector(3, rng, -1.0, 1.0);
  const std::vector<int64_t> shape = {2, 3, 4, 5};
  std::vector<bfloat16> x(120), y(120);
  for (bfloat16& v : x) v = to_bfloat16(static_cast<float>(test::random_vector(1, rng, -2.0, 2.0)[0]));
  layer.forward(TensorView(x.data(), shape), TensorView(y.data(), shape));

  StateDict state;
  layer.save_to(state, "bn.");
  EXPECT_EQ(state.at("bn.weight").dtype, StateTensor::DType::bfloat16);
  EXPECT_EQ(state.at("bn.bias").dtype, StateTensor::DType::bfloat16);
  EXPECT_EQ(state.at("bn.running_mean").dtype, StateTensor::DType::float32);
  EXPECT_EQ(state.at("bn.running_var").dtype, StateTensor::DType::float32);
  std::vector<float> weight = layer.weight();
  test::round_to(DType::bfloat16, weight);
  EXPECT_EQ(bits(state.at("bn.weight").f32), bits(weight));

  TempDir dir;
  save_state_dict(state, dir.file("bf16.safetensors"));
  const StateDict loaded = load_state_dict(dir.file("bf16.safetensors"));
  BatchNorm2d again(3, {.dtype = DType::bfloat16});
  again.load_from(loaded, "bn.");
  EXPECT_EQ(bits(again.weight()), bits(weight));
  EXPECT_EQ(bits(again.running_mean()), bits(layer.running_mean()));
  BatchNorm2d wide(3);
  wide.load_from(loaded, "bn.");
  EXPECT_EQ(bits(wide.weight()), bits(weight));
  // A float32 state loads into the bfloat16 layer rounded, as PyTorch's copy_ rounds it.
  StateDict float_state;
  wide.weight() = test::random_vector(3, rng, 0.5, 2.0);
  wide.save_to(float_state, "bn.");
  again.load_from(float_state, "bn.");
  std::vector<float> expected = wide.weight();
  test::round_to(DType::bfloat16, expected);
  EXPECT_EQ(bits(again.weight()), bits(expected));

  const LayerState before = state_of(layer);
  std::vector<float16> x16(120), y16(120);
  expect_error([&] { layer.forward(TensorView(x16.data(), shape), TensorView(y16.data(), shape)); },
               {"weight has dtype bfloat16", "float16 (the dtype of input)"});
  expect_same_state(state_of(layer), before, "after the refused forward");
}

TEST(HalfLayerTest, ConstructorRefusesADtypeOutsideTheEnum) {
  expect_error([] { LayerNorm({4}, {.dtype = static_cast<DType>(7)}); }, {"LayerNorm: dtype is 7"});
}

// PyTorch's initial parameters (weight 1, bias 0, gradients 0) and which a layer has.
TEST(FamilyLayerTest, StartsWithPyTorchsParameters) {
  EXPECT_EQ(LayerNorm({4, 5}).weight(), std::vector<float>(20, 1.0f));
  EXPECT_EQ(LayerNorm({4, 5}).bias(), std::vector<float>(20, 0.0f));
  EXPECT_EQ(LayerNorm({4, 5}).grad_weight(), std::vector<float>(20, 0.0f));
  EXPECT_TRUE(LayerNorm({7}, {.bias = false}).bias().empty());
  EXPECT_TRUE(LayerNorm({7}, {.elementwise_affine = false}).weight().empty());
  EXPECT_EQ(RMSNorm({3, 7}).weight(), std::vector<float>(21, 1.0f));
  EXPECT_TRUE(RMSNorm({3, 7}).bias().empty());
  EXPECT_EQ(RMSNorm({3}).eps(), 0x1p-23);
  EXPECT_EQ(RMSNorm({3}, {.eps = 1e-6}).eps(), 1e-6);
  EXPECT_EQ(GroupNorm(2, 6).weight(), std::vector<float>(6, 1.0f));
  EXPECT_EQ(GroupNorm(2, 6).bias(), std::vector<float>(6, 0.0f));
  EXPECT_TRUE(GroupNorm(2, 6, {.affine = false}).weight().empty());
  // InstanceNorm's defaults: no parameters, no running statistics.
  InstanceNorm2d instance(3);
  EXPECT_TRUE(instance.weight().empty());
  EXPECT_TRUE(instance.running_mean().empty());
  EXPECT_FALSE(instance.options().affine);
  EXPECT_FALSE(instance.options().track_running_stats);
  InstanceNorm1d tracked(3, {.affine = true, .track_running_stats = true});
  EXPECT_EQ(tracked.weight(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(tracked.running_mean(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(tracked.running_var(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(tracked.num_batches_tracked(), 0);
  EXPECT_EQ(BatchNorm2d(3).epilogue(), Epilogue::none);
}

// Training updates the running statistics with the mean over the samples of each (sample, channel)'s mean and
// unbiased variance (PyTorch's instance_norm), never counting num_batches_tracked; momentum=None is momentum 0
// (nothing moves). Evaluation normalizes with the running statistics and changes nothing; it has no backward.
TEST(InstanceNormLayerTest, RunningStatisticsFollowPyTorchsUpdateAndEvaluationUsesThem) {
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    SCOPED_TRACE(momentum ? "momentum 0.1" : "momentum None");
    Random rng(test::seed_for_current_test() + (momentum ? 1 : 0));
    FamilyCase c{.name = "tracked",
                 .kind = Kind::instance,
                 .shape = {2, 3, 4, 5},
                 .track_running_stats = true,
                 .momentum = momentum};
    InstanceNorm2d layer(3, {.momentum = momentum, .affine = true, .track_running_stats = true});
    randomize_parameters(layer, rng);
    std::vector<double> model_mean(3, 0.0), model_var(3, 1.0);
    const double factor = momentum.value_or(0.0);
    for (int step = 0; step < 4; step++) {
      SCOPED_TRACE("step " + std::to_string(step));
      c.shape[0] = 2 + step % 2;
      c.layout = step % 2 ? Layout::nhwc : Layout::nchw;
      FamilyBatch b(c, rng);
      b.forward(layer);
      const reference::Forward ref = b.reference_forward(layer);
      EXPECT_TRUE(close("y", b.y, ref.y));
      const double spatial = static_cast<double>(b.g.d.s), samples = static_cast<double>(b.g.d.n);
      for (size_t ch = 0; ch < 3; ch++) {
        double mean = 0, var = 0;
        for (size_t n = 0; n < static_cast<size_t>(b.g.d.n); n++) {
          mean += ref.mean[ch + 3 * n] / samples;
          var += ref.biased_var[ch + 3 * n] * spatial / (spatial - 1) / samples;
        }
        model_mean[ch] = (1 - factor) * model_mean[ch] + factor * mean;
        model_var[ch] = (1 - factor) * model_var[ch] + factor * var;
      }
      EXPECT_TRUE(close("running_mean", layer.running_mean(), model_mean));
      EXPECT_TRUE(close("running_var", layer.running_var(), model_var));
      EXPECT_EQ(layer.num_batches_tracked(), 0);
      b.backward(layer);
      EXPECT_TRUE(close("dx", b.dx, b.reference_backward(layer, ref).dx));
    }

    layer.eval();
    c.shape[0] = 2;
    FamilyBatch b(c, rng);
    StateDict before;
    layer.save_to(before);
    b.forward(layer);
    EXPECT_TRUE(close("y (evaluation)", b.y, b.reference_evaluation(layer, layer.running_mean(), layer.running_var())));
    StateDict after;
    layer.save_to(after);
    EXPECT_EQ(bits(after.at("running_mean").f32), bits(before.at("running_mean").f32));
    EXPECT_EQ(bits(after.at("running_var").f32), bits(before.at("running_var").f32));
    expect_error([&] { b.backward(layer); },
                 {"InstanceNorm2d: backward has no forward to differentiate, expected a forward with instance "
                  "statistics (training mode, or track_running_stats=false) since the last backward"});
  }
}

// Without running statistics, evaluation normalizes with the instance statistics, and its backward is the
// training one; LayerNorm, RMSNorm and GroupNorm compute the same in both modes (bit for bit).
TEST(FamilyLayerTest, WithoutRunningStatisticsEvaluationComputesAsTraining) {
  const std::vector<FamilyCase> cases = {
      {.name = "InstanceNorm1d", .kind = Kind::instance, .shape = {3, 4, 9}},
      {.name = "GroupNorm", .kind = Kind::group, .shape = {2, 6, 5}, .epilogue = Epilogue::silu, .groups = 3},
      {.name = "LayerNorm", .kind = Kind::layer, .shape = {4, 7}},
      {.name = "RMSNorm", .kind = Kind::rms, .shape = {4, 7}},
  };
  Random rng(test::seed_for_current_test());
  for (const FamilyCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<NormLayer> layer = make_family_layer(c);
    randomize_parameters(*layer, rng);
    FamilyBatch b(c, rng);
    b.forward(*layer);
    const std::vector<float> training_y = b.y;
    b.backward(*layer);
    const std::vector<float> training_dx = b.dx;
    layer->zero_grad();

    layer->eval();
    b.y = test::poisoned(b.g.d.numel());
    b.dx = test::poisoned(b.g.d.numel());
    b.forward(*layer);
    b.backward(*layer);
    EXPECT_EQ(bits(b.y), bits(training_y));
    EXPECT_EQ(bits(b.dx), bits(training_dx));
    const reference::Forward ref = b.reference_forward(*layer);
    EXPECT_TRUE(close("y", b.y, ref.y));
    EXPECT_TRUE(close("grad_weight", layer->grad_weight(), b.reference_backward(*layer, ref).dweight));
  }
}

// BatchNorm's epilogues in evaluation: the running statistics, then relu or add_relu with the residual.
TEST(FamilyLayerTest, BatchNormEpiloguesInEvaluationUseTheRunningStatistics) {
  Random rng(test::seed_for_current_test());
  for (Epilogue epilogue : {Epilogue::relu, Epilogue::add_relu}) {
    SCOPED_TRACE(to_string(epilogue));
    const FamilyCase c{.name = "bn", .kind = Kind::batch, .shape = {3, 4, 5, 2}, .epilogue = epilogue};
    std::unique_ptr<NormLayer> layer = make_family_layer(c);
    auto& bn = dynamic_cast<BatchNorm&>(*layer);
    randomize_parameters(bn, rng);
    FamilyBatch training(c, rng);
    training.forward(bn);
    bn.eval();
    FamilyBatch b(c, rng);
    b.forward(bn);
    EXPECT_TRUE(close("y", b.y, b.reference_evaluation(bn, bn.running_mean(), bn.running_var())));
  }
}

// Everything a layer holds but its pending forward, as one state dict, with the gradients under "grad.".
StateDict snapshot(NormLayer& layer) {
  StateDict state;
  layer.save_to(state);
  state["grad.weight"] = StateTensor::from_floats(layer.grad_weight());
  state["grad.bias"] = StateTensor::from_floats(layer.grad_bias());
  return state;
}

void expect_same_dict(const StateDict& got, const StateDict& expected, const std::string& context) {
  EXPECT_EQ(keys_of(got), keys_of(expected)) << context;
  for (const auto& [key, tensor] : expected) {
    auto it = got.find(key);
    if (it == got.end()) continue;
    EXPECT_EQ(it->second.dtype, tensor.dtype) << context << ": " << key;
    EXPECT_EQ(it->second.shape, tensor.shape) << context << ": " << key;
    EXPECT_EQ(bits(it->second.f32), bits(tensor.f32)) << context << ": " << key;
    EXPECT_EQ(it->second.i64, tensor.i64) << context << ": " << key;
  }
}

struct FamilyRefusalCase {
  std::string name;
  FamilyCase layer;
  std::function<void(NormLayer&, FamilyBatch&, std::vector<float>& other)> call;
  std::vector<std::string> message;
};

void PrintTo(const FamilyRefusalCase& c, std::ostream* os) { *os << c.name; }

std::vector<FamilyRefusalCase> family_refusal_cases() {
  const FamilyCase instance1d{.name = "", .kind = Kind::instance, .shape = {3, 4, 9}, .affine = true};
  const FamilyCase instance2d{.name = "", .kind = Kind::instance, .shape = {2, 3, 5, 4}};
  const FamilyCase group{.name = "", .kind = Kind::group, .shape = {2, 6, 5, 4}, .groups = 3};
  const FamilyCase group_relu{
      .name = "", .kind = Kind::group, .shape = {2, 6, 5, 4}, .epilogue = Epilogue::relu, .groups = 3};
  const FamilyCase group_add_relu{
      .name = "", .kind = Kind::group, .shape = {2, 6, 5, 4}, .epilogue = Epilogue::add_relu, .groups = 3};
  const FamilyCase batch_add_relu{
      .name = "", .kind = Kind::batch, .shape = {3, 4, 5, 2}, .epilogue = Epilogue::add_relu};
  const FamilyCase layer{.name = "", .kind = Kind::layer, .shape = {4, 7}};
  const FamilyCase rms{.name = "", .kind = Kind::rms, .shape = {2, 3, 4, 5}, .normalized_dims = 2};
  using Call = std::function<void(NormLayer&, FamilyBatch&, std::vector<float>&)>;
  auto other_view = [](std::vector<float>& other, std::vector<int64_t> shape) {
    return TensorView(other.data(), std::move(shape));
  };
  auto forward_other = [other_view](std::vector<int64_t> shape) -> Call {
    return [other_view, shape](NormLayer& l, FamilyBatch& b, std::vector<float>& other) {
      l.forward(other_view(other, shape), b.view(b.y));
    };
  };
  return {
      {"InstanceNorm2d_input_rank",
       instance2d,
       forward_other({2, 3, 5, 4, 1}),
       {"InstanceNorm2d: input has 5 dimensions (shape [2, 3, 5, 4, 1]), expected 3 (unbatched) or 4"}},
      {"InstanceNorm1d_unbatched_input_channels",
       instance1d,
       forward_other({5, 9}),
       {"InstanceNorm1d: input has 5 channels (shape [5, 9]), expected 4 (num_features)"}},
      {"InstanceNorm1d_grad_output_channels",
       instance1d,
       [other_view](NormLayer& l, FamilyBatch& b, std::vector<float>& other) {
         l.backward(other_view(other, {3, 5, 9}), b.view(b.dx));
       },
       {"InstanceNorm1d: grad_output has 5 channels (shape [3, 5, 9]), expected 4 (num_features)"}},
      {"GroupNorm_input_channels",
       group,
       forward_other({2, 8, 5, 4}),
       {"GroupNorm: input has 8 channels (shape [2, 8, 5, 4]), expected 6 (num_channels)"}},
      {"GroupNorm_input_rank",
       group,
       forward_other({6}),
       {"GroupNorm: input has 1 dimensions (shape [6]), expected 2, 3, 4 or 5"}},
      {"GroupNorm_residual_channels",
       group_add_relu,
       [other_view](NormLayer& l, FamilyBatch& b, std::vector<float>& other) {
         l.forward(b.view(b.x), other_view(other, {2, 3, 5, 4}), b.view(b.y));
       },
       {"GroupNorm: residual has 3 channels (shape [2, 3, 5, 4]), expected 6 (num_channels)"}},
      {"LayerNorm_input_shape",
       layer,
       forward_other({4, 6}),
       {"LayerNorm: input has shape [4, 6], expected (*, 7) (trailing dimensions normalized_shape [7])"}},
      {"RMSNorm_grad_output_shape",
       rms,
       [other_view](NormLayer& l, FamilyBatch& b, std::vector<float>& other) {
         l.backward(other_view(other, {2, 3, 5, 4}), b.view(b.dx));
       },
       {"RMSNorm: grad_output has shape [2, 3, 5, 4], expected (*, 4, 5) (trailing dimensions normalized_shape "
        "[4, 5])"}},
      // The residual and its gradient go with epilogue add_relu, and only with it.
      {"GroupNorm_add_relu_forward_without_residual",
       group_add_relu,
       [](NormLayer& l, FamilyBatch& b, std::vector<float>&) { l.forward(b.view(b.x), b.view(b.y)); },
       {"GroupNorm: forward without a residual (z), expected one: the layer's epilogue is add_relu"}},
      {"GroupNorm_relu_forward_with_residual",
       group_relu,
       [](NormLayer& l, FamilyBatch& b, std::vector<float>&) { l.forward(b.view(b.x), b.view(b.z), b.view(b.y)); },
       {"GroupNorm: forward was given a residual (z), expected none: only epilogue add_relu takes one, and this "
        "layer's epilogue is relu"}},
      {"BatchNorm2d_add_relu_backward_without_grad_residual",
       batch_add_relu,
       [](NormLayer& l, FamilyBatch& b, std::vector<float>&) { l.backward(b.view(b.dy), b.view(b.dx)); },
       {"BatchNorm2d: backward without a grad_residual (dz), expected one: the layer's epilogue is add_relu"}},
      {"LayerNorm_backward_with_grad_residual",
       layer,
       [](NormLayer& l, FamilyBatch& b, std::vector<float>&) { l.backward(b.view(b.dy), b.view(b.dx), b.view(b.dz)); },
       {"LayerNorm: backward was given a grad_residual (dz), expected none: only epilogue add_relu takes one, and "
        "this layer's epilogue is none"}},
  };
}

class FamilyRefusalTest : public ::testing::TestWithParam<FamilyRefusalCase> {};

// After a training forward, a refused call throws naming the argument, changes nothing in the layer or in the
// outputs, and the forward is still differentiable: its backward then matches the reference.
TEST_P(FamilyRefusalTest, RefusedWithANamedArgumentAndTheLayerUnchanged) {
  const FamilyRefusalCase& p = GetParam();
  Random rng(test::seed_for_current_test());
  std::unique_ptr<NormLayer> layer = make_family_layer(p.layer);
  randomize_parameters(*layer, rng);
  FamilyBatch b(p.layer, rng);
  b.forward(*layer);
  const std::vector<float> y = b.y;
  const StateDict before = snapshot(*layer);
  std::vector<float> other = test::random_vector(4 * b.g.d.numel(), rng, -1.0, 1.0);

  expect_error([&] { p.call(*layer, b, other); }, p.message);
  expect_same_dict(snapshot(*layer), before, "after the refusal");
  EXPECT_EQ(bits(b.y), bits(y)) << "y was written";
  EXPECT_EQ(bits(b.dx), bits(test::poisoned(b.g.d.numel()))) << "dx was written";

  b.backward(*layer);
  const reference::Forward ref = b.reference_forward(*layer);
  EXPECT_TRUE(close("dx of the backward after the refusal", b.dx, b.reference_backward(*layer, ref).dx));
}

INSTANTIATE_TEST_SUITE_P(Calls, FamilyRefusalTest, ::testing::ValuesIn(family_refusal_cases()),
                         case_name<FamilyRefusalCase>);

// What a backward differentiates: the last forward, once, and not one that wrote its output over its input.
TEST(FamilyRefusalTest, BackwardNeedsAForwardApartFromItsInput) {
  Random rng(test::seed_for_current_test());
  const FamilyCase c{.name = "", .kind = Kind::layer, .shape = {4, 7}};
  LayerNorm layer({7});
  FamilyBatch b(c, rng);
  expect_error([&] { b.backward(layer); },
               {"LayerNorm: backward has no forward to differentiate, expected a forward since the last backward"});
  b.forward(layer);
  b.backward(layer);
  const std::vector<float> grad_weight = layer.grad_weight();
  expect_error([&] { b.backward(layer); }, {"LayerNorm: backward has no forward to differentiate"});
  layer.forward(b.view(b.x), b.view(b.x));
  expect_error([&] { b.backward(layer); },
               {"LayerNorm: backward of a forward that ran in place (output was input): the input it needs was "
                "overwritten"});
  EXPECT_EQ(bits(layer.grad_weight()), bits(grad_weight)) << "a refused backward accumulated";
}

TEST(FamilyRefusalTest, ConstructorsRefuseBadArgumentsNamingThem) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  expect_error([] { LayerNorm layer({}); },
               {"LayerNorm: normalized_shape is [], expected at least one dimension, each >= 1"});
  expect_error(
      [] {
        LayerNorm layer({4, 0});
      },
      {"LayerNorm: normalized_shape is [4, 0], expected at least one dimension, each >= 1"});
  expect_error([] { LayerNorm layer({4}, {.eps = -1e-5}); },
               {"LayerNorm: eps is -1e-05, expected a finite number >= 0"});
  expect_error([] { RMSNorm layer({-2}); },
               {"RMSNorm: normalized_shape is [-2], expected at least one dimension, each >= 1"});
  expect_error([&] { RMSNorm layer({4}, {.eps = nan}); }, {"RMSNorm: eps is nan, expected a finite number >= 0"});
  expect_error([] { GroupNorm layer(0, 4); }, {"GroupNorm: num_groups is 0, expected >= 1"});
  expect_error([] { GroupNorm layer(2, 0); }, {"GroupNorm: num_channels is 0, expected >= 1"});
  expect_error([] { GroupNorm layer(4, 6); }, {"GroupNorm: num_channels is 6, expected a multiple of num_groups (4)"});
  expect_error([] { GroupNorm layer(2, 6, {.eps = std::numeric_limits<double>::infinity()}); },
               {"GroupNorm: eps is inf, expected a finite number >= 0"});
  expect_error([] { InstanceNorm1d layer(0); }, {"InstanceNorm1d: num_features is 0, expected >= 1"});
  expect_error([] { InstanceNorm3d layer(-1); }, {"InstanceNorm3d: num_features is -1, expected >= 1"});
  expect_error([] { InstanceNorm2d layer(3, {.eps = -1.0}); },
               {"InstanceNorm2d: eps is -1, expected a finite number >= 0"});
  BatchNormLayerOptions silu;
  silu.epilogue = Epilogue::silu;
  expect_error([&] { BatchNorm2d layer(3, silu); }, {"BatchNorm2d: epilogue is silu, expected none, relu or add_relu"});
}

// ---------------------------------------------------------------------------------------------------------------
// The family's state dicts: PyTorch's names and shapes, round trips, strict loads

struct FamilyStateCase {
  std::string name;
  FamilyCase layer;
  std::map<std::string, std::vector<int64_t>> keys;  // under "m.", with their shapes
  std::string options;                               // as a refused unexpected key names them
};

void PrintTo(const FamilyStateCase& c, std::ostream* os) { *os << c.name; }

std::vector<FamilyStateCase> family_state_cases() {
  const std::vector<int64_t> scalar;
  return {
      {"LayerNorm",
       {.name = "", .kind = Kind::layer, .shape = {3, 4, 5}, .normalized_dims = 2},
       {{"m.weight", {4, 5}}, {"m.bias", {4, 5}}},
       "elementwise_affine=true, bias=true"},
      {"LayerNorm_without_bias",
       {.name = "", .kind = Kind::layer, .shape = {3, 7}, .bias = false},
       {{"m.weight", {7}}},
       "elementwise_affine=true, bias=false"},
      {"LayerNorm_plain",
       {.name = "", .kind = Kind::layer, .shape = {3, 7}, .affine = false},
       {},
       "elementwise_affine=false, bias=true"},
      {"RMSNorm",
       {.name = "", .kind = Kind::rms, .shape = {2, 3, 7}, .normalized_dims = 2},
       {{"m.weight", {3, 7}}},
       "elementwise_affine=true"},
      {"RMSNorm_plain",
       {.name = "", .kind = Kind::rms, .shape = {2, 7}, .affine = false},
       {},
       "elementwise_affine=false"},
      {"GroupNorm",
       {.name = "", .kind = Kind::group, .shape = {2, 6, 3, 3}, .groups = 3},
       {{"m.weight", {6}}, {"m.bias", {6}}},
       "affine=true"},
      {"GroupNorm_plain",
       {.name = "", .kind = Kind::group, .shape = {2, 6, 3}, .affine = false, .groups = 2},
       {},
       "affine=false"},
      {"InstanceNorm2d_default",
       {.name = "", .kind = Kind::instance, .shape = {2, 3, 4, 5}, .affine = false},
       {},
       "affine=false, track_running_stats=false"},
      {"InstanceNorm1d_affine",
       {.name = "", .kind = Kind::instance, .shape = {2, 4, 9}},
       {{"m.weight", {4}}, {"m.bias", {4}}},
       "affine=true, track_running_stats=false"},
      {"InstanceNorm3d_tracked",
       {.name = "", .kind = Kind::instance, .shape = {2, 3, 2, 3, 4}, .affine = false, .track_running_stats = true},
       {{"m.running_mean", {3}}, {"m.running_var", {3}}, {"m.num_batches_tracked", scalar}},
       "affine=false, track_running_stats=true"},
      {"InstanceNorm2d_affine_tracked",
       {.name = "", .kind = Kind::instance, .shape = {2, 3, 4, 5}, .track_running_stats = true},
       {{"m.weight", {3}},
        {"m.bias", {3}},
        {"m.running_mean", {3}},
        {"m.running_var", {3}},
        {"m.num_batches_tracked", scalar}},
       "affine=true, track_running_stats=true"},
  };
}

// Parameters of its own and a few training steps (which move tracked running statistics).
std::unique_ptr<NormLayer> trained_family_layer(const FamilyCase& c, Random& rng) {
  std::unique_ptr<NormLayer> layer = make_family_layer(c);
  randomize_parameters(*layer, rng);
  for (int step = 0; step < 2; step++) {
    FamilyBatch b(c, rng);
    b.forward(*layer);
    b.backward(*layer);
  }
  return layer;
}

class FamilyStateDictTest : public ::testing::TestWithParam<FamilyStateCase> {};

// PyTorch's keys and shapes (num_batches_tracked an int64 scalar, never counted by InstanceNorm); through a
// file into a fresh layer, the same state bit for bit and the same outputs in evaluation and training.
TEST_P(FamilyStateDictTest, PyTorchsKeysAndARoundTripThroughAFile) {
  const FamilyStateCase& p = GetParam();
  Random rng(test::seed_for_current_test());
  std::unique_ptr<NormLayer> layer = trained_family_layer(p.layer, rng);
  StateDict saved;
  layer->save_to(saved, "m.");
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [key, tensor] : saved) shapes[key] = tensor.shape;
  EXPECT_EQ(shapes, p.keys);
  if (saved.count("m.num_batches_tracked")) {
    EXPECT_EQ(saved.at("m.num_batches_tracked").dtype, StateTensor::DType::int64);
    EXPECT_EQ(saved.at("m.num_batches_tracked").i64, std::vector<int64_t>{0});
  }

  TempDir dir;
  save_state_dict(saved, dir.file("m.safetensors"));
  std::unique_ptr<NormLayer> restored = make_family_layer(p.layer);
  restored->load_from(load_state_dict(dir.file("m.safetensors")), "m.");
  StateDict restored_state;
  restored->save_to(restored_state, "m.");
  expect_same_dict(restored_state, saved, "restored");

  for (bool training : {false, true}) {
    SCOPED_TRACE(training ? "training" : "evaluation");
    layer->train(training);
    restored->train(training);
    FamilyBatch b(p.layer, rng);
    std::vector<float> restored_y = test::poisoned(b.g.d.numel());
    layer->forward(b.view(b.x), b.view(b.y));
    restored->forward(b.view(b.x), b.view(restored_y));
    EXPECT_EQ(bits(restored_y), bits(b.y));
  }
}

// Strict and all or nothing: a missing key, a key the layer lacks, a shape off; each refused naming the key,
// and the layer keeps its own state (the dict is another layer's, so a partial load would show).
TEST_P(FamilyStateDictTest, StrictLoadRefusesAndChangesNothing) {
  const FamilyStateCase& p = GetParam();
  Random rng(test::seed_for_current_test());
  std::unique_ptr<NormLayer> layer = trained_family_layer(p.layer, rng);
  StateDict donor;
  trained_family_layer(p.layer, rng)->save_to(donor, "m.");
  const StateDict before = snapshot(*layer);
  const std::string name = p.name.substr(0, p.name.find('_'));  // the class
  auto refused = [&](const StateDict& state, const std::vector<std::string>& message) {
    expect_error([&] { layer->load_from(state, "m."); }, message);
    expect_same_dict(snapshot(*layer), before, message.front());
  };

  for (const auto& [key, shape] : p.keys) {
    StateDict missing = donor;
    missing.erase(key);
    refused(missing, {name + ": load_from: missing key '" + key + "'"});
    if (key == "m.num_batches_tracked") continue;
    StateDict reshaped = donor;
    reshaped[key].shape = {static_cast<int64_t>(reshaped[key].f32.size()) + 1};
    reshaped[key].f32.push_back(1.0f);
    refused(reshaped, {name + ": load_from: '" + key + "' is float32 [" + std::to_string(reshaped[key].f32.size()) +
                       "], expected float32 " + shape_string(shape)});
  }
  for (const std::string key : {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}) {
    if (p.keys.count("m." + key)) continue;
    StateDict unexpected = donor;
    unexpected["m." + key] = StateTensor::from_floats({1.0f});
    refused(unexpected, {name + ": load_from: unexpected key 'm." + key + "' (" + p.options + ")"});
  }
  // And the donor's own dict loads.
  layer->load_from(donor, "m.");
  StateDict loaded;
  layer->save_to(loaded, "m.");
  expect_same_dict(loaded, donor, "the donor's state");
}

INSTANTIATE_TEST_SUITE_P(Layers, FamilyStateDictTest, ::testing::ValuesIn(family_state_cases()),
                         case_name<FamilyStateCase>);

// ---------------------------------------------------------------------------------------------------------------
// Threads

// Restores the pool's size at the end of a test.
class ScopedNumThreads {
 public:
  ScopedNumThreads() : saved_(num_threads()) {}
  ~ScopedNumThreads() { set_num_threads(saved_); }
  ScopedNumThreads(const ScopedNumThreads&) = delete;
  ScopedNumThreads& operator=(const ScopedNumThreads&) = delete;

 private:
  int saved_;
};

// Sets (or unsets, with nullopt) an environment variable for a scope.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old;
    set(value);
  }
  ~ScopedEnvironment() { set(saved_); }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  void set(const std::optional<std::string>& value) {
    if (value) {
      ::setenv(name_, value->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  const char* name_;
  std::optional<std::string> saved_;
};

struct PoolSizeCase {
  std::string name;
  std::optional<std::string> hl_num_threads;
  int expected;  // 0: the online CPUs
};

void PrintTo(const PoolSizeCase& c, std::ostream* os) { *os << c.name; }

class ThreadsBeforeStartTest : public ::testing::TestWithParam<PoolSizeCase> {};

// HL_NUM_THREADS as users set it, before the first kernel: num_threads() already says the size the pool then
// takes, by Halide's rule (atoi, clamped to [1, 256]). ctest runs each case alone in its process, so the pool
// has not started; run together in one process, the later cases cannot check this and skip.
TEST_P(ThreadsBeforeStartTest, NumThreadsIsThePoolsSizeBeforeTheFirstKernel) {
  if (halide_get_num_threads() != 0) GTEST_SKIP() << "the pool already started in this process";
  ScopedEnvironment env("HL_NUM_THREADS", GetParam().hl_num_threads);
  ScopedEnvironment legacy("HL_NUMTHREADS", std::nullopt);
  const int expected = GetParam().expected ? GetParam().expected : static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  EXPECT_EQ(num_threads(), expected);
  Random rng(test::seed_for_current_test());
  BatchNorm2d layer(3);
  Batch b({2, 3, 4, 5}, Layout::nchw, rng);
  layer.forward(b.view(b.x), b.view(b.y));
  EXPECT_EQ(halide_get_num_threads(), expected) << "the pool started with another size";
  EXPECT_EQ(num_threads(), expected);
}

INSTANTIATE_TEST_SUITE_P(HlNumThreads, ThreadsBeforeStartTest,
                         ::testing::Values(PoolSizeCase{"unset", std::nullopt, 0}, PoolSizeCase{"three", "3", 3},
                                           PoolSizeCase{"above_the_limit", "1000", 256}, PoolSizeCase{"zero", "0", 1},
                                           PoolSizeCase{"not_a_number", "many", 1}),
                         case_name<PoolSizeCase>);

// Before the first kernel, set_num_threads returns the size the pool would have taken (run alone by ctest).
TEST(ThreadsTest, SetNumThreadsBeforeTheFirstKernelReturnsThePoolsSize) {
  if (halide_get_num_threads() != 0) GTEST_SKIP() << "the pool already started in this process";
  ScopedNumThreads restore;
  const int size = num_threads();
  EXPECT_EQ(set_num_threads(2), size);
}

// The training forward and the backward on 1 and on 2 threads, in both layouts: bit for bit the same (the
// schedules split work into tasks by data, not by thread count, and merge partial sums in a fixed order), and
// both match the reference.
TEST(ThreadsTest, ResultsDoNotDependOnTheNumberOfThreads) {
  ScopedNumThreads restore;
  Random rng(test::seed_for_current_test());
  const std::vector<int64_t> shape{8, 32, 48, 48};  // 2.4 MB: several NCHW channel blocks and NHWC tasks
  for (Layout layout : {Layout::nchw, Layout::nhwc}) {
    SCOPED_TRACE(to_string(layout));
    const Batch data(shape, layout, rng);
    std::vector<LayerState> states;
    std::vector<std::vector<uint32_t>> ys, dxs;
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      ASSERT_EQ(num_threads(), threads);
      Batch b = data;
      BatchNorm2d layer(32);
      layer.forward(b.view(b.x), b.view(b.y));
      layer.backward(b.view(b.dy), b.view(b.dx));
      const reference::ForwardTraining ref = reference_training(b, layer);
      EXPECT_TRUE(close("y", b.y, ref.y)) << threads << " threads";
      EXPECT_TRUE(close("dx", b.dx, reference_backward(b, layer, ref).dx)) << threads << " threads";
      states.push_back(state_of(layer));
      ys.push_back(bits(b.y));
      dxs.push_back(bits(b.dx));
    }
    EXPECT_TRUE(ys[0] == ys[1]) << "y differs between 1 and 2 threads";
    EXPECT_TRUE(dxs[0] == dxs[1]) << "dx differs between 1 and 2 threads";
    expect_same_state(states[1], states[0], "2 threads against 1");
  }
}

TEST(ThreadsTest, SetNumThreadsReturnsThePreviousSizeAndRefusesNegatives) {
  const int original = num_threads();
  ASSERT_GE(original, 1);
  {
    ScopedNumThreads restore;
    EXPECT_EQ(set_num_threads(1), original);
    EXPECT_EQ(num_threads(), 1);
    EXPECT_EQ(set_num_threads(3), 1);
    EXPECT_EQ(num_threads(), 3);
    expect_error([] { set_num_threads(-1); }, {"set_num_threads: n is -1, expected >= 1 (or 0 for the default"});
    EXPECT_EQ(num_threads(), 3) << "a refused set_num_threads changed the pool";
    EXPECT_EQ(set_num_threads(0), 3);
    EXPECT_EQ(num_threads(), original) << "0 is the default (HL_NUM_THREADS or the CPUs)";
    set_num_threads(2);
  }
  EXPECT_EQ(num_threads(), original);
}

// ---------------------------------------------------------------------------------------------------------------
// A kernel's own error

// Every forward training variant that runs here, called directly with an output that asks for more batches
// than x has: Halide's bounds check refuses it, and the message arrives as fusednorm::Error with the kernel's
// name and Halide's text. (An output smaller than x is not an error to Halide: it computes that region.) The
// runtime's error handler keeps Halide from printing.
TEST(KernelErrorTest, HalidesBoundsErrorArrivesAsErrorAndNothingIsPrinted) {
  using detail::Arg;
  const int64_t n = 2, c = 3, s = 20;
  std::vector<float> x(static_cast<size_t>(n * c * s), 1.0f), y(static_cast<size_t>((n + 1) * c * s));
  std::vector<float> channels(static_cast<size_t>(8 * c), 0.5f);
  for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<float>(i % 5);
  int calls = 0;
  for (const std::string& isa : supported_isas()) {
    test::ScopedMaxIsa limit(isa);
    for (Layout layout : {Layout::nchw, Layout::nhwc}) {
      for (bool affine : {false, true}) {
        detail::CpuContext cpu;
        const detail::Plan& plan = detail::plan_call(
            {"layers_test", Norm::batch, Direction::forward_training, layout, Epilogue::none, affine}, cpu);
        SCOPED_TRACE(plan.untuned->name);
        // (extent, stride) innermost first, as the kernels index x: (S, C, N) or (C, S, N).
        auto view = [&](detail::Binder& args, Arg arg, float* data, int64_t batches) {
          if (layout == Layout::nchw) return args.tensor(arg, data, {{s, 1}, {c, s}, {batches, c * s}});
          args.tensor(arg, data, {{c, 1}, {s, c}, {batches, c * s}});
        };
        detail::Binder args(cpu);
        view(args, Arg::x, x.data(), n);
        view(args, Arg::y, y.data(), n + 1);
        // 2 and 3 are the saved statistics, (G, B) = (C, 1) for BatchNorm; the rest are per channel.
        const Arg per_channel[] = {Arg::running_mean,     Arg::running_var,     Arg::saved_mean, Arg::saved_invstd,
                                   Arg::new_running_mean, Arg::new_running_var, Arg::weight,     Arg::bias};
        for (size_t k = 0; k < (plan.affine_kernel ? 8u : 6u); k++) {
          float* data = channels.data() + static_cast<int64_t>(k) * c;
          if (k == 2 || k == 3) {
            args.statistics(per_channel[k], data, c, 1);
          } else {
            args.vector(per_channel[k], data, c);
          }
        }
        args.scalar(Arg::momentum, 0.1f);
        args.scalar(Arg::eps, 1e-5f);
        args.scalar(Arg::running_var_correction, 1.0f);
        args.scalar(Arg::groups, int32_t{1});
        const int64_t shape[] = {n, c, s};
        ::testing::internal::CaptureStderr();
        expect_error([&] { detail::run_plan(plan, args, shape); },
                     {"layers_test: kernel " + std::string(plan.untuned->name) + " failed (Halide error",
                      "Input buffer x is accessed at 2, which is beyond the max (1) in dimension 2"});
        try {
          detail::run_plan(plan, args, shape);
        } catch (const Error& e) {
          EXPECT_EQ(e.kind(), Error::Kind::kernel);
        }
        EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
        calls++;
      }
    }
  }
  EXPECT_GE(calls, 4);
}

}  // namespace
}  // namespace fusednorm
