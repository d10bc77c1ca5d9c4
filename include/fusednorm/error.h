#pragma once
// The one exception type of FusedNorm. Its message names the function, the argument, the value and what
// was expected, e.g. "batch_norm: weight has 63 elements, expected 64 (one per channel of x [8, 64, 56, 56])".
// kind() says what went wrong: a caller's argument (the default), reading or writing a file or a collective
// (fusednorm/mpi.h), the device (the CUDA driver), or a kernel that failed while it ran (Halide's error code and
// text are in the message).
#include <stdexcept>
#include <string>

namespace fusednorm {

class Error : public std::runtime_error {
 public:
  enum class Kind { invalid_argument, io, device, kernel };
  explicit Error(const std::string& message, Kind kind = Kind::invalid_argument)
      : std::runtime_error(message), kind_(kind) {}
  explicit Error(const char* message, Kind kind = Kind::invalid_argument)
      : std::runtime_error(message), kind_(kind) {}
  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

}  // namespace fusednorm
