#pragma once
// Every row is checked against the shared float64 reference (tests/support/norm_reference.h) on the shape it is
// timed on, before it is timed: a fast wrong kernel must not make it into the table.
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/problem.h"

namespace fusednorm::bench {

class VerificationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Error of an output: max |output - reference| / max |reference|, so that elements near zero do not dominate.
constexpr double kTolerance = 1e-4;
// That error; NaN when any output is NaN (a NaN fails every comparison).
double relative_error(std::span<const float> got, std::span<const double> want);

// Computes the reference of one direction at a time on buffer set 0 (the reference for the largest shapes
// takes seconds; each is shared by the implementations of its direction) and checks implementations.
class Verifier {
 public:
  explicit Verifier(Problem& problem) : problem_(problem) {}

  // Computes the reference for `direction`, releasing the previous one. For the backward, also sets the
  // problem's batch_mean / batch_invstd (the statistics the training forward would have saved) and, for
  // BN + ReLU, every set's forward_output (set 0's: the reference's y in float).
  void prepare(Direction direction);
  // Runs the implementation once on set 0 from fresh running statistics (in place: on a fresh copy of set 0's
  // x) and compares every output it writes; throws VerificationError naming the output, its error and the
  // tolerance.
  void check(const Implementation& implementation, Direction direction);

 private:
  const reference::Forward& forward_reference();

  Problem& problem_;
  std::optional<reference::Forward> forward_;
  std::vector<double> inference_y_;
  std::optional<reference::Backward> backward_;
};

}  // namespace fusednorm::bench
