// SyncBatchNorm (fusednorm/sync_batch_norm.h) over a group of threads of this process: each member holds a slice of
// one batch (uneven, some empty), and the group's results are checked against the float64 reference over the whole
// batch (tests/support/sync_batch.h). Groups of 1, 3 and 4, both layouts, every epilogue BatchNorm has, the hard
// numerics, and the errors that every member must raise alike. sync_batch_norm_mpi_test.cpp runs the same checks
// over MPI processes.
//
// Standards: fresh random inputs seeded from the test's name; every output poisoned with NaN before the call;
// the error metric and tolerance of tests/support/test_data.h.
#include "fusednorm/sync_batch_norm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fusednorm/layers.h"
#include "support/sync_batch.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using test::kFloat32Tolerance;
using test::close;
using test::Random;

// The members of a group are threads; allgather waits for all of them. A round's result stays until every member
// has copied it: the next round cannot complete before the slowest member has arrived at it.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(static_cast<size_t>(size)) {}
  int size() const { return size_; }

  void allgather(int rank, std::span<const double> values, std::span<double> gathered) {
    std::unique_lock lock(mutex_);
    slots_[static_cast<size_t>(rank)].assign(values.begin(), values.end());
    const uint64_t round = round_;
    if (++arrived_ == size_) {
      result_.clear();
      for (const std::vector<double>& slot : slots_) result_.insert(result_.end(), slot.begin(), slot.end());
      arrived_ = 0;
      round_++;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    if (result_.size() != gathered.size()) throw std::logic_error("allgather: the members gave different counts");
    std::copy(result_.begin(), result_.end(), gathered.begin());
  }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<std::vector<double>> slots_;
  std::vector<double> result_;
  int arrived_ = 0;
  uint64_t round_ = 0;
};

class ThreadMember final : public Communicator {
 public:
  ThreadMember(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size(); }
  void allgather(std::span<const double> values, std::span<double> gathered) override {
    group_.allgather(rank_, values, gathered);
  }

 private:
  ThreadGroup& group_;
  int rank_;
};

