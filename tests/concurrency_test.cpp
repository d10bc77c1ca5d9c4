// The functional API called from several application threads at once (a serving process runs one model per
// request thread): each call's results match the float64 reference exactly as they do alone, and each
// refusal carries its own call's message. What calls share: Halide's thread pool, the per-thread channel
// scratch memory, dispatch's max_isa, and Halide's process-wide error handler. Run under ThreadSanitizer by the
// tsan preset (label "concurrency").
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "support/batch_norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using test::close;

constexpr int kThreads = 4;
constexpr int kIterations = 40;
constexpr double kEps = 1e-5;

// One thread's work: training forward, backward and evaluation forward on fresh data, each compared with the
// reference. Shapes and layouts differ between threads, so the per-thread scratch sizes differ too. Failures
// are collected as text and reported by the test's own thread.
std::vector<std::string> run_calls(int thread, uint64_t seed) {
  std::vector<std::string> failures;
  auto check = [&failures](const ::testing::AssertionResult& result) {
    if (!result) failures.push_back(result.message());
  };
  const std::vector<int64_t> shape = {4, 3 + 7 * thread, 9, 11};
  const Layout layout = thread % 2 ? Layout::nhwc : Layout::nchw;
  const reference::Dims d = test::dims_of(shape, layout);
  test::Random rng(seed);
  std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 2), bias = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> running_mean = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> running_var = test::random_vector(d.c, rng, 0.5, 2);
  int64_t num_batches_tracked = 0;
  for (int iteration = 0; iteration < kIterations; iteration++) {
    std::vector<float> x = test::random_input(d, rng), dy = test::random_input(d, rng);
    std::vector<float> y = test::poisoned(d.numel()), dx = test::poisoned(d.numel());
    std::vector<float> save_mean = test::poisoned(d.c), save_invstd = test::poisoned(d.c);
    std::vector<float> grad_weight = test::poisoned(d.c), grad_bias = test::poisoned(d.c);
    auto ref = reference::batch_norm_forward_training(x.data(), d, weight.data(), bias.data(), running_mean.data(),
                                                      running_var.data(), 0.1, kEps);

    BatchNormForwardTensors t;
    t.input = TensorView::with_layout(x.data(), shape, layout);
    t.output = TensorView::with_layout(y.data(), shape, layout);
    t.weight = TensorView(weight.data(), {d.c});
    t.bias = TensorView(bias.data(), {d.c});
    t.running_mean = TensorView(running_mean.data(), {d.c});
    t.running_var = TensorView(running_var.data(), {d.c});
    t.num_batches_tracked = &num_batches_tracked;
    t.save_mean = TensorView(save_mean.data(), {d.c});
    t.save_invstd = TensorView(save_invstd.data(), {d.c});
    batch_norm_forward(t);
    check(close("y", y, ref.y));
    check(close("save_mean", save_mean, ref.mean));
    check(close("save_invstd", save_invstd, ref.invstd));
    check(close("running_mean", running_mean, ref.running_mean));
    check(close("running_var", running_var, ref.running_var));
    if (num_batches_tracked != iteration + 1) failures.push_back("num_batches_tracked is off");

    auto ref_backward =
        reference::batch_norm_backward(x.data(), dy.data(), d, weight.data(), test::to_double(save_mean).data(),
                                       test::to_double(save_invstd).data(), true);
    BatchNormBackwardTensors b;
    b.grad_output = TensorView::with_layout(dy.data(), shape, layout);
    b.input = t.input;
    b.grad_input = TensorView::with_layout(dx.data(), shape, layout);
    b.weight = t.weight;
    b.save_mean = t.save_mean;
    b.save_invstd = t.save_invstd;
    b.grad_weight = TensorView(grad_weight.data(), {d.c});
    b.grad_bias = TensorView(grad_bias.data(), {d.c});
    batch_norm_backward(b);
    check(close("grad_input", dx, ref_backward.dx));
    check(close("grad_weight", grad_weight, ref_backward.dweight));
    check(close("grad_bias", grad_bias, ref_backward.dbias));

    std::fill(y.begin(), y.end(), std::numeric_limits<float>::quiet_NaN());  // in place: t.output views y
    auto ref_inference = reference::batch_norm_forward_inference(x.data(), d, weight.data(), bias.data(),
                                                                 running_mean.data(), running_var.data(), kEps);
    t.save_mean.reset();
    t.save_invstd.reset();
    BatchNormOptions evaluation;
    evaluation.training = false;
    batch_norm_forward(t, evaluation);
    check(close("y (evaluation)", y, ref_inference));
  }
  return failures;
}

void run_threads(const std::vector<uint64_t>& seeds) {
  std::vector<std::vector<std::string>> failures(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; i++) {
    const size_t slot = static_cast<size_t>(i);
    threads.emplace_back([&failures, &seeds, i, slot] { failures[slot] = run_calls(i, seeds[slot]); });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kThreads; i++) {
    for (const std::string& failure : failures[static_cast<size_t>(i)]) {
      ADD_FAILURE() << "thread " << i << ": " << failure;
    }
  }
}

