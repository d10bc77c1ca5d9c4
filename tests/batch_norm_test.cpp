// The functional BatchNorm API against the float64 reference (tests/support/batch_norm_reference.h).
//
// BatchNormTest is the matrix: every instruction set this CPU supports x both layouts x the shared shape
// lists x affine (none, weight and bias, weight alone), each run for the forward in training, the forward in
// evaluation and the backward in both modes. Dispatch takes the best instruction set max_isa allows, so each
// (direction, layout, affine, isa) variant that runs here is exercised by construction; dispatch_test.cpp
// checks from dispatch's own report that it is so.
//
// The other suites run per instruction set and layout: running statistics (momentum, the cumulative moving
// average, biased and unbiased variance), hard numerics, in-place calls and finite-difference gradients.
//
// Standards: fresh random inputs seeded from the test's name; every output poisoned with NaN before the call;
// the error metric and tolerance of tests/support/test_data.h (relative to the tensor's scale, 1e-5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "support/batch_norm_reference.h"
#include "support/shapes.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using reference::Dims;
using test::close;
using test::kFloat32Tolerance;
using test::Random;
using test::Scale;

constexpr double kEps = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Which per-channel parameters a call gives: none (run by the affine kernels with weight 1 and bias 0), weight and
// bias, or the weight alone (bias absent, i.e. 0). In the backward, the weight comes with grad_weight, and grad_bias
// with the bias.
enum class Affine { none, weight_bias, weight_only };

const char* to_string(Affine affine) {
  switch (affine) {
    case Affine::none: return "plain";
    case Affine::weight_bias: return "weight_bias";
    case Affine::weight_only: return "weight_only";
  }
  return "?";
}

BatchNormOptions training_options(std::optional<double> momentum = 0.1) {
  BatchNormOptions options;
  options.training = true;
  options.eps = kEps;
  options.momentum = momentum;
  return options;
}

BatchNormOptions evaluation_options() {
  BatchNormOptions options;
  options.training = false;
  options.eps = kEps;
  return options;
}

// One problem: random inputs, running statistics and saved statistics, NaN-poisoned outputs, and the tensor
// structs of each call over them.
struct Problem {
  Problem(std::vector<int64_t> shape_, Layout layout, Random& rng)
      : shape(std::move(shape_)),
        d(test::dims_of(shape, layout)),
        x(test::random_input(d, rng)),
        y(test::poisoned(d.numel())),
        dy(test::random_input(d, rng)),
        dx(test::poisoned(d.numel())),
        weight(test::random_vector(d.c, rng, 0.5, 2.0)),
        bias(test::random_vector(d.c, rng, -1.0, 1.0)),
        running_mean(test::random_vector(d.c, rng, -1.0, 1.0)),
        running_var(test::random_vector(d.c, rng, 0.5, 2.0)),
        save_mean(test::poisoned(d.c)),
        save_invstd(test::poisoned(d.c)),
        grad_weight(test::poisoned(d.c)),
        grad_bias(test::poisoned(d.c)),
        num_batches_tracked(static_cast<int64_t>(rng.uniform(0, 100))) {}

  std::vector<int64_t> shape;
  Dims d;
  std::vector<float> x, y, dy, dx, weight, bias, running_mean, running_var, save_mean, save_invstd, grad_weight,
      grad_bias;
  int64_t num_batches_tracked;

  TensorView view(std::vector<float>& data) { return TensorView::with_layout(data.data(), shape, d.layout); }
  TensorView channel(std::vector<float>& data) { return TensorView(data.data(), {d.c}); }
  const float* weight_or_null(Affine affine) const { return affine == Affine::none ? nullptr : weight.data(); }
  const float* bias_or_null(Affine affine) const { return affine == Affine::weight_bias ? bias.data() : nullptr; }

  // Everything a training forward can take: running statistics, the counter and the saved statistics.
  BatchNormForwardTensors forward(Affine affine) {
    BatchNormForwardTensors t;
    t.input = view(x);
    t.output = view(y);
    if (affine != Affine::none) t.weight = channel(weight);
    if (affine == Affine::weight_bias) t.bias = channel(bias);
    t.running_mean = channel(running_mean);
    t.running_var = channel(running_var);
    t.num_batches_tracked = &num_batches_tracked;
    t.save_mean = channel(save_mean);
    t.save_invstd = channel(save_invstd);
    return t;
  }

  // What an evaluation forward takes: the running statistics, no saved ones (evaluation saves none).
  BatchNormForwardTensors forward_evaluation(Affine affine) {
    BatchNormForwardTensors t = forward(affine);
    t.save_mean.reset();
    t.save_invstd.reset();
    return t;
  }

