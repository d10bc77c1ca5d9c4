// SyncBatchNorm (fusednorm/sync_batch_norm.h) over a group of threads of this process: each member holds a slice of
// one batch (uneven, some empty), and the group's results are checked against the float64 reference over the whole
// batch (tests/support/norm_reference.h): y and dx slice by slice, every member's saved and running statistics
// (identical on all of them, bit for bit), and the members' parameter gradients summed. Both layouts, every
// epilogue BatchNorm has, the hard numerics, and the errors that every member must raise alike.
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

#include "support/norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using test::close;
using test::kFloat32Tolerance;
using test::Random;
using test::Scale;

constexpr double kEps = 1e-5;

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

// One batch of (N, C, *spatial) split along N into the members' slices, with every member's own per-channel state.
struct Batch {
  Batch(std::vector<int64_t> shape_, Layout layout, std::vector<int64_t> split_, Epilogue epilogue_, Random& rng)
      : shape(std::move(shape_)),
        split(std::move(split_)),
        epilogue(epilogue_),
        d(test::dims_of(shape, layout)),
        x(test::random_input(d, rng)),
        z(test::random_input(d, rng)),
        dy(test::random_input(d, rng)),
        y(test::poisoned(d.numel())),
        dx(test::poisoned(d.numel())),
        dz(test::poisoned(d.numel())),
        weight(test::random_vector(d.c, rng, 0.5, 2.0)),
        bias(test::random_vector(d.c, rng, -1.0, 1.0)),
        running_mean(test::random_vector(d.c, rng, -1.0, 1.0)),
        running_var(test::random_vector(d.c, rng, 0.5, 2.0)) {
    EXPECT_EQ(std::accumulate(split.begin(), split.end(), int64_t{0}), shape[0]);
    for (size_t r = 0; r < split.size(); r++) members.push_back(Member{*this});
  }

  // Every member's copy of the state a layer would hold, and its outputs.
  struct Member {
    explicit Member(const Batch& b)
        : running_mean(b.running_mean),
          running_var(b.running_var),
          save_mean(test::poisoned(b.d.c)),
          save_invstd(test::poisoned(b.d.c)),
          grad_weight(test::poisoned(b.d.c)),
          grad_bias(test::poisoned(b.d.c)) {}
    std::vector<float> running_mean, running_var, save_mean, save_invstd, grad_weight, grad_bias;
    int64_t num_batches_tracked = 0;
  };

  // A member's slice of a tensor like x: its samples are consecutive in both layouts (N is outermost).
  TensorView slice(std::vector<float>& t, int rank) const {
    const int64_t first = std::accumulate(split.begin(), split.begin() + rank, int64_t{0});
    std::vector<int64_t> part = shape;
    part[0] = split[static_cast<size_t>(rank)];
    return TensorView::with_layout(t.data() + first * d.c * d.s, part, d.layout);
  }
  TensorView channel(std::vector<float>& t) const { return TensorView(t.data(), {d.c}); }

  BatchNormForwardTensors forward(int rank) {
    Member& m = members[static_cast<size_t>(rank)];
    BatchNormForwardTensors t{slice(x, rank), slice(y, rank)};
    t.weight = channel(weight);
    t.bias = channel(bias);
    t.running_mean = channel(m.running_mean);
    t.running_var = channel(m.running_var);
    t.num_batches_tracked = &m.num_batches_tracked;
    t.save_mean = channel(m.save_mean);
    t.save_invstd = channel(m.save_invstd);
    if (epilogue == Epilogue::add_relu) t.residual = slice(z, rank);
    return t;
  }
  BatchNormBackwardTensors backward(int rank) {
    Member& m = members[static_cast<size_t>(rank)];
    BatchNormBackwardTensors t{slice(dy, rank), slice(x, rank), slice(dx, rank)};
    t.weight = channel(weight);
    t.save_mean = channel(m.save_mean);
    t.save_invstd = channel(m.save_invstd);
    t.grad_weight = channel(m.grad_weight);
    t.grad_bias = channel(m.grad_bias);
    if (epilogue != Epilogue::none) t.output = slice(y, rank);
    if (epilogue == Epilogue::add_relu) t.grad_residual = slice(dz, rank);
    return t;
  }

