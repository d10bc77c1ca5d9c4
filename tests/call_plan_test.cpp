// The call plan (runtime/plan.h): a call whose plan is cached makes no new plan and allocates nothing (so it
// formats no string: every message and report of dispatch is built in a std::string, which allocates), and a
// setting changed on any thread makes the next call plan again. Allocations are counted by replacing the global
// operator new on the calling thread; the kernels' own scratch (Halide's halide_malloc) is theirs, not the
// runtime's, and is not counted.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/layer_norm.h"
#include "fusednorm/layers.h"
#include "runtime/plan.h"
#include "support/test_data.h"

namespace {
thread_local bool counting = false;
thread_local int64_t allocations = 0;
}  // namespace

// The replacements pair malloc with free themselves; GCC sees only operator new's result reach free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (counting) allocations++;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace fusednorm {
namespace {

// The allocations of `call` on this thread.
template <typename Call>
int64_t allocations_of(const Call& call) {
  allocations = 0;
  counting = true;
  call();
  counting = false;
  return allocations;
}

// BatchNorm1d's shape from the seed ([32, 64]) and a 4-D one, training forward and backward and the evaluation
// forward, LayerNorm and GroupNorm: after the first call of each kind, the same calls make no plan and allocate
// nothing. The outputs are checked against a float64 computation, so a cached plan that ran the wrong kernel or
// bound the wrong memory fails too.
TEST(CallPlanTest, ACachedCallMakesNoPlanAndAllocatesNothing) {
  test::Random rng(20261205);
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{32, 64}, std::vector<int64_t>{4, 6, 5, 3}}) {
    SCOPED_TRACE(shape.size());
    const int64_t n = shape[0], c = shape[1], numel = TensorView(nullptr, shape).numel(), s = numel / (n * c);
    std::vector<float> x = test::random_vector(numel, rng, -3.0, 5.0), dy = test::random_vector(numel, rng, -1, 1);
    std::vector<float> y = test::poisoned(numel), dx = test::poisoned(numel);
    std::vector<float> weight = test::random_vector(c, rng, 0.5, 2.0), bias = test::random_vector(c, rng, -1, 1);
    std::vector<float> running_mean(static_cast<size_t>(c), 0.0f), running_var(static_cast<size_t>(c), 1.0f);
    std::vector<float> save_mean(static_cast<size_t>(c)), save_invstd(static_cast<size_t>(c));
    std::vector<float> grad_weight(static_cast<size_t>(c)), grad_bias(static_cast<size_t>(c));
    const TensorView X(x.data(), shape), Y(y.data(), shape), DY(dy.data(), shape), DX(dx.data(), shape);
    auto vec = [](std::vector<float>& v) { return TensorView(v.data(), {static_cast<int64_t>(v.size())}); };
    const BatchNormForwardTensors forward{.input = X,
                                          .output = Y,
                                          .weight = vec(weight),
                                          .bias = vec(bias),
                                          .running_mean = vec(running_mean),
                                          .running_var = vec(running_var),
                                          .save_mean = vec(save_mean),
                                          .save_invstd = vec(save_invstd)};
    const BatchNormBackwardTensors backward{.grad_output = DY,
                                            .input = X,
                                            .grad_input = DX,
                                            .weight = vec(weight),
                                            .save_mean = vec(save_mean),
                                            .save_invstd = vec(save_invstd),
                                            .grad_weight = vec(grad_weight),
                                            .grad_bias = vec(grad_bias)};
    const BatchNormOptions evaluation{.training = false};
    std::vector<float> rows_y = test::poisoned(numel);
    const std::vector<int64_t> row_shape = {shape.back()};
    std::vector<float> row_weight = test::random_vector(row_shape[0], rng, 0.5, 2.0);
    const LayerNormForwardTensors layer{
        .input = X, .output = TensorView(rows_y.data(), shape), .weight = vec(row_weight)};
    const LayerNormOptions layer_options{.normalized_shape = row_shape};
    std::vector<float> group_y = test::poisoned(numel);
    const GroupNormForwardTensors group{.input = X, .output = TensorView(group_y.data(), shape)};
    const GroupNormOptions group_options{.num_groups = c / 2};

    auto calls = [&] {
      batch_norm_forward(forward);
      batch_norm_backward(backward);
      batch_norm_forward(forward, evaluation);
      layer_norm_forward(layer, layer_options);
      group_norm_forward(group, group_options);
    };
    calls();  // plans made, scratch pools grown
    EXPECT_GT(allocations_of([] { last_dispatch_report(); }), 0);  // the counter sees the runtime's allocations
    const int64_t plans = detail::plans_made();
    EXPECT_EQ(allocations_of([&] { batch_norm_forward(forward); }), 0);
    EXPECT_EQ(allocations_of([&] { batch_norm_backward(backward); }), 0);
    EXPECT_EQ(allocations_of([&] { batch_norm_forward(forward, evaluation); }), 0);
    EXPECT_EQ(allocations_of([&] { layer_norm_forward(layer, layer_options); }), 0);
    EXPECT_EQ(allocations_of([&] { group_norm_forward(group, group_options); }), 0);
    EXPECT_EQ(detail::plans_made(), plans);

    // The training forward's y against float64, with the batch statistics of x.
    batch_norm_forward(forward);
    double worst = 0.0;
    for (int64_t ch = 0; ch < c; ch++) {
      double sum = 0.0, squares = 0.0;
      auto at = [&](int64_t i, int64_t k) { return static_cast<size_t>((i * c + ch) * s + k); };
      for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < s; k++) sum += x[at(i, k)];
      const double mean = sum / static_cast<double>(n * s);
      for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < s; k++) squares += (x[at(i, k)] - mean) * (x[at(i, k)] - mean);
      const double invstd = 1.0 / std::sqrt(squares / static_cast<double>(n * s) + 1e-5);
      for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < s; k++) {
          const double want = (x[at(i, k)] - mean) * invstd * weight[static_cast<size_t>(ch)] +
                              bias[static_cast<size_t>(ch)];
          worst = std::max(worst, std::abs(y[at(i, k)] - want) / 4.0);  // |y| is about 4 at most
          ASSERT_TRUE(std::isfinite(y[at(i, k)]));
        }
    }
    EXPECT_LT(worst, 1e-5);
  }
}