  // Both the saved and the running statistics, different from each other, so a kernel that read the ones of
  // the other mode fails.
  BatchNormBackwardTensors backward(Affine affine) {
    BatchNormBackwardTensors t;
    t.grad_output = view(dy);
    t.input = view(x);
    t.grad_input = view(dx);
    if (affine != Affine::none) {
      t.weight = channel(weight);
      t.grad_weight = channel(grad_weight);
    }
    if (affine == Affine::weight_bias) t.grad_bias = channel(grad_bias);
    t.save_mean = channel(save_mean);
    t.save_invstd = channel(save_invstd);
    t.running_mean = channel(running_mean);
    t.running_var = channel(running_var);
    return t;
  }

  // The batch statistics of x, rounded to float32 as a training forward saves them.
  void save_batch_statistics() {
    auto ref = reference::batch_norm_forward_training(x.data(), d, nullptr, nullptr, nullptr, nullptr, 0.0, kEps);
    for (int64_t c = 0; c < d.c; c++) {
      save_mean[static_cast<size_t>(c)] = static_cast<float>(ref.mean[static_cast<size_t>(c)]);
      save_invstd[static_cast<size_t>(c)] = static_cast<float>(ref.invstd[static_cast<size_t>(c)]);
    }
  }

  // What the evaluation backward normalises with: the running mean and 1 / sqrt(running_var + eps).
  std::vector<double> running_invstd() const {
    std::vector<double> invstd;
    for (float v : running_var) invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + kEps));
    return invstd;
  }
};

// grad_weight sums dy * xhat over each channel, and random data can cancel that sum to a small part of its terms
// (seen: C = 1, 21 elements summing to -0.003 from terms near 1). No float32 computation resolves such a sum to
// 1e-5 of itself: each product is rounded to float32's epsilon of its own size (that sum came out off by 1.1e-4 of
// itself with AVX-512, 2.1e-4 with SSE4.1, 5.2e-5 with NEON). So the error may also reach epsilon times the
// largest channel's sum of |dy * xhat|. mean, invstd: the statistics the backward normalises with.
::testing::AssertionResult close_grad_weight(const Problem& p, const std::vector<double>& ref, const double* mean,
                                             const double* invstd) {
  double terms = 0;
  for (int64_t c = 0; c < p.d.c; c++) {
    double sum = 0;
    for (int64_t n = 0; n < p.d.n; n++) {
      for (int64_t s = 0; s < p.d.s; s++) {
        const size_t i = static_cast<size_t>(p.d.offset(n, c, s));
        sum += std::abs(static_cast<double>(p.dy[i]) * (p.x[i] - mean[c]) * invstd[c]);
      }
    }
    terms = std::max(terms, sum);
  }
  std::vector<float> got = p.grad_weight;
  std::vector<double> expected = ref;
  // The same value in both: it only sets the tensor's scale.
  got.push_back(static_cast<float>(terms * std::numeric_limits<float>::epsilon() / kFloat32Tolerance));
  expected.push_back(got.back());
  return close("grad_weight (scale at least epsilon * sum of |dy * xhat| / tolerance)", got, expected);
}

// ---------------------------------------------------------------------------------------------------------
// The matrix: instruction set x layout x shape x affine, per direction.

struct Case {
  shapes::NamedShape shape;
  Layout layout;
  std::string isa;
  Affine affine;
};

std::vector<Case> cases(const std::vector<shapes::NamedShape>& shape_list, const std::vector<Affine>& affines) {
  std::vector<Case> result;
  for (const std::string& isa : supported_isas())
    for (Layout layout : {Layout::nchw, Layout::nhwc})
      for (const shapes::NamedShape& shape : shape_list)
        for (Affine affine : affines) result.push_back({shape, layout, isa, affine});
  return result;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return test::identifier(c.isa + "_" + to_string(c.layout) + "_" + c.shape.name + "_" + to_string(c.affine));
}

class BatchNormTest : public ::testing::TestWithParam<Case> {
 protected:
  const Affine affine_ = GetParam().affine;
  test::ScopedMaxIsa isa_{GetParam().isa};
  Random rng_{test::seed_for_current_test()};
  Problem p_{GetParam().shape.shape, GetParam().layout, rng_};
};