  std::vector<int64_t> shape, split;
  Epilogue epilogue;
  reference::Dims d;
  std::vector<float> x, z, dy, y, dx, dz, weight, bias, running_mean, running_var;
  std::vector<Member> members;
};

BatchNormOptions options_for(Epilogue epilogue, double momentum = 0.1) {
  BatchNormOptions options;
  options.eps = kEps;
  options.momentum = momentum;
  options.epilogue = epilogue;
  return options;
}

// The forward over every member, then the backward, each against the reference over the whole batch.
void expect_matches_whole_batch(Batch& b, const BatchNormOptions& options, double statistic_tolerance) {
  const reference::Running running{b.running_mean.data(), b.running_var.data(), *options.momentum,
                                   options.running_variance_update == RunningVarianceUpdate::unbiased};
  const reference::Forward ref = reference::forward(b.x.data(), reference::Grouping::batch(b.d),
                                                    {b.weight.data(), b.bias.data()}, kEps, b.epilogue, b.z.data(),
                                                    &running);
  ThreadGroup group(static_cast<int>(b.split.size()));
  on_members(group, [&](Communicator& member) { sync_batch_norm_forward(b.forward(member.rank()), member, options); });
  EXPECT_TRUE(close("y", b.y, ref.y));
  const Batch::Member& first = b.members.front();
  EXPECT_TRUE(test::close_statistic("save_mean", first.save_mean, ref.mean, ref.invstd));
  EXPECT_TRUE(close("save_invstd", first.save_invstd, ref.invstd, statistic_tolerance, Scale::element));
  EXPECT_TRUE(test::close_statistic("running_mean", first.running_mean, ref.running_mean, ref.invstd));
  EXPECT_TRUE(close("running_var", first.running_var, ref.running_var, statistic_tolerance, Scale::element));
  for (const Batch::Member& m : b.members) {
    EXPECT_EQ(m.save_mean, first.save_mean);
    EXPECT_EQ(m.save_invstd, first.save_invstd);
    EXPECT_EQ(m.running_mean, first.running_mean);
    EXPECT_EQ(m.running_var, first.running_var);
    EXPECT_EQ(m.num_batches_tracked, 1);
  }

  // The backward through the statistics the forward saved, the mask from the y it wrote.
  const reference::Backward ref_backward = reference::backward(
      b.x.data(), b.dy.data(), reference::Grouping::batch(b.d), test::to_double(first.save_mean).data(),
      test::to_double(first.save_invstd).data(), {b.weight.data(), b.bias.data()}, /*through_statistics=*/true,
      b.epilogue, b.y.data());
  on_members(group,
             [&](Communicator& member) { sync_batch_norm_backward(b.backward(member.rank()), member, options); });
  EXPECT_TRUE(close("grad_input", b.dx, ref_backward.dx));
  if (b.epilogue == Epilogue::add_relu) EXPECT_TRUE(close("grad_residual", b.dz, ref_backward.dz));
  // Each member's parameter gradients are its part of the batch's: their sum is the whole batch's.
  std::vector<double> grad_weight(static_cast<size_t>(b.d.c), 0.0), grad_bias(static_cast<size_t>(b.d.c), 0.0);
  for (const Batch::Member& m : b.members) {
    for (size_t c = 0; c < grad_weight.size(); c++) {
      grad_weight[c] += m.grad_weight[c];
      grad_bias[c] += m.grad_bias[c];
    }
  }
  EXPECT_TRUE(close("grad_weight (summed over the members)", grad_weight, ref_backward.dweight));
  EXPECT_TRUE(close("grad_bias (summed over the members)", grad_bias, ref_backward.dbias));
}

struct Split {
  std::vector<int64_t> shape, members;
};
std::vector<Split> splits() {
  return {{{7, 5, 6, 7}, {3, 0, 4}},        // uneven, an empty member between two
          {{9, 3, 13, 17}, {2, 2, 4, 1}},   // four members
          {{6, 19, 1, 1}, {1, 5}},          // one value per channel on a member
          {{5, 16, 3, 11}, {5}},            // a group of one
          {{64, 40}, {16, 0, 31, 17}}};     // BatchNorm1d, (N, C)
}