// The layer as an application calls it (the seed's BatchNorm1d(64) on [32, 64], and BatchNorm2d, GroupNorm and
// LayerNorm on a 4-D input): once warm, a training forward + backward and an evaluation forward allocate nothing
// either (views hold their shapes inline; the layer reuses its saved statistics).
TEST(CallPlanTest, ALayerStepAllocatesNothingOnceWarm) {
  test::Random rng(20261206);
  const std::vector<int64_t> seed_shape = {32, 64}, image_shape = {4, 6, 5, 3};
  BatchNorm1d batch1d(64);
  BatchNorm2d batch2d(6);
  GroupNorm group(3, 6);
  LayerNorm layer({3});
  struct Case {
    NormLayer* layer;
    std::vector<int64_t> shape;
    bool has_eval;
  };
  for (const Case& c : {Case{&batch1d, seed_shape, true}, Case{&batch2d, image_shape, true},
                        Case{&group, image_shape, false}, Case{&layer, image_shape, false}}) {
    SCOPED_TRACE(c.shape.size());
    const int64_t numel = TensorView(nullptr, c.shape).numel();
    std::vector<float> x = test::random_vector(numel, rng, -3.0, 5.0), dy = test::random_vector(numel, rng, -1, 1);
    std::vector<float> y = test::poisoned(numel), dx = test::poisoned(numel);
    const TensorView X(x.data(), c.shape), Y(y.data(), c.shape), DY(dy.data(), c.shape), DX(dx.data(), c.shape);
    NormLayer& l = *c.layer;
    auto step = [&] {
      l.forward(X, Y);
      l.backward(DY, DX);
    };
    step();
    step();  // the layer keeps two sets of saved statistics, the last forward's and the next one's
    EXPECT_EQ(allocations_of(step), 0);
    if (c.has_eval) {
      l.eval();
      l.forward(X, Y);
      EXPECT_EQ(allocations_of([&] { l.forward(X, Y); }), 0);
      l.train();
    }
  }
}

// A setter on another thread changes what this thread's next call runs: the plan is made again under the new
// setting, and once more when it is undone.
TEST(CallPlanTest, ASettingChangedOnAnotherThreadMakesTheNextCallPlanAgain) {
  const std::vector<std::string> isas = supported_isas();
  if (isas.size() < 2) GTEST_SKIP() << "one instruction set runs here";
  test::Random rng(7);
  std::vector<float> x = test::random_vector(2 * 3 * 4, rng, -1, 1), y = test::poisoned(24);
  const BatchNormForwardTensors t{.input = TensorView(x.data(), {2, 3, 4}), .output = TensorView(y.data(), {2, 3, 4})};
  batch_norm_forward(t);
  const std::string best = last_dispatch().isa;
  const int64_t plans = detail::plans_made();
  std::thread([&] { set_max_isa(isas.back()); }).join();
  batch_norm_forward(t);
  EXPECT_EQ(detail::plans_made(), plans + 1);
  EXPECT_EQ(last_dispatch().isa, isas.back());
  std::thread([] { set_max_isa(""); }).join();
  batch_norm_forward(t);
  EXPECT_EQ(detail::plans_made(), plans + 2);
  EXPECT_EQ(last_dispatch().isa, best);
}

}  // namespace
}  // namespace fusednorm