TEST_P(BatchNormTest, ForwardTraining) {
  const std::vector<float> x_before = p_.x;
  const int64_t batches_before = p_.num_batches_tracked;
  auto ref = reference::batch_norm_forward_training(p_.x.data(), p_.d, p_.weight_or_null(affine_),
                                                    p_.bias_or_null(affine_), p_.running_mean.data(),
                                                    p_.running_var.data(), 0.1, kEps);
  batch_norm_forward(p_.forward(affine_), training_options());

  EXPECT_TRUE(close("y", p_.y, ref.y));
  EXPECT_TRUE(close("save_mean", p_.save_mean, ref.mean));
  EXPECT_TRUE(close("save_invstd", p_.save_invstd, ref.invstd));
  EXPECT_TRUE(close("running_mean", p_.running_mean, ref.running_mean));
  EXPECT_TRUE(close("running_var", p_.running_var, ref.running_var));
  EXPECT_EQ(p_.num_batches_tracked, batches_before + 1);
  EXPECT_TRUE(p_.x == x_before) << "the input was modified";
}

TEST_P(BatchNormTest, ForwardInference) {
  const Problem before = p_;
  auto ref = reference::batch_norm_forward_inference(p_.x.data(), p_.d, p_.weight_or_null(affine_),
                                                     p_.bias_or_null(affine_), p_.running_mean.data(),
                                                     p_.running_var.data(), kEps);
  batch_norm_forward(p_.forward_evaluation(affine_), evaluation_options());

  EXPECT_TRUE(close("y", p_.y, ref));
  // Evaluation reads the running statistics and leaves them, and the counter, as they were.
  EXPECT_TRUE(p_.running_mean == before.running_mean && p_.running_var == before.running_var);
  EXPECT_EQ(p_.num_batches_tracked, before.num_batches_tracked);
  EXPECT_TRUE(p_.x == before.x) << "the input was modified";
}

TEST_P(BatchNormTest, BackwardTraining) {
  p_.save_batch_statistics();
  const std::vector<double> mean = test::to_double(p_.save_mean), invstd = test::to_double(p_.save_invstd);
  auto ref = reference::batch_norm_backward(p_.x.data(), p_.dy.data(), p_.d, p_.weight_or_null(affine_),
                                            mean.data(), invstd.data(), true);
  batch_norm_backward(p_.backward(affine_), training_options());

  EXPECT_TRUE(close("grad_input", p_.dx, ref.dx));
  if (affine_ != Affine::none) {
    EXPECT_TRUE(close_grad_weight(p_, ref.dweight, mean.data(), invstd.data()));
  }
  if (affine_ == Affine::weight_bias) {
    EXPECT_TRUE(close("grad_bias", p_.grad_bias, ref.dbias));
  }
}

TEST_P(BatchNormTest, BackwardEvaluation) {
  p_.save_batch_statistics();
  const std::vector<double> mean = test::to_double(p_.running_mean), invstd = p_.running_invstd();
  auto ref = reference::batch_norm_backward(p_.x.data(), p_.dy.data(), p_.d, p_.weight_or_null(affine_),
                                            mean.data(), invstd.data(), false);
  batch_norm_backward(p_.backward(affine_), evaluation_options());

  EXPECT_TRUE(close("grad_input", p_.dx, ref.dx));
  if (affine_ != Affine::none) {
    EXPECT_TRUE(close_grad_weight(p_, ref.dweight, mean.data(), invstd.data()));
  }
  if (affine_ == Affine::weight_bias) {
    EXPECT_TRUE(close("grad_bias", p_.grad_bias, ref.dbias));
  }
}

INSTANTIATE_TEST_SUITE_P(OddSizes, BatchNormTest,
                         ::testing::ValuesIn(cases(shapes::odd_sizes(),
                                                   {Affine::none, Affine::weight_bias, Affine::weight_only})),
                         case_name);

INSTANTIATE_TEST_SUITE_P(ResNet50Batch2, BatchNormTest,
                         ::testing::ValuesIn(cases(shapes::resnet50_batch2(), {Affine::weight_bias})), case_name);

// ---------------------------------------------------------------------------------------------------------
// Suites per instruction set and layout.

struct IsaLayout {
  std::string isa;
  Layout layout;
};

std::vector<IsaLayout> isa_layouts() {
  std::vector<IsaLayout> result;
  for (const std::string& isa : supported_isas())
    for (Layout layout : {Layout::nchw, Layout::nhwc}) result.push_back({isa, layout});
  return result;
}

std::string isa_layout_name(const ::testing::TestParamInfo<IsaLayout>& info) {
  return info.param.isa + "_" + to_string(info.param.layout);
}

class IsaLayoutTest : public ::testing::TestWithParam<IsaLayout> {
 protected:
  Problem problem(std::vector<int64_t> shape) { return Problem(std::move(shape), layout_, rng_); }

  const Layout layout_ = GetParam().layout;
  test::ScopedMaxIsa isa_{GetParam().isa};
  Random rng_{test::seed_for_current_test()};
};

