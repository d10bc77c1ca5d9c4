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
#include <vector>

#include "support/sync_batch.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using test::kFloat32Tolerance;
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

}  // namespace
}  // namespace fusednorm
