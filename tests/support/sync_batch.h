#pragma once
// What the SyncBatchNorm suites share (tests/sync_batch_norm_test.cpp over threads, sync_batch_norm_mpi_test.cpp over
// MPI processes): one batch split along N into the members' slices, and the check of a group's forward and backward
// against the float64 reference over the whole batch: y and dx everywhere, every member's saved and running
// statistics (identical on all of them, bit for bit) and the members' parameter gradients summed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <numeric>
#include <vector>

#include "fusednorm/sync_batch_norm.h"
#include "support/norm_reference.h"
#include "support/test_data.h"

namespace fusednorm::test {

constexpr double kSyncEps = 1e-5;

// One batch of (N, C, *spatial) split along N into the members' slices, with every member's own per-channel state.
// In a 16-bit dtype, x, z and dy are rounded to it (the reference reads the rounded values) and the calls see 16-bit
// twins of the tensors like x; widen() brings their outputs back into y, dx and dz.
struct Batch {
  Batch(std::vector<int64_t> shape_, Layout layout, std::vector<int64_t> split_, Epilogue epilogue_, Random& rng,
        DType dtype_ = DType::float32)
      : shape(std::move(shape_)),
        split(std::move(split_)),
        epilogue(epilogue_),
        dtype(dtype_),
        d(dims_of(shape, layout)),
        x(random_input(d, rng)),
        z(random_input(d, rng)),
        dy(random_input(d, rng)),
        y(poisoned(d.numel())),
        dx(poisoned(d.numel())),
        dz(poisoned(d.numel())),
        weight(random_vector(d.c, rng, 0.5, 2.0)),
        bias(random_vector(d.c, rng, -1.0, 1.0)),
        running_mean(random_vector(d.c, rng, -1.0, 1.0)),
        running_var(random_vector(d.c, rng, 0.5, 2.0)) {
    EXPECT_EQ(std::accumulate(split.begin(), split.end(), int64_t{0}), shape[0]);
    for (size_t r = 0; r < split.size(); r++) members.push_back(Member{*this});
    if (dtype == DType::float32) return;
    for (std::vector<float>* t : {&x, &z, &dy}) round_to(dtype, *t);
    for (std::vector<float>* t : {&x, &z, &dy, &y, &dx, &dz}) {
      std::vector<uint16_t>& bits = half[t];
      for (float v : *t) bits.push_back(to_bits(dtype, v));
    }
  }

  // y, dx and dz from their 16-bit twins (nothing in float32).
  void widen() {
    if (dtype == DType::float32) return;
    for (std::vector<float>* t : {&y, &dx, &dz}) {
      const std::vector<uint16_t>& bits = half.at(t);
      for (size_t i = 0; i < bits.size(); i++) (*t)[i] = from_bits(dtype, bits[i]);
    }
  }
  // The bound of y, dx and dz against the reference (test_data.h).
  double output_tolerance() const { return storage_tolerance(dtype); }

  // Every member's copy of the state a layer would hold, and its outputs.
  struct Member {
    explicit Member(const Batch& b)
        : running_mean(b.running_mean),
          running_var(b.running_var),
          save_mean(poisoned(b.d.c)),
          save_invstd(poisoned(b.d.c)),
          grad_weight(poisoned(b.d.c)),
          grad_bias(poisoned(b.d.c)) {}
    std::vector<float> running_mean, running_var, save_mean, save_invstd, grad_weight, grad_bias;
    int64_t num_batches_tracked = 0;
  };