// ---------------------------------------------------------------------------------------------------------
// Running statistics: PyTorch's rules, several steps, each with a fresh batch.

class RunningStatisticsTest : public IsaLayoutTest {};
INSTANTIATE_TEST_SUITE_P(AllIsas, RunningStatisticsTest, ::testing::ValuesIn(isa_layouts()), isa_layout_name);

constexpr int kSteps = 4;

TEST_P(RunningStatisticsTest, MomentumIsTheWeightOfTheBatch) {
  Problem p = problem({3, 17, 5, 7});
  p.num_batches_tracked = 7;
  for (int step = 1; step <= kSteps; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    p.x = test::random_input(p.d, rng_);
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                      p.running_mean.data(), p.running_var.data(), 0.1, kEps);
    batch_norm_forward(p.forward(Affine::weight_bias), training_options(0.1));
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
    // The counter counts even with a momentum; the momentum stays 0.1 (the reference's).
    EXPECT_EQ(p.num_batches_tracked, 7 + step);
  }
}

// momentum = std::nullopt: num_batches_tracked += 1, then momentum = 1 / num_batches_tracked. From PyTorch's
// initial state (mean 0, variance 1, counter 0) the running statistics are then the plain averages of the
// batches' statistics.
TEST_P(RunningStatisticsTest, CumulativeMovingAverage) {
  Problem p = problem({3, 17, 5, 7});
  std::fill(p.running_mean.begin(), p.running_mean.end(), 0.0f);
  std::fill(p.running_var.begin(), p.running_var.end(), 1.0f);
  p.num_batches_tracked = 0;
  std::vector<double> mean_sum(static_cast<size_t>(p.d.c)), var_sum(static_cast<size_t>(p.d.c));
  const double count = static_cast<double>(p.d.n * p.d.s);
  for (int step = 1; step <= kSteps; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    p.x = test::random_input(p.d, rng_);
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, nullptr, nullptr, p.running_mean.data(),
                                                      p.running_var.data(), 1.0 / step, kEps);
    batch_norm_forward(p.forward(Affine::none), training_options(std::nullopt));
    EXPECT_EQ(p.num_batches_tracked, step);
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));

    std::vector<double> mean_average, var_average;
    for (size_t c = 0; c < mean_sum.size(); c++) {
      mean_sum[c] += ref.mean[c];
      var_sum[c] += ref.biased_var[c] * count / (count - 1);
      mean_average.push_back(mean_sum[c] / step);
      var_average.push_back(var_sum[c] / step);
    }
    EXPECT_TRUE(close("running_mean (average of the batch means)", p.running_mean, mean_average));
    EXPECT_TRUE(close("running_var (average of the unbiased batch variances)", p.running_var, var_average));
  }
}

// From a counter already at 5, the next step's momentum is 1/6: the counter is incremented first.
TEST_P(RunningStatisticsTest, CumulativeMovingAverageIncrementsFirst) {
  Problem p = problem({4, 3, 13, 17});
  p.num_batches_tracked = 5;
  for (int step = 1; step <= kSteps; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    p.x = test::random_input(p.d, rng_);
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), nullptr,
                                                      p.running_mean.data(), p.running_var.data(),
                                                      1.0 / (5 + step), kEps);
    batch_norm_forward(p.forward(Affine::weight_only), training_options(std::nullopt));
    EXPECT_EQ(p.num_batches_tracked, 5 + step);
    EXPECT_TRUE(close("y", p.y, ref.y));
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
  }
}

// ONNX BatchNormalization's training mode updates with the biased variance. count = 105 here, so the unbiased
// factor (1 + 1/104) would move running_var by about 1e-3 of itself: far above the tolerance.
TEST_P(RunningStatisticsTest, BiasedVarianceUpdate) {
  Problem p = problem({3, 17, 5, 7});
  for (int step = 1; step <= kSteps; step++) {
    SCOPED_TRACE("step " + std::to_string(step));
    p.x = test::random_input(p.d, rng_);
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                      p.running_mean.data(), p.running_var.data(), 0.1, kEps,
                                                      /*unbiased_running_var=*/false);
    BatchNormOptions options = training_options(0.1);
    options.running_variance_update = RunningVarianceUpdate::biased;
    batch_norm_forward(p.forward(Affine::weight_bias), options);
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
  }
}

