#pragma once
// Synchronized BatchNorm (PyTorch's torch.nn.SyncBatchNorm): each process of a group holds a part of the batch, and
// every one normalizes with the statistics of the whole batch. The group is a Communicator (PyTorch's
// process_group); every member makes the same calls in the same order. In training each call makes one collective
// (an allgather of 1 + 3C doubles forward, 1 + 2C backward); in evaluation none (batch_norm_forward's and
// batch_norm_backward's results). docs/USAGE.md has an example.
#include <span>

#include "fusednorm/batch_norm.h"

namespace fusednorm {

// The collective the synchronized norms need, over a fixed group of processes. A throw from allgather (a failed
// collective) passes through the call that made it, which then has changed nothing.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;  // 0 to size() - 1
  virtual int size() const = 0;
  // Every member's `values` (the same count on each) into `gathered`, size() * values.size() of them, in the order
  // of the ranks.
  virtual void allgather(std::span<const double> values, std::span<double> gathered) = 0;
};

// batch_norm_forward over the group's batch, this member's part in `tensors`. In training: y normalized with the
// mean and biased variance of the whole batch (every member's input, N may differ between members and be 0 on some);
// save_mean and save_invstd are those statistics, and the running statistics (and num_batches_tracked) are updated
// with them, unbiased by the whole batch's count, the same on every member. The members' statistics are combined by
// Chan's parallel formula in rank order: the same on every member, and within rounding of one process's over the
// whole batch for any split. Fewer than 2 values per channel in the whole batch is an error on every member.
void sync_batch_norm_forward(const BatchNormForwardTensors& tensors, Communicator& group,
                             const BatchNormOptions& options = {});

// batch_norm_backward over the group's batch. In training, dx carries the terms through the whole batch's
// statistics (sums of dy and dy * xhat over every member's part); grad_weight and grad_bias are this member's part of
// the sums, as PyTorch's SyncBatchNorm returns them (a data-parallel trainer then sums or averages them over the
// group). save_mean and save_invstd are sync_batch_norm_forward's.
void sync_batch_norm_backward(const BatchNormBackwardTensors& tensors, Communicator& group,
                              const BatchNormOptions& options = {});

}  // namespace fusednorm
