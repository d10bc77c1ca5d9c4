#pragma once
// The one exception type of FusedNorm. Its message names the function, the argument, the value and what
// was expected, e.g. "batch_norm: weight has 63 elements, expected 64 (one per channel of x [8, 64, 56, 56])".
// Errors raised inside a kernel (Halide's error codes and text) arrive as this exception too.
#include <stdexcept>
#include <string>

namespace fusednorm {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace fusednorm
