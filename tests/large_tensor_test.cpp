// Tensors over 2 GiB: x of shape (64, 32, 512, 525) float32 is 2.2 GB, as is y, so byte offsets pass 2^31 and
// the kernels must address with 64 bits (Halide's large_buffers; one sample is still under 2^31 elements, the
// runtime's limit per kernel dimension). Every element of y is checked, against a float64 computation per
// channel with the reference's definitions (two-pass mean and variance in double, then y from them), streamed
// rather than stored and run on every core, so the test takes seconds. x differs at every element (hashed from
// its offset), so a kernel that wrapped an offset at 2^31 would read another element and fail.
//
// The shape has many samples of a moderate spatial extent (268,800) rather than two samples of 8192 x 8400:
// this test is about addressing. Accuracy over very long spatial rows is HardNumericsTest.LongSpatialRows in
// batch_norm_test.cpp (the NCHW kernels' float32 row sums fall short of 1e-5 there today).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "support/batch_norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using reference::Dims;

const std::vector<int64_t> kShape = {64, 32, 512, 525};
constexpr double kEps = 1e-5;

// Runs body(n, s_begin, s_end) over blocks of (sample, spatial range) on every core. Each block touches
// every channel, in either layout.
template <typename Body>
void parallel_over_blocks(const Dims& d, const Body& body) {
  constexpr int64_t kBlocksPerSample = 16;
  const int64_t blocks = d.n * kBlocksPerSample;
  std::atomic<int64_t> next{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); t++) {
    threads.emplace_back([&] {
      for (int64_t block; (block = next++) < blocks;) {
        const int64_t n = block / kBlocksPerSample, part = block % kBlocksPerSample;
        body(n, d.s * part / kBlocksPerSample, d.s * (part + 1) / kBlocksPerSample);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
}

// Visits the elements of a block in memory order: fn(c, offset).
template <typename Fn>
void for_each_in_block(const Dims& d, int64_t n, int64_t s_begin, int64_t s_end, const Fn& fn) {
  if (d.layout == Layout::nchw) {
    for (int64_t c = 0; c < d.c; c++)
      for (int64_t s = s_begin; s < s_end; s++) fn(c, (n * d.c + c) * d.s + s);
  } else {
    for (int64_t s = s_begin; s < s_end; s++)
      for (int64_t c = 0; c < d.c; c++) fn(c, (n * d.s + s) * d.c + c);
  }
}

// Per-channel sums of f(c, offset) over the whole tensor, in double. Four accumulators per channel (by
// offset), so that in NCHW, where neighbours share a channel, the additions do not wait on each other.
template <typename Fn>
std::vector<double> channel_sums(const Dims& d, const Fn& f) {
  std::vector<double> total(static_cast<size_t>(d.c));
  std::mutex merge;
  parallel_over_blocks(d, [&](int64_t n, int64_t s_begin, int64_t s_end) {
    std::vector<double> partial(static_cast<size_t>(4 * d.c));
    for_each_in_block(d, n, s_begin, s_end,
                      [&](int64_t c, int64_t i) { partial[static_cast<size_t>(4 * c + (i & 3))] += f(c, i); });
    std::lock_guard<std::mutex> lock(merge);
    for (size_t c = 0; c < total.size(); c++) {
      total[c] += (partial[4 * c] + partial[4 * c + 1]) + (partial[4 * c + 2] + partial[4 * c + 3]);
    }
  });
  return total;
}

// y against expected(c, offset) over every element: the metric of test_data.h (max error over max |ref|);
// any y that is not finite (the NaN poison left unwritten) fails.
template <typename Expected>
::testing::AssertionResult y_close(const Dims& d, const float* y, const Expected& expected) {
  std::mutex merge;
  double max_error = 0, max_ref = 0;
  int64_t non_finite = 0;
  parallel_over_blocks(d, [&](int64_t n, int64_t s_begin, int64_t s_end) {
    double block_error = 0, block_ref = 0;
    int64_t block_non_finite = 0;
    for_each_in_block(d, n, s_begin, s_end, [&](int64_t c, int64_t i) {
      const double ref = expected(c, i), got = y[i];
      block_non_finite += !std::isfinite(got);
      block_error = std::max(block_error, std::abs(got - ref));
      block_ref = std::max(block_ref, std::abs(ref));
    });
    std::lock_guard<std::mutex> lock(merge);
    max_error = std::max(max_error, block_error);
    max_ref = std::max(max_ref, block_ref);
    non_finite += block_non_finite;
  });
  if (non_finite > 0) return ::testing::AssertionFailure() << non_finite << " elements of y are not finite";
  const double relative = max_error / std::max(max_ref, 1e-30);
  if (relative > test::kFloat32Tolerance) {
    return ::testing::AssertionFailure() << "y: relative error " << relative << " > " << test::kFloat32Tolerance;
  }
  return ::testing::AssertionSuccess();
}

// Memory for a large tensor, uninitialised (the test writes every element in parallel), in transparent huge
// pages where the kernel offers them: first touching 2.2 GB in 4 KiB pages costs seconds on its own.
struct Unmap {
  size_t bytes;
  void operator()(float* data) const { munmap(data, bytes); }
};
using LargeBuffer = std::unique_ptr<float[], Unmap>;

LargeBuffer allocate(int64_t elements) {
  const size_t bytes = static_cast<size_t>(elements) * sizeof(float);
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(data, bytes, MADV_HUGEPAGE);  // advice only: without it the test is slower, not wrong
#endif
  return LargeBuffer(static_cast<float*>(data), Unmap{bytes});
}

class LargeTensorTest : public ::testing::TestWithParam<Layout> {};

TEST_P(LargeTensorTest, ForwardTrainingAndInference) {
  const Dims d = test::dims_of(kShape, GetParam());
  ASSERT_GT(d.numel() * static_cast<int64_t>(sizeof(float)), int64_t{1} << 31);
  LargeBuffer x = allocate(d.numel()), y = allocate(d.numel());

  test::Random rng(test::seed_for_current_test());
  std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 2), bias = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> running_mean = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> running_var = test::random_vector(d.c, rng, 0.5, 2);
  std::vector<double> centre, spread;
  for (int64_t c = 0; c < d.c; c++) {
    centre.push_back(rng.uniform(-2, 2));
    spread.push_back(rng.uniform(0.5, 2));
  }
  const uint64_t seed = rng.next();
  auto poison_y = [&] {
    parallel_over_blocks(d, [&](int64_t n, int64_t s_begin, int64_t s_end) {
      for_each_in_block(d, n, s_begin, s_end,
                        [&](int64_t, int64_t i) { y[i] = std::numeric_limits<float>::quiet_NaN(); });
    });
  };
  parallel_over_blocks(d, [&](int64_t n, int64_t s_begin, int64_t s_end) {
    for_each_in_block(d, n, s_begin, s_end, [&](int64_t c, int64_t i) {
      const size_t ch = static_cast<size_t>(c);
      x[i] = static_cast<float>(centre[ch] + spread[ch] * test::Random(seed + static_cast<uint64_t>(i)).standard());
    });
  });
  poison_y();

  // The float64 statistics, two passes.
  const double count = static_cast<double>(d.n * d.s);
  std::vector<double> mean = channel_sums(d, [&](int64_t, int64_t i) { return static_cast<double>(x[i]); });
  for (double& m : mean) m /= count;
  std::vector<double> var = channel_sums(d, [&](int64_t c, int64_t i) {
    const double deviation = x[i] - mean[static_cast<size_t>(c)];
    return deviation * deviation;
  });
  for (double& v : var) v /= count;

  // Training.
  std::vector<float> save_mean = test::poisoned(d.c), save_invstd = test::poisoned(d.c);
  std::vector<float> new_running_mean = running_mean, new_running_var = running_var;
  int64_t num_batches_tracked = 0;
  BatchNormForwardTensors t;
  t.input = TensorView::with_layout(x.get(), kShape, d.layout);
  t.output = TensorView::with_layout(y.get(), kShape, d.layout);
  t.weight = TensorView(weight.data(), {d.c});
  t.bias = TensorView(bias.data(), {d.c});
  t.running_mean = TensorView(new_running_mean.data(), {d.c});
  t.running_var = TensorView(new_running_var.data(), {d.c});
  t.num_batches_tracked = &num_batches_tracked;
  t.save_mean = TensorView(save_mean.data(), {d.c});
  t.save_invstd = TensorView(save_invstd.data(), {d.c});
  BatchNormOptions options;
  options.eps = kEps;
  batch_norm_forward(t, options);

  std::vector<double> invstd, expected_running_mean, expected_running_var;
  for (size_t c = 0; c < mean.size(); c++) {
    invstd.push_back(1.0 / std::sqrt(var[c] + kEps));
    expected_running_mean.push_back(0.9 * running_mean[c] + 0.1 * mean[c]);
    expected_running_var.push_back(0.9 * running_var[c] + 0.1 * var[c] * count / (count - 1));
  }
  EXPECT_TRUE(y_close(d, y.get(), [&](int64_t c, int64_t i) {
    const size_t ch = static_cast<size_t>(c);
    return (x[i] - mean[ch]) * invstd[ch] * weight[ch] + bias[ch];
  }));
  EXPECT_TRUE(test::close("save_mean", save_mean, mean));
  EXPECT_TRUE(test::close("save_invstd", save_invstd, invstd));
  EXPECT_TRUE(test::close("running_mean", new_running_mean, expected_running_mean));
  EXPECT_TRUE(test::close("running_var", new_running_var, expected_running_var));
  EXPECT_EQ(num_batches_tracked, 1);

  // Inference, with the running statistics the test started from.
  poison_y();
  t.running_mean = TensorView(running_mean.data(), {d.c});
  t.running_var = TensorView(running_var.data(), {d.c});
  t.save_mean.reset();
  t.save_invstd.reset();
  options.training = false;
  batch_norm_forward(t, options);
  std::vector<double> running_invstd;
  for (float v : running_var) running_invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + kEps));
  EXPECT_TRUE(y_close(d, y.get(), [&](int64_t c, int64_t i) {
    const size_t ch = static_cast<size_t>(c);
    return (x[i] - running_mean[ch]) * running_invstd[ch] * weight[ch] + bias[ch];
  }));
}

INSTANTIATE_TEST_SUITE_P(Over2GiB, LargeTensorTest, ::testing::Values(Layout::nchw, Layout::nhwc),
                         [](const ::testing::TestParamInfo<Layout>& param) { return to_string(param.param); });

}  // namespace
}  // namespace fusednorm
