#include "fusednorm/mpi.h"

#include <fmt/format.h>

#include <limits>

#include "fusednorm/error.h"

namespace fusednorm {

namespace {

// MPI's text for an error code.
std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(text, static_cast<size_t>(length));
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) throw Error("MpiCommunicator: MPI is not initialized, expected MPI_Init before");
  for (auto [code, what] : {std::pair{MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank"},
                            std::pair{MPI_Comm_size(comm, &size_), "MPI_Comm_size"}}) {
    if (code != MPI_SUCCESS) throw Error(fmt::format("MpiCommunicator: {} failed: {}", what, mpi_error_text(code)));
  }
}

void MpiCommunicator::allgather(std::span<const double> values, std::span<double> gathered) {
  if (values.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw Error(fmt::format("MpiCommunicator: allgather of {} values, expected at most 2^31 - 1", values.size()));
  }
  if (gathered.size() != values.size() * static_cast<size_t>(size_)) {
    throw Error(fmt::format("MpiCommunicator: allgather into {} values, expected {} ({} from each of {} processes)",
                            gathered.size(), values.size() * static_cast<size_t>(size_), values.size(), size_));
  }
  const int count = static_cast<int>(values.size());
  const int code = MPI_Allgather(values.data(), count, MPI_DOUBLE, gathered.data(), count, MPI_DOUBLE, comm_);
  if (code != MPI_SUCCESS) {
    throw Error(fmt::format("MpiCommunicator: MPI_Allgather failed: {}", mpi_error_text(code)), Error::Kind::io);
  }
}

}  // namespace fusednorm
