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
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "fusednorm/layers.h"
#include "runtime/backend.h"
#include "runtime/sync_batch_norm.h"
#include "support/sync_batch.h"
#include "support/test_data.h"
#include "support/thread_group.h"

namespace fusednorm {
namespace {

using test::kFloat32Tolerance;
using test::close;
using test::Random;
using test::on_members;
using test::on_threads;
using test::ThreadGroup;
using test::ThreadMember;

// A backend whose memory the host cannot read, as a GPU's: its pointers are the CPU's with bit 55 set (not a user
// address on x86-64 or arm-64, so a host access faults), turned back only where the backend's own operations take
// them: attach() for the CPU kernels, scratch, and the copies to and from the host. SyncBatchNorm's host part (the
// combine) must reach every tensor through those copies, as on CUDA (fusednorm::cuda::sync_batch_norm_*, which
// cuda_test runs where there is a GPU).
class SeparateMemory final : public detail::BackendContext {
 public:
  static void* device(const void* p) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) | kTag); }
  static void* host(const void* p) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~kTag); }

  Backend backend() const override { return cpu_.backend(); }
  std::span<const detail::KernelVariant> variants() const override { return cpu_.variants(); }
  void check(const char* function, Direction direction, const detail::TensorRefs& t,
             const detail::KernelSettings& s, const detail::Geometry& g) const override {
    cpu_.check(function, direction, t, s, g);
  }
  float* scratch(int64_t size) override { return static_cast<float*>(device(cpu_.scratch(size))); }
  const float* filled(int64_t size, float value) override {
    return static_cast<const float*>(device(cpu_.filled(size, value)));
  }
  bool attach(halide_buffer_t* buffer, const void* data) override { return cpu_.attach(buffer, host(data)); }
  void release(halide_buffer_t* buffer) override { cpu_.release(buffer); }
  void commit(float* to, const float* from, int64_t n) override {
    cpu_.commit(static_cast<float*>(host(to)), static_cast<const float*>(host(from)), n);
  }
  void to_host(void* to, const void* from, int64_t bytes) override {
    std::memcpy(to, host(from), static_cast<size_t>(bytes));
  }
  void to_device(void* to, const void* from, int64_t bytes) override {
    std::memcpy(host(to), from, static_cast<size_t>(bytes));
  }

 private:
  static constexpr uintptr_t kTag = uintptr_t{1} << 55;
  detail::CpuContext cpu_;
};

TensorView on_device(const TensorView& t) {
  return TensorView({SeparateMemory::device(t.data_ptr()), t.dtype()}, t.shape(), t.strides());
}
std::optional<TensorView> on_device(const std::optional<TensorView>& t) {
  if (!t) return std::nullopt;
  return on_device(*t);
}

// SyncBatchNorm on SeparateMemory, every tensor given by its "device" pointer.
test::SyncCalls separate_memory_calls() {
  test::SyncCalls calls;
  calls.forward = [](const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options) {
    BatchNormForwardTensors d{on_device(t.input), on_device(t.output)};
    d.weight = on_device(t.weight);
    d.bias = on_device(t.bias);
    d.running_mean = on_device(t.running_mean);
    d.running_var = on_device(t.running_var);
    d.num_batches_tracked = t.num_batches_tracked;  // host memory, as on CUDA
    d.save_mean = on_device(t.save_mean);
    d.save_invstd = on_device(t.save_invstd);
    d.residual = on_device(t.residual);
    SeparateMemory backend;
    detail::sync_batch_norm_forward(d, group, options, backend);
  };
  calls.backward = [](const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& options) {
    BatchNormBackwardTensors d{on_device(t.grad_output), on_device(t.input), on_device(t.grad_input)};
    d.weight = on_device(t.weight);
    d.save_mean = on_device(t.save_mean);
    d.save_invstd = on_device(t.save_invstd);
    d.running_mean = on_device(t.running_mean);
    d.running_var = on_device(t.running_var);
    d.grad_weight = on_device(t.grad_weight);
    d.grad_bias = on_device(t.grad_bias);
    d.output = on_device(t.output);
    d.grad_residual = on_device(t.grad_residual);
    SeparateMemory backend;
    detail::sync_batch_norm_backward(d, group, options, backend);
  };
  return calls;
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

// The same over a backend whose memory the host cannot read (SeparateMemory): the path of device tensors.
TEST_P(SyncBatchNormTest, OnABackendWhoseMemoryTheHostCannotRead) {
  const auto [layout, epilogue] = GetParam();
  for (const test::Split& split : test::splits(3)) {
    SCOPED_TRACE("shape " + ::testing::PrintToString(split.shape) + " split " +
                 ::testing::PrintToString(split.members));
    test::Batch b(split.shape, layout, split.members, epilogue, rng_);
    test::expect_matches_whole_batch(b, test::options_for(epilogue), kFloat32Tolerance, on_threads,
                                     separate_memory_calls());
  }
  test::Batch hard({9, 11, 13, 7}, layout, {3, 0, 2, 4}, epilogue, rng_);
  test::make_hard(hard, rng_);
  test::expect_matches_whole_batch(hard, test::hard_options(epilogue), test::kHardStatisticTolerance, on_threads,
                                   separate_memory_calls());
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

// Evaluation on a backend whose memory the host cannot read: the backward's invstd comes from the running variance
// through the backend's copies, as on CUDA; the results are the CPU's, bit for bit.
TEST(SyncBatchNormEvaluationTest, OnABackendWhoseMemoryTheHostCannotRead) {
  Random rng(test::seed_for_current_test());
  for (Layout layout : {Layout::nchw, Layout::nhwc}) {
    SCOPED_TRACE(to_string(layout));
    test::Batch b({6, 5, 4, 3}, layout, {6}, Epilogue::relu, rng);
    BatchNormOptions options = test::options_for(Epilogue::relu);
    options.training = false;
    ThreadGroup group(1);
    ThreadMember member(group, 0);
    const test::SyncCalls calls = separate_memory_calls();
    calls.forward(b.forward(0), member, options);
    BatchNormBackwardTensors backward = b.backward(0);
    backward.save_mean = std::nullopt;
    backward.save_invstd = std::nullopt;
    backward.running_mean = b.channel(b.members[0].running_mean);
    backward.running_var = b.channel(b.members[0].running_var);
    calls.backward(backward, member, options);

    std::vector<float> y = test::poisoned(b.d.numel()), dx = test::poisoned(b.d.numel());
    std::vector<float> grad_weight = test::poisoned(b.d.c), grad_bias = test::poisoned(b.d.c);
    BatchNormForwardTensors f = b.forward(0);
    f.output = TensorView::with_layout(y.data(), b.shape, layout);
    batch_norm_forward(f, options);
    backward.grad_input = TensorView::with_layout(dx.data(), b.shape, layout);
    backward.output = f.output;
    backward.grad_weight = TensorView(grad_weight.data(), {b.d.c});
    backward.grad_bias = TensorView(grad_bias.data(), {b.d.c});
    batch_norm_backward(backward, options);
    EXPECT_EQ(b.y, y);
    EXPECT_EQ(b.dx, dx);
    EXPECT_EQ(b.members[0].grad_weight, grad_weight);
    EXPECT_EQ(b.members[0].grad_bias, grad_bias);
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