  // A member's slice of a tensor like x: its samples are consecutive in both layouts (N is outermost).
  TensorView slice(std::vector<float>& t, int rank) {
    const int64_t first = std::accumulate(split.begin(), split.begin() + rank, int64_t{0});
    std::vector<int64_t> part = shape;
    part[0] = split[static_cast<size_t>(rank)];
    const int64_t offset = first * d.c * d.s;
    if (dtype != DType::float32) {
      return TensorView::with_layout({half.at(&t).data() + offset, dtype}, part, d.layout);
    }
    return TensorView::with_layout(t.data() + offset, part, d.layout);
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
  DType dtype;
  reference::Dims d;
  std::vector<float> x, z, dy, y, dx, dz, weight, bias, running_mean, running_var;
  std::vector<Member> members;
  std::map<const std::vector<float>*, std::vector<uint16_t>> half;  // the 16-bit twins, by the float tensor
};

inline BatchNormOptions options_for(Epilogue epilogue, double momentum = 0.1) {
  BatchNormOptions options;
  options.eps = kSyncEps;
  options.momentum = momentum;
  options.epilogue = epilogue;
  return options;
}

// Runs `call` for every member of the batch's group (on a thread each, or this process's own in an MPI job); after it,
// the batch holds every member's outputs and state.
using MemberCall = std::function<void(Communicator& member)>;
using Runner = std::function<void(Batch& b, const MemberCall& call)>;

// The calls under test: fusednorm's, or others of the same contract on the batch's host tensors (cuda_test: the CUDA
// ones on device copies).
struct SyncCalls {
  std::function<void(const BatchNormForwardTensors&, Communicator&, const BatchNormOptions&)> forward =
      [](const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options) {
        sync_batch_norm_forward(t, group, options);
      };
  std::function<void(const BatchNormBackwardTensors&, Communicator&, const BatchNormOptions&)> backward =
      [](const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& options) {
        sync_batch_norm_backward(t, group, options);
      };
};

// The forward over every member, then the backward, each against the reference over the whole batch.
inline void expect_matches_whole_batch(Batch& b, const BatchNormOptions& options, double statistic_tolerance,
                                       const Runner& run, const SyncCalls& calls = {}) {
  const reference::Running running{b.running_mean.data(), b.running_var.data(), *options.momentum,
                                   options.running_variance_update == RunningVarianceUpdate::unbiased};
  const reference::Forward ref = reference::forward(b.x.data(), reference::Grouping::batch(b.d),
                                                    {b.weight.data(), b.bias.data()}, kSyncEps, b.epilogue, b.z.data(),
                                                    &running);
  run(b, [&](Communicator& member) { calls.forward(b.forward(member.rank()), member, options); });
  b.widen();
  EXPECT_TRUE(close("y", b.y, ref.y, b.output_tolerance()));
  const Batch::Member& first = b.members.front();
  EXPECT_TRUE(close_statistic("save_mean", first.save_mean, ref.mean, ref.invstd));
  EXPECT_TRUE(close("save_invstd", first.save_invstd, ref.invstd, statistic_tolerance, Scale::element));
  EXPECT_TRUE(close_statistic("running_mean", first.running_mean, ref.running_mean, ref.invstd));
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
      b.x.data(), b.dy.data(), reference::Grouping::batch(b.d), to_double(first.save_mean).data(),
      to_double(first.save_invstd).data(), {b.weight.data(), b.bias.data()}, /*through_statistics=*/true,
      b.epilogue, b.y.data());
  run(b, [&](Communicator& member) { calls.backward(b.backward(member.rank()), member, options); });
  b.widen();
  EXPECT_TRUE(close("grad_input", b.dx, ref_backward.dx, b.output_tolerance()));
  if (b.epilogue == Epilogue::add_relu) {
    EXPECT_TRUE(close("grad_residual", b.dz, ref_backward.dz, b.output_tolerance()));
  }
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

// n samples over `members`: the second member empty where there are several, the others uneven (member r's share
// grows with r), the rest on the last.
inline std::vector<int64_t> uneven_split(int64_t n, int members) {
  std::vector<int64_t> weights(static_cast<size_t>(members));
  for (int r = 0; r < members; r++) weights[static_cast<size_t>(r)] = r == 1 ? 0 : r + 1;
  const int64_t total = std::accumulate(weights.begin(), weights.end(), int64_t{0});
  std::vector<int64_t> split;
  for (int64_t w : weights) split.push_back(n * w / total);
  split.back() += n - std::accumulate(split.begin(), split.end(), int64_t{0});
  return split;
}

// Batches for a group of `members`, with the split of each.
struct Split {
  std::vector<int64_t> shape, members;
};
inline std::vector<Split> splits(int members) {
  std::vector<Split> result;
  for (std::vector<int64_t> shape : std::vector<std::vector<int64_t>>{
           {7, 5, 6, 7}, {9, 3, 13, 17}, {6, 19, 1, 1}, {64, 40}}) {  // the last: BatchNorm1d, (N, C)
    result.push_back({shape, uneven_split(shape[0], members)});
  }
  // One sample on each of the first members (one value per channel there, with the spatial size 1).
  std::vector<int64_t> ones(static_cast<size_t>(members), 1);
  ones.back() += 3;
  result.push_back({{members + 3, 19, 1, 1}, ones});
  return result;
}

// The hard numerics' input (test_data.h); every member's shift is its own first element.
inline void make_hard(Batch& b, Random& rng) { mean_ten_thousand_sigma(b.x, b.d, rng); }

// The hard numerics' options: momentum 1 and the biased update, so that running_var is the batch variance itself.
// The variance from sums of deviations carries their float32 rounding: 1e-4 of it, as batch_norm_test allows.
inline BatchNormOptions hard_options(Epilogue epilogue) {
  BatchNormOptions options = options_for(epilogue, 1.0);
  options.running_variance_update = RunningVarianceUpdate::biased;
  return options;
}
constexpr double kHardStatisticTolerance = 1e-4;

}  // namespace fusednorm::test
