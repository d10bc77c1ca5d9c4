#pragma once
// A Communicator over MPI for the synchronized norms (fusednorm/sync_batch_norm.h): the package's component mpi
// (FusedNorm::mpi, built where CMake finds MPI; docs/PACKAGE.md), which alone links MPI.
#include <mpi.h>

#include <span>

#include "fusednorm/sync_batch_norm.h"

namespace fusednorm {

class MpiCommunicator final : public Communicator {
 public:
  // The processes of `comm` (not owned; MPI initialized, and `comm` valid while this is used). Throws
  // fusednorm::Error where MPI is not initialized.
  explicit MpiCommunicator(MPI_Comm comm);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // MPI_Allgather of doubles. Under MPI's default error handler a failure aborts the job; with MPI_ERRORS_RETURN
  // set on `comm`, it is a fusednorm::Error with MPI's text.
  void allgather(std::span<const double> values, std::span<double> gathered) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace fusednorm