// momentum 1 replaces the running statistics with the batch's; momentum 0 keeps them.
TEST_P(RunningStatisticsTest, MomentumOneAndZero) {
  for (double momentum : {1.0, 0.0}) {
    SCOPED_TRACE("momentum " + std::to_string(momentum));
    Problem p = problem({2, 17, 13, 17});
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                      p.running_mean.data(), p.running_var.data(), momentum, kEps);
    batch_norm_forward(p.forward(Affine::weight_bias), training_options(momentum));
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
  }
}

// Without running statistics, training still normalises with the batch statistics, and the counter (given
// or not) is left alone; momentum = std::nullopt then needs no counter.
TEST_P(RunningStatisticsTest, NotTracking) {
  for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    SCOPED_TRACE(momentum ? "momentum 0.1" : "momentum nullopt");
    Problem p = problem({2, 17, 13, 17});
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(), nullptr,
                                                      nullptr, 0.1, kEps);
    BatchNormForwardTensors t = p.forward(Affine::weight_bias);
    t.running_mean.reset();
    t.running_var.reset();
    const int64_t batches_before = p.num_batches_tracked;
    if (!momentum) t.num_batches_tracked = nullptr;
    batch_norm_forward(t, training_options(momentum));
    EXPECT_TRUE(close("y", p.y, ref.y));
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
    EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
    EXPECT_EQ(p.num_batches_tracked, batches_before);
  }
}

// The saved statistics are optional outputs: without them y and the running statistics are the same.
TEST_P(RunningStatisticsTest, WithoutSavedStatistics) {
  Problem p = problem({2, 17, 13, 17});
  auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                    p.running_mean.data(), p.running_var.data(), 0.1, kEps);
  BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
  batch_norm_forward(t, training_options());
  EXPECT_TRUE(close("y", p.y, ref.y));
  EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
  EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
}

// ---------------------------------------------------------------------------------------------------------
// Hard numerics.

class HardNumericsTest : public IsaLayoutTest {};
INSTANTIATE_TEST_SUITE_P(AllIsas, HardNumericsTest, ::testing::ValuesIn(isa_layouts()), isa_layout_name);

std::vector<double> variance_from_invstd(const std::vector<float>& invstd, double eps) {
  std::vector<double> var;
  for (float v : invstd) var.push_back(1.0 / (static_cast<double>(v) * static_cast<double>(v)) - eps);
  return var;
}

// The backward's three outputs against the reference's.
void expect_gradients(const Problem& p, const reference::Backward& ref) {
  EXPECT_TRUE(close("grad_input", p.dx, ref.dx));
  EXPECT_TRUE(close("grad_weight", p.grad_weight, ref.dweight));
  EXPECT_TRUE(close("grad_bias", p.grad_bias, ref.dbias));
}

// Each channel's mean is 1e4 times its standard deviation (test::mean_ten_thousand_sigma).
TEST_P(HardNumericsTest, MeanTenThousandTimesTheStandardDeviation) {
  Problem p = problem({4, 17, 13, 17});
  test::mean_ten_thousand_sigma(p.x, p.d, rng_);
  // Training, with momentum 1 and the biased update: running_var is then the batch variance itself.
  auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                    p.running_mean.data(), p.running_var.data(), 1.0, kEps,
                                                    /*unbiased_running_var=*/false);
  BatchNormOptions options = training_options(1.0);
  options.running_variance_update = RunningVarianceUpdate::biased;
  batch_norm_forward(p.forward(Affine::weight_bias), options);
  EXPECT_TRUE(close("y", p.y, ref.y));
  EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean, kFloat32Tolerance, Scale::element));
  EXPECT_TRUE(close("running_var (the batch variance)", p.running_var, ref.biased_var, 1e-4, Scale::element));
  EXPECT_TRUE(close("1 / save_invstd^2 - eps (the batch variance)", variance_from_invstd(p.save_invstd, kEps),
                    ref.biased_var, 1e-4, Scale::element));

  // Evaluation with those statistics.
  p.y = test::poisoned(p.d.numel());
  auto ref_inference = reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                               p.running_mean.data(), p.running_var.data(), kEps);
  BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
  batch_norm_forward(t, evaluation_options());
  EXPECT_TRUE(close("y (evaluation)", p.y, ref_inference));

  // The backward through the batch statistics.
  auto ref_backward = reference::batch_norm_backward(p.x.data(), p.dy.data(), p.d, p.weight.data(),
                                                     test::to_double(p.save_mean).data(),
                                                     test::to_double(p.save_invstd).data(), true);
  batch_norm_backward(p.backward(Affine::weight_bias), training_options());
  expect_gradients(p, ref_backward);
}

