#pragma once
// A Communicator over NCCL for the synchronized norms (fusednorm/sync_batch_norm.h), in the component cuda
// (FusedNorm::cuda). Nothing of NCCL or CUDA is needed to build or link: libnccl.so.2 and the CUDA driver are loaded
// at the first use (NCCL 2.x), and a build without CUDA (FUSEDNORM_CUDA=OFF) refuses it with a fusednorm::Error.
// The collectives run on the calling thread's current CUDA context (device 0's primary context when there is none):
// with one GPU per process, make the process's device current before constructing one and around its calls.
#include <array>
#include <span>

#include "fusednorm/sync_batch_norm.h"

namespace fusednorm {

// A new group's identifier (NCCL's ncclUniqueId): made by one member, passed to the others out of band (over MPI,
// a file, a socket), then given by every member to its NcclCommunicator.
using NcclUniqueId = std::array<char, 128>;
NcclUniqueId nccl_unique_id();

class NcclCommunicator final : public Communicator {
 public:
  // Joins the group `id` as `rank` of `size` (ncclCommInitRank: returns once every member has joined). The
  // collectives are ordered on `stream` (a CUstream; nullptr: the legacy default stream). Throws fusednorm::Error
  // naming the argument for a rank outside [0, size) or a size below 1, and with NCCL's or the driver's message
  // where either does not load or fails.
  NcclCommunicator(const NcclUniqueId& id, int rank, int size, void* stream = nullptr);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // ncclAllGather of doubles through device buffers, then waits for the stream: `values` on every member are in
  // `gathered` when it returns. One thread at a time per communicator.
  void allgather(std::span<const double> values, std::span<double> gathered) override;

 private:
  void* comm_ = nullptr;  // ncclComm_t
  void* stream_;
  int rank_;
  int size_;
};

}  // namespace fusednorm