class SyncBatchNormTest : public ::testing::TestWithParam<std::tuple<Layout, Epilogue>> {
 protected:
  Random rng_{test::seed_for_current_test()};
};

TEST_P(SyncBatchNormTest, MatchesOneProcessOverTheWholeBatch) {
  const auto [layout, epilogue] = GetParam();
  for (const Split& split : splits()) {
    SCOPED_TRACE("shape " + test::identifier(::testing::PrintToString(split.shape)) + " split " +
                 ::testing::PrintToString(split.members));
    Batch b(split.shape, layout, split.members, epilogue, rng_);
    expect_matches_whole_batch(b, options_for(epilogue), kFloat32Tolerance);
  }
}

// Each channel's mean 1e4 times its standard deviation (of either sign), standard deviations from 1e-2 to 1e2, and the
// members' slices far apart in their first values (each member's shift is its own first element).
TEST_P(SyncBatchNormTest, MeanTenThousandTimesTheStandardDeviation) {
  const auto [layout, epilogue] = GetParam();
  Batch b({9, 11, 13, 7}, layout, {3, 0, 2, 4}, epilogue, rng_);
  for (int64_t c = 0; c < b.d.c; c++) {
    const double spread = std::pow(10.0, rng_.uniform(-2.0, 2.0));
    const double mean = (c % 2 ? -1e4 : 1e4) * spread;
    for (int64_t n = 0; n < b.d.n; n++)
      for (int64_t s = 0; s < b.d.s; s++)
        b.x[static_cast<size_t>(b.d.offset(n, c, s))] = static_cast<float>(mean + spread * rng_.standard());
  }
  // The variance from sums of deviations carries their float32 rounding: 1e-4 of it, as batch_norm_test allows.
  BatchNormOptions options = options_for(epilogue, 1.0);
  options.running_variance_update = RunningVarianceUpdate::biased;
  expect_matches_whole_batch(b, options, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndEpilogues, SyncBatchNormTest,
                         ::testing::Combine(::testing::Values(Layout::nchw, Layout::nhwc),
                                            ::testing::Values(Epilogue::none, Epilogue::relu, Epilogue::add_relu)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" +
                                  to_string(std::get<1>(info.param));
                         });

// One value per channel in the whole batch: every member refuses the call after the collective, with PyTorch's
// message, and nothing of any member's state changed.
TEST(SyncBatchNormErrorsTest, OneValuePerChannelInTheWholeBatchIsRefusedByEveryMember) {
  Random rng(test::seed_for_current_test());
  Batch b({1, 4}, Layout::nchw, {0, 1, 0}, Epilogue::none, rng);
  ThreadGroup group(3);
  std::vector<std::string> messages(3);
  on_members(group, [&](Communicator& member) {
    try {
      sync_batch_norm_forward(b.forward(member.rank()), member, options_for(Epilogue::none));
    } catch (const Error& e) {
      messages[static_cast<size_t>(member.rank())] = e.what();
    }
  });
  for (const std::string& message : messages) {
    EXPECT_NE(message.find("sync_batch_norm: Expected more than 1 value per channel when training"),
              std::string::npos)
        << message;
  }
  for (const Batch::Member& m : b.members) {
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
  Batch b({4, 3, 5}, Layout::nchw, {4}, Epilogue::relu, rng);
  Failing failing;
  EXPECT_THROW(
      {
        try {
          sync_batch_norm_forward(b.forward(0), failing, options_for(Epilogue::relu));
        } catch (const Error& e) {
          EXPECT_STREQ(e.what(), "the network is down");
          throw;
        }
      },
      Error);
  const Batch::Member& m = b.members.front();
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
    Batch b({6, 5, 4, 3}, layout, {6, 0}, Epilogue::relu, rng);
    BatchNormOptions options = options_for(Epilogue::relu);
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