// Every value of a channel equal up to 1e-6 noise (variance about 3e-13, far below eps = 1e-5), and channel 0
// exactly constant (variance 0): the variance must not come out negative (NaN) or swamp eps.
TEST_P(HardNumericsTest, VarianceBelowEps) {
  Problem p = problem({3, 17, 13, 17});
  for (int64_t c = 0; c < p.d.c; c++) {
    const double value = rng_.uniform(0.5, 2.0) * (c % 2 ? -1 : 1);
    const double noise = c == 0 ? 0.0 : 1e-6;
    for (int64_t n = 0; n < p.d.n; n++)
      for (int64_t s = 0; s < p.d.s; s++)
        p.x[static_cast<size_t>(p.d.offset(n, c, s))] = static_cast<float>(value + noise * rng_.standard());
  }
  auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                    p.running_mean.data(), p.running_var.data(), 0.1, kEps);
  batch_norm_forward(p.forward(Affine::weight_bias), training_options());
  EXPECT_TRUE(close("y", p.y, ref.y));
  EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean, kFloat32Tolerance, Scale::element));
  EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd, kFloat32Tolerance, Scale::element));
  EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean, kFloat32Tolerance, Scale::element));
  EXPECT_TRUE(close("running_var", p.running_var, ref.running_var, kFloat32Tolerance, Scale::element));

  // Without an affine transform y is the tiny centred value itself; judged against its own scale.
  p.y = test::poisoned(p.d.numel());
  auto ref_plain = reference::batch_norm_forward_training(p.x.data(), p.d, nullptr, nullptr, nullptr, nullptr, 0.1,
                                                          kEps);
  BatchNormForwardTensors t = p.forward(Affine::none);
  t.running_mean.reset();
  t.running_var.reset();
  batch_norm_forward(t, training_options());
  EXPECT_TRUE(close("y (no affine)", p.y, ref_plain.y));
}

// Evaluation with running variances far below eps, and an eps other than the default: y and the gradients
// then depend on eps almost entirely, so an eps dropped, defaulted or rounded on the way to a kernel fails.
TEST_P(HardNumericsTest, EvaluationWithRunningVarianceBelowEps) {
  for (double eps : {1e-5, 1e-3}) {
    SCOPED_TRACE("eps " + std::to_string(eps));
    Problem p = problem({3, 17, 13, 17});
    for (float& v : p.running_var) v = static_cast<float>(std::pow(10.0, rng_.uniform(-9.0, -7.0)));
    BatchNormOptions options = evaluation_options();
    options.eps = eps;
    auto ref = reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                       p.running_mean.data(), p.running_var.data(), eps);
    BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
    batch_norm_forward(t, options);
    EXPECT_TRUE(close("y", p.y, ref));

    std::vector<double> invstd;
    for (float v : p.running_var) invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + eps));
    auto ref_backward = reference::batch_norm_backward(p.x.data(), p.dy.data(), p.d, p.weight.data(),
                                                       test::to_double(p.running_mean).data(), invstd.data(), false);
    batch_norm_backward(p.backward(Affine::weight_bias), options);
    expect_gradients(p, ref_backward);
  }
}

// Training with an eps other than the default, on channels whose variance is comparable to it.
TEST_P(HardNumericsTest, TrainingWithLargeEps) {
  Problem p = problem({3, 17, 13, 17});
  for (float& v : p.x) v *= 0.03f;  // variances of about 1e-3 to 4e-3
  constexpr double eps = 1e-3;
  auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                    p.running_mean.data(), p.running_var.data(), 0.1, eps);
  BatchNormOptions options = training_options();
  options.eps = eps;
  batch_norm_forward(p.forward(Affine::weight_bias), options);
  EXPECT_TRUE(close("y", p.y, ref.y));
  EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
  EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
}

// Rows of 2048 x 2048: float32 partial sums must stay short however long a row is. One float32 chain per vector
// lane over the whole row put y off by 3e-5 (avx512) to 2e-4 (sse41); now the sums are chunked (kSumChunk)
// and merged in float64. grad_weight also needs the backward's grid-aligned centre: x - mean rounded the same
// way across a binade and, with dy's nonzero mean, put grad_weight off by 4e-5.
TEST_P(HardNumericsTest, LongSpatialRows) {
  Problem p = problem({2, 2, 2048, 2048});
  auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                    p.running_mean.data(), p.running_var.data(), 0.1, kEps);
  batch_norm_forward(p.forward(Affine::weight_bias), training_options());
  EXPECT_TRUE(close("y", p.y, ref.y));
  EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
  EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
  EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));

  auto ref_backward = reference::batch_norm_backward(p.x.data(), p.dy.data(), p.d, p.weight.data(),
                                                     test::to_double(p.save_mean).data(),
                                                     test::to_double(p.save_invstd).data(), true);
  batch_norm_backward(p.backward(Affine::weight_bias), training_options());
  expect_gradients(p, ref_backward);
}