// Runs f(member) on a thread per member of `group`, and rethrows the first member's exception, if any.
template <typename F>
void on_members(ThreadGroup& group, const F& f) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(group.size()));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < group.size(); rank++) {
    threads.emplace_back([&, rank] {
      ThreadMember member(group, rank);
      try {
        f(member);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// The thread group as a Runner of tests/support/sync_batch.h.
void on_threads(test::Batch& b, const test::MemberCall& call) {
  ThreadGroup group(static_cast<int>(b.split.size()));
  on_members(group, call);
}

class SyncBatchNormTest : public ::testing::TestWithParam<std::tuple<Layout, Epilogue>> {
 protected:
  Random rng_{test::seed_for_current_test()};
};

TEST_P(SyncBatchNormTest, MatchesOneProcessOverTheWholeBatch) {
  const auto [layout, epilogue] = GetParam();
  for (int members : {1, 3, 4}) {
    for (const test::Split& split : test::splits(members)) {
      SCOPED_TRACE("shape " + ::testing::PrintToString(split.shape) + " split " +
                   ::testing::PrintToString(split.members));
      test::Batch b(split.shape, layout, split.members, epilogue, rng_);
      test::expect_matches_whole_batch(b, test::options_for(epilogue), kFloat32Tolerance, on_threads);
    }
  }
}

TEST_P(SyncBatchNormTest, MeanTenThousandTimesTheStandardDeviation) {
  const auto [layout, epilogue] = GetParam();
  test::Batch b({9, 11, 13, 7}, layout, {3, 0, 2, 4}, epilogue, rng_);
  test::make_hard(b, rng_);
  test::expect_matches_whole_batch(b, test::hard_options(epilogue), test::kHardStatisticTolerance, on_threads);
}

// bfloat16 and float16 tensors like x (the split kernels of each dtype), where the build has 16-bit kernels.
TEST_P(SyncBatchNormTest, SixteenBitTensors) {
#if defined(FUSEDNORM_TEST_HALF_KERNELS)
  const auto [layout, epilogue] = GetParam();
  for (DType dtype : {DType::bfloat16, DType::float16}) {
    SCOPED_TRACE(name(dtype));
    test::Batch b({7, 5, 6, 7}, layout, {3, 0, 4}, epilogue, rng_, dtype);
    test::expect_matches_whole_batch(b, test::options_for(epilogue), kFloat32Tolerance, on_threads);
  }
#else
  GTEST_SKIP() << "this build has no 16-bit kernels (FUSEDNORM_HALF_ISAS)";
#endif
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndEpilogues, SyncBatchNormTest,
                         ::testing::Combine(::testing::Values(Layout::nchw, Layout::nhwc),
                                            ::testing::Values(Epilogue::none, Epilogue::relu, Epilogue::add_relu)),
                         [](const auto& param) {
                           return std::string(to_string(std::get<0>(param.param))) + "_" +
                                  to_string(std::get<1>(param.param));
                         });

// One value per channel in the whole batch: every member refuses the call after the collective, with PyTorch's
// message, and nothing of any member's state changed.
TEST(SyncBatchNormErrorsTest, OneValuePerChannelInTheWholeBatchIsRefusedByEveryMember) {
  Random rng(test::seed_for_current_test());
  test::Batch b({1, 4}, Layout::nchw, {0, 1, 0}, Epilogue::none, rng);
  ThreadGroup group(3);
  std::vector<std::string> messages(3);
  on_members(group, [&](Communicator& member) {
    try {
      sync_batch_norm_forward(b.forward(member.rank()), member, test::options_for(Epilogue::none));
    } catch (const Error& e) {
      messages[static_cast<size_t>(member.rank())] = e.what();
    }
  });
  for (const std::string& message : messages) {
    EXPECT_NE(message.find("sync_batch_norm: Expected more than 1 value per channel when training"),
              std::string::npos)
        << message;
  }
  for (const test::Batch::Member& m : b.members) {
    EXPECT_EQ(m.running_mean, b.running_mean);
    EXPECT_EQ(m.running_var, b.running_var);
    EXPECT_EQ(m.num_batches_tracked, 0);
    EXPECT_TRUE(std::all_of(m.save_mean.begin(), m.save_mean.end(), [](float v) { return std::isnan(v); }));
  }
}

// A collective that fails: the call throws what it threw and changes nothing.
TEST(SyncBatchNormErrorsTest, AFailedCollectiveChangesNothing) {
  class Failing final : public Communicator {
   public:
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void allgather(std::span<const double>, std::span<double>) override { throw Error("the network is down"); }
  };
  Random rng(test::seed_for_current_test());
  test::Batch b({4, 3, 5}, Layout::nchw, {4}, Epilogue::relu, rng);
  Failing failing;
  EXPECT_THROW(
      {
        try {
          sync_batch_norm_forward(b.forward(0), failing, test::options_for(Epilogue::relu));
        } catch (const Error& e) {
          EXPECT_STREQ(e.what(), "the network is down");
          throw;
        }
      },
      Error);
  const test::Batch::Member& m = b.members.front();
  EXPECT_EQ(m.running_mean, b.running_mean);
  EXPECT_EQ(m.running_var, b.running_var);
  EXPECT_EQ(m.num_batches_tracked, 0);
  EXPECT_TRUE(std::all_of(b.y.begin(), b.y.end(), [](float v) { return std::isnan(v); }));
}

// Evaluation needs no collective: each member's call is batch_norm_forward's (bit for bit), and an empty member's
// does nothing.
TEST(SyncBatchNormEvaluationTest, IsBatchNormOnEachMembersSlice) {
  class NoCollective final : public Communicator {
   public:
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void allgather(std::span<const double>, std::span<double>) override { ADD_FAILURE() << "a collective ran"; }
  };
  Random rng(test::seed_for_current_test());
  for (Layout layout : {Layout::nchw, Layout::nhwc}) {
    test::Batch b({6, 5, 4, 3}, layout, {6, 0}, Epilogue::relu, rng);
    BatchNormOptions options = test::options_for(Epilogue::relu);
    options.training = false;
    NoCollective group;
    sync_batch_norm_forward(b.forward(0), group, options);
    sync_batch_norm_forward(b.forward(1), group, options);
    std::vector<float> expected = test::poisoned(b.d.numel());
    BatchNormForwardTensors t = b.forward(0);
    t.output = TensorView::with_layout(expected.data(), b.shape, layout);
    batch_norm_forward(t, options);
    EXPECT_EQ(b.y, expected);
  }
}

// The layer: SyncBatchNorm2d-like members on threads, each with its slice, against one BatchNorm2d over the whole
// batch, for a few training steps (the forward, the backward, the running statistics) and then evaluation. Each
// member's gradients are its part: summed over the members they are the one layer's.
TEST(SyncBatchNormLayerTest, MembersTogetherAreOneBatchNormOverTheWholeBatch) {
  Random rng(test::seed_for_current_test());
  for (Layout layout : {Layout::nchw, Layout::nhwc}) {
    SCOPED_TRACE(to_string(layout));
    const std::vector<int64_t> shape{8, 6, 5, 3}, split{3, 0, 5};
    BatchNorm2d whole(6, {.momentum = std::nullopt, .epilogue = Epilogue::relu});
    for (float& w : whole.weight()) w = static_cast<float>(rng.uniform(0.5, 2.0));
    ThreadGroup group(3);
    std::vector<ThreadMember> members;
    std::vector<SyncBatchNorm> layers;
    for (int r = 0; r < 3; r++) members.emplace_back(group, r);
    for (int r = 0; r < 3; r++) layers.emplace_back(whole, members[static_cast<size_t>(r)]);
    for (int step = 0; step < 3; step++) {
      test::Batch b(shape, layout, split, Epilogue::relu, rng);
      std::vector<float> y = test::poisoned(b.d.numel()), dx = test::poisoned(b.d.numel());
      whole.forward(TensorView::with_layout(b.x.data(), shape, layout),
                    TensorView::with_layout(y.data(), shape, layout));
      whole.backward(TensorView::with_layout(b.dy.data(), shape, layout),
                     TensorView::with_layout(dx.data(), shape, layout));
      on_members(group, [&](Communicator& member) {
        SyncBatchNorm& layer = layers[static_cast<size_t>(member.rank())];
        layer.forward(b.slice(b.x, member.rank()), b.slice(b.y, member.rank()));
        layer.backward(b.slice(b.dy, member.rank()), b.slice(b.dx, member.rank()));
      });
      EXPECT_TRUE(close("y", b.y, test::to_double(y)));
      EXPECT_TRUE(close("dx", b.dx, test::to_double(dx)));
      for (SyncBatchNorm& layer : layers) {
        EXPECT_EQ(layer.num_batches_tracked(), step + 1);
        EXPECT_EQ(layer.running_mean(), layers.front().running_mean());
        EXPECT_TRUE(close("running_mean", layer.running_mean(), test::to_double(whole.running_mean())));
        EXPECT_TRUE(close("running_var", layer.running_var(), test::to_double(whole.running_var())));
      }
      for (auto [name, grad, expected] : {std::tuple{"grad_weight", &SyncBatchNorm::grad_weight, whole.grad_weight()},
                                          std::tuple{"grad_bias", &SyncBatchNorm::grad_bias, whole.grad_bias()}}) {
        std::vector<double> sum(expected.size(), 0.0);
        for (const SyncBatchNorm& layer : layers) {
          for (size_t c = 0; c < sum.size(); c++) sum[c] += (layer.*grad)()[c];
        }
        EXPECT_TRUE(close(name, sum, test::to_double(expected)));
      }
    }
    // Evaluation: no collective (ThreadGroup would wait for the others), the running statistics.
    test::Batch b(shape, layout, {8, 0, 0}, Epilogue::relu, rng);
    std::vector<float> y = test::poisoned(b.d.numel());
    whole.eval();
    layers.front().eval();
    whole.forward(TensorView::with_layout(b.x.data(), shape, layout),
                  TensorView::with_layout(y.data(), shape, layout));
    layers.front().forward(b.slice(b.x, 0), b.slice(b.y, 0));
    EXPECT_TRUE(close("y (evaluation)", b.y, test::to_double(y)));
  }
}

// Its state dict has BatchNorm's names (PyTorch's SyncBatchNorm), and it is made from a BatchNorm with its state.
TEST(SyncBatchNormLayerTest, StateDictAndConstructionFromBatchNorm) {
  BatchNorm2d batch_norm(4, {.eps = 1e-3, .momentum = 0.3});
  batch_norm.weight() = {1, 2, 3, 4};
  batch_norm.running_var() = {5, 6, 7, 8};
  batch_norm.eval();
  ThreadGroup group(1);
  ThreadMember member(group, 0);
  SyncBatchNorm sync(batch_norm, member);
  EXPECT_EQ(sync.weight(), batch_norm.weight());
  EXPECT_EQ(sync.running_var(), batch_norm.running_var());
  EXPECT_FALSE(sync.is_training());
  EXPECT_EQ(sync.options().eps, 1e-3);
  StateDict from_sync, from_batch_norm;
  sync.save_to(from_sync, "bn.");
  batch_norm.save_to(from_batch_norm, "bn.");
  std::vector<std::string> sync_names, batch_norm_names;
  for (const auto& [name, tensor] : from_sync) sync_names.push_back(name);
  for (const auto& [name, tensor] : from_batch_norm) batch_norm_names.push_back(name);
  EXPECT_EQ(sync_names, batch_norm_names);
  EXPECT_EQ(sync_names.size(), 5u);  // weight, bias, running_mean, running_var, num_batches_tracked
}

}  // namespace
}  // namespace fusednorm