std::vector<uint64_t> seeds() {
  std::vector<uint64_t> result;
  for (int i = 0; i < kThreads; i++) result.push_back(test::seed_for_current_test() + static_cast<uint64_t>(i));
  return result;
}

TEST(ConcurrencyTest, CallsFromSeveralThreadsMatchTheReference) { run_threads(seeds()); }

// Changing max_isa while calls run: each call runs some variant that fits, and every variant gives the
// reference's results.
TEST(ConcurrencyTest, MaxIsaChangesWhileCallsRun) {
  std::atomic<bool> done{false};
  std::thread changer([&done] {
    const std::vector<std::string> isas = supported_isas();
    for (size_t i = 0; !done; i++) {
      set_max_isa(isas[i % isas.size()]);
      std::this_thread::yield();
    }
  });
  run_threads(seeds());
  done = true;
  changer.join();
  set_max_isa("");
}

// Changing the schedule while calls run (issue 13, row 8): each call decides with one reading of the settings, so
// none may fail with "no ... kernel ... runs on this CPU" because the schedule changed halfway through its
// decision. An autoscheduled kernel may refuse these extents (a Halide bounds error, a legitimate error); every
// call that succeeds matches the reference.
TEST(ConcurrencyTest, ScheduleChangesWhileCallsRun) {
  const std::vector<std::string> schedules = built_schedules();
  if (schedules.size() < 2) GTEST_SKIP() << "this build has no autoscheduled variants (FUSEDNORM_BUILD_AUTOSCHEDULED)";
  std::atomic<bool> done{false};
  std::thread changer([&] {
    for (size_t i = 0; !done; i++) {
      set_schedule(schedules[i % 2]);
      std::this_thread::yield();
    }
  });
  std::vector<std::vector<std::string>> failures(kThreads);
  const std::vector<uint64_t> thread_seeds = seeds();
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; t++) {
    callers.emplace_back([&, t] {
      test::Random rng(thread_seeds[static_cast<size_t>(t)]);
      const std::vector<int64_t> shape = {4, 16, 8, 8};
      const reference::Dims d = test::dims_of(shape, Layout::nchw);
      const std::vector<float> x = test::random_input(d, rng);
      std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 1.5), bias = test::random_vector(d.c, rng, -1, 1);
      const reference::ForwardTraining want =
          reference::batch_norm_forward_training(x.data(), d, weight.data(), bias.data(), nullptr, nullptr, 0.1, kEps);
      for (int i = 0; i < 250 * kIterations; i++) {
        std::vector<float> y = test::poisoned(d.numel());
        try {
          batch_norm_forward({.input = TensorView(const_cast<float*>(x.data()), shape),
                              .output = TensorView(y.data(), shape),
                              .weight = TensorView(weight.data(), {d.c}),
                              .bias = TensorView(bias.data(), {d.c})},
                             {.eps = kEps});
        } catch (const Error& e) {
          if (std::string(e.what()).find("runs on this CPU") != std::string::npos) failures[t].push_back(e.what());
          continue;
        }
        if (const ::testing::AssertionResult r = close("y", y, want.y, 1e-5); !r) failures[t].push_back(r.message());
      }
    });
  }
  for (std::thread& c : callers) c.join();
  done = true;
  changer.join();
  set_schedule("hand");
  for (int t = 0; t < kThreads; t++) {
    EXPECT_TRUE(failures[t].empty()) << failures[t].size() << " failed calls on thread " << t
                                     << ", first: " << failures[t].front();
  }
}

// Refusals on several threads at once: each message is its own call's.
TEST(ConcurrencyTest, ErrorsOnSeveralThreadsKeepTheirOwnMessages) {
  std::vector<std::string> messages(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; i++) {
    threads.emplace_back([&messages, i] {
      const int64_t channels = 2 + i;
      std::vector<float> x(static_cast<size_t>(channels * 8)), y(x.size()), weight(static_cast<size_t>(channels + 1));
      for (int repeat = 0; repeat < 100; repeat++) {
        BatchNormForwardTensors t;
        t.input = TensorView(x.data(), {4, channels, 2});
        t.output = TensorView(y.data(), {4, channels, 2});
        t.weight = TensorView(weight.data(), {channels + 1});
        try {
          batch_norm_forward(t);
        } catch (const Error& error) {
          if (repeat == 0 || messages[static_cast<size_t>(i)] == error.what()) {
            messages[static_cast<size_t>(i)] = error.what();
          } else {
            messages[static_cast<size_t>(i)] = "changed between repeats: " + std::string(error.what());
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kThreads; i++) {
    const int64_t channels = 2 + i;
    EXPECT_EQ(messages[static_cast<size_t>(i)],
              "batch_norm: weight has " + std::to_string(channels + 1) + " elements, expected " +
                  std::to_string(channels) + " (one per channel of input [4, " + std::to_string(channels) + ", 2])");
  }
}

}  // namespace
}  // namespace fusednorm