// A NaN in one channel's input stays in that channel: the other channels' results are finite and correct.
// In training the NaN reaches that channel's statistics (as in PyTorch), so its mean and all its y are NaN;
// in evaluation only the one element is NaN. Tried once in the middle of a channel and once at its first
// element (the kernels' shift for the statistics) in the last channel, which sits in the vector tail.
TEST_P(HardNumericsTest, NanStaysInItsChannel) {
  struct Where {
    int64_t n, c, s;
  };
  for (Where where : {Where{1, 5, 100}, Where{0, 16, 0}}) {
    SCOPED_TRACE("NaN at n " + std::to_string(where.n) + ", c " + std::to_string(where.c) + ", s " +
                 std::to_string(where.s));
    Problem p = problem({3, 17, 13, 17});
    const size_t at = static_cast<size_t>(p.d.offset(where.n, where.c, where.s));
    const size_t channel = static_cast<size_t>(where.c);
    p.x[at] = kNaN;

    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                      p.running_mean.data(), p.running_var.data(), 0.1, kEps);
    ASSERT_TRUE(std::isnan(ref.mean[channel]));
    batch_norm_forward(p.forward(Affine::weight_bias), training_options());
    // ref.y is NaN over the whole channel and finite elsewhere: close() requires exactly that pattern.
    EXPECT_TRUE(close("y", p.y, ref.y));
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    // The variance of the NaN channel is NaN in the reference; the kernel may clamp it, so only the other
    // channels' variance-derived statistics are compared.
    ref.invstd[channel] = ref.running_var[channel] = kNaN;
    std::vector<float> invstd = p.save_invstd, running_var = p.running_var;
    invstd[channel] = running_var[channel] = kNaN;
    EXPECT_TRUE(close("save_invstd (other channels)", invstd, ref.invstd));
    EXPECT_TRUE(close("running_var (other channels)", running_var, ref.running_var));

    p.y = test::poisoned(p.d.numel());
    std::fill(p.running_mean.begin(), p.running_mean.end(), 0.5f);
    std::fill(p.running_var.begin(), p.running_var.end(), 2.0f);
    auto ref_inference = reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                                 p.running_mean.data(), p.running_var.data(), kEps);
    BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
    batch_norm_forward(t, evaluation_options());
    EXPECT_TRUE(close("y (evaluation)", p.y, ref_inference));

    // The backward in training: the NaN reaches the channel's sums, so that channel's gradients are NaN.
    p.save_batch_statistics();
    auto ref_backward = reference::batch_norm_backward(p.x.data(), p.dy.data(), p.d, p.weight.data(),
                                                       test::to_double(p.save_mean).data(),
                                                       test::to_double(p.save_invstd).data(), true);
    batch_norm_backward(p.backward(Affine::weight_bias), training_options());
    expect_gradients(p, ref_backward);
  }
}

// ---------------------------------------------------------------------------------------------------------
// In place: output is the same view as input (PyTorch's inplace BatchNorm; the kernels read each element
// before writing it). The reference is computed from a copy.

class InPlaceTest : public IsaLayoutTest {};
INSTANTIATE_TEST_SUITE_P(AllIsas, InPlaceTest, ::testing::ValuesIn(isa_layouts()), isa_layout_name);

const std::vector<std::vector<int64_t>> kInPlaceShapes = {{5, 17}, {2, 17, 13, 17}, {2, 3, 3, 7, 7}, {8, 17, 64, 64}};

TEST_P(InPlaceTest, ForwardTraining) {
  for (const auto& shape : kInPlaceShapes) {
    SCOPED_TRACE("shape " + shape_string(shape));
    Problem p = problem(shape);
    auto ref = reference::batch_norm_forward_training(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                      p.running_mean.data(), p.running_var.data(), 0.1, kEps);
    BatchNormForwardTensors t = p.forward(Affine::weight_bias);
    t.output = t.input;
    batch_norm_forward(t, training_options());
    EXPECT_TRUE(close("y (in x)", p.x, ref.y));
    EXPECT_TRUE(close("save_mean", p.save_mean, ref.mean));
    EXPECT_TRUE(close("save_invstd", p.save_invstd, ref.invstd));
    EXPECT_TRUE(close("running_mean", p.running_mean, ref.running_mean));
    EXPECT_TRUE(close("running_var", p.running_var, ref.running_var));
  }
}

TEST_P(InPlaceTest, ForwardInference) {
  for (const auto& shape : kInPlaceShapes) {
    SCOPED_TRACE("shape " + shape_string(shape));
    Problem p = problem(shape);
    auto ref = reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                       p.running_mean.data(), p.running_var.data(), kEps);
    BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
    t.output = t.input;
    batch_norm_forward(t, evaluation_options());
    EXPECT_TRUE(close("y (in x)", p.x, ref));
  }
}

// ---------------------------------------------------------------------------------------------------------
// The one-sample case evaluation allows (training refuses it: errors_test.cpp).

class OneValuePerChannelTest : public IsaLayoutTest {};
INSTANTIATE_TEST_SUITE_P(AllIsas, OneValuePerChannelTest, ::testing::ValuesIn(isa_layouts()), isa_layout_name);

TEST_P(OneValuePerChannelTest, EvaluationForwardAndBackward) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 17}, {1, 3, 1, 1}, {1, 17, 1, 1, 1}}) {
    SCOPED_TRACE("shape " + shape_string(shape));
    Problem p = problem(shape);
    auto ref = reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight.data(), p.bias.data(),
                                                       p.running_mean.data(), p.running_var.data(), kEps);
    BatchNormForwardTensors t = p.forward_evaluation(Affine::weight_bias);
    batch_norm_forward(t, evaluation_options());
    EXPECT_TRUE(close("y", p.y, ref));

    auto ref_backward = reference::batch_norm_backward(p.x.data(), p.dy.data(), p.d, p.weight.data(),
                                                       test::to_double(p.running_mean).data(),
                                                       p.running_invstd().data(), false);
    batch_norm_backward(p.backward(Affine::weight_bias), evaluation_options());
    expect_gradients(p, ref_backward);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Gradients against float64 central differences of the reference forward, for the loss L = sum(y * r) with a
// random r, which the backward receives as grad_output. This checks the backward's formulas themselves, where
// BatchNormTest checks the kernels against the reference's closed-form backward.

class GradientCheckTest : public IsaLayoutTest {};
INSTANTIATE_TEST_SUITE_P(AllIsas, GradientCheckTest, ::testing::ValuesIn(isa_layouts()), isa_layout_name);

// Central differences have a truncation error of order h^2 (about 1e-6 here) and the kernels compute in
// float32; 1e-3 leaves room for both while still catching any wrong term.
constexpr double kGradientTolerance = 1e-3;

void check_gradients(Problem& p, Affine affine, bool training) {
  // r is p.dy: the loss's weights are the gradient the backward receives.
  auto loss = [&] {
    std::vector<double> y =
        training ? reference::batch_norm_forward_training(p.x.data(), p.d, p.weight_or_null(affine),
                                                          p.bias_or_null(affine), nullptr, nullptr, 0.0, kEps)
                       .y
                 : reference::batch_norm_forward_inference(p.x.data(), p.d, p.weight_or_null(affine),
                                                           p.bias_or_null(affine), p.running_mean.data(),
                                                           p.running_var.data(), kEps);
    double sum = 0;
    for (size_t i = 0; i < y.size(); i++) sum += y[i] * static_cast<double>(p.dy[i]);
    return sum;
  };
  std::vector<double> dx, dweight, dbias;
  for (float& v : p.x) dx.push_back(reference::central_difference(v, loss));
  for (float& v : p.weight) dweight.push_back(reference::central_difference(v, loss));
  for (float& v : p.bias) dbias.push_back(reference::central_difference(v, loss));

  // The kernels' own forward provides the saved statistics, as in a training step.
  batch_norm_forward(p.forward(affine), training ? training_options() : evaluation_options());
  batch_norm_backward(p.backward(affine), training ? training_options() : evaluation_options());
  EXPECT_TRUE(close("grad_input", p.dx, dx, kGradientTolerance));
  if (affine != Affine::none) {
    EXPECT_TRUE(close("grad_weight", p.grad_weight, dweight, kGradientTolerance));
  }
  if (affine == Affine::weight_bias) {
    EXPECT_TRUE(close("grad_bias", p.grad_bias, dbias, kGradientTolerance));
  }
}

TEST_P(GradientCheckTest, Training) {
  for (Affine affine : {Affine::weight_bias, Affine::none}) {
    SCOPED_TRACE(to_string(affine));
    Problem p = problem({2, 3, 3, 3});
    check_gradients(p, affine, true);
  }
}

TEST_P(GradientCheckTest, Evaluation) {
  for (Affine affine : {Affine::weight_bias, Affine::none}) {
    SCOPED_TRACE(to_string(affine));
    Problem p = problem({2, 3, 3, 3});
    check_gradients(p, affine, false);
  }
}

}  // namespace
}  // namespace fusednorm
