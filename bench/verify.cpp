#include "bench/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <stdexcept>

#include "support/batch_norm_reference.h"

namespace fusednorm::bench {
namespace {

struct Comparison {
  const char* output;
  double error;
  double tolerance = kTolerance;
};

// A 16-bit output (y, dx) is rounded to its type after a float32 computation on the same (rounded) inputs as the
// reference's: kTolerance plus the type's unit roundoff, 2^-8 (bfloat16) or 2^-11 (float16).
double output_tolerance(DType dtype) {
  return kTolerance + (dtype == DType::bfloat16 ? 0x1p-8 : dtype == DType::float16 ? 0x1p-11 : 0.0);
}

bool has_running_statistics(Op op) { return op == Op::batch_norm || op == Op::batch_norm_relu; }

// RMSNorm has no bias (the reference's Affine: null).
reference::Affine affine(const Problem& p) {
  return {p.channels.weight.data(), centred(p.op) ? p.channels.bias.data() : nullptr};
}

}  // namespace

double relative_error(std::span<const float> got, std::span<const double> want) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double difference = std::abs(static_cast<double>(got[i]) - want[i]);
    if (std::isnan(difference)) return difference;
    worst = std::max(worst, difference);
    scale = std::max(scale, std::abs(want[i]));
  }
  return scale > 0 ? worst / scale : worst;
}

const reference::Forward& Verifier::forward_reference() {
  if (!forward_) {
    const ChannelTensors& ch = problem_.channels;
    const reference::Running running{ch.initial_running_mean.data(), ch.initial_running_var.data(), kMomentum};
    forward_ =
        reference::forward(problem_.sets[0].x.data(), problem_.grouping(), affine(problem_), kEps,
                           epilogue(problem_.op), nullptr, has_running_statistics(problem_.op) ? &running : nullptr);
  }
  return *forward_;
}

void Verifier::prepare(Direction direction) {
  ChannelTensors& ch = problem_.channels;
  BufferSet& set = problem_.sets[0];
  // At most one full-size reference at a time (the largest are 200 MB each); the backward keeps needing the
  // training statistics, not y.
  inference_y_ = {};
  backward_.reset();
  if (direction == Direction::forward_training) {
    forward_.reset();
  } else if (forward_ && !(direction == Direction::backward && needs_forward_output(problem_.op))) {
    forward_->y = {};
  }

  switch (direction) {
    case Direction::forward_training: forward_reference(); return;
    case Direction::forward_inference:
      inference_y_ =
          reference::batch_norm_forward_inference(set.x.data(), problem_.dims, ch.weight.data(), ch.bias.data(),
                                                  ch.initial_running_mean.data(), ch.initial_running_var.data(), kEps);
      return;
    case Direction::backward: {
      if (forward_ && forward_->y.empty() && needs_forward_output(problem_.op)) forward_.reset();  // y is needed
      const reference::Forward& forward = forward_reference();
      std::vector<double> mean(forward.mean.size()), invstd(forward.invstd.size());
      for (size_t k = 0; k < mean.size(); k++) {
        // The backward gets the statistics in float, as a forward saves them; the reference uses exactly those.
        ch.batch_mean[k] = static_cast<float>(forward.mean[k]);
        ch.batch_invstd[k] = static_cast<float>(forward.invstd[k]);
        mean[k] = ch.batch_mean[k];
        invstd[k] = ch.batch_invstd[k];
      }
      // BN + ReLU: the backward reads the forward's y (its mask). Set 0's is the reference's y in float, which
      // the reference's backward reads too; the other sets' only feed timed runs, from the naive forward.
      const float* forward_y = nullptr;
      if (needs_forward_output(problem_.op)) {
        float* y = set.forward_output.data();
        for (size_t i = 0; i < forward.y.size(); i++) y[i] = static_cast<float>(forward.y[i]);
        fill_forward_outputs_naive(problem_, 1);
        forward_y = y;
      }
      forward_->y = {};
      backward_ = reference::backward(set.x.data(), set.grad_output.data(), problem_.grouping(),
                                      centred(problem_.op) ? mean.data() : nullptr, invstd.data(), affine(problem_),
                                      /*through_statistics=*/true, epilogue(problem_.op), forward_y);
      return;
    }
    case Direction::statistics:  // SyncBatchNorm's split kernels: not a bench direction (bench/cases.cpp)
    case Direction::backward_reduce:
    case Direction::backward_elementwise: break;
  }
  throw std::logic_error("Verifier::prepare: not a bench direction");
}

void Verifier::check(const Implementation& implementation, Direction direction) {
  ChannelTensors& ch = problem_.channels;
  ch.reset_running_statistics();
  // In place, on a fresh copy of set 0's x: the reference was computed from it, and it must stay for the rows
  // after this one.
  if (implementation.in_place) problem_.refill_in_place(1);
  implementation.run(problem_, 0);
  if (implementation.publish) implementation.publish(problem_, 0);
  const float* written = implementation.in_place ? problem_.in_place[0].data() : problem_.sets[0].output.data();
  const std::span<const float> output(written, static_cast<size_t>(problem_.dims.numel()));

  std::vector<Comparison> comparisons;
  switch (direction) {
    case Direction::forward_training: {
      const reference::Forward& r = *forward_;
      comparisons = {{"y", relative_error(output, r.y), output_tolerance(problem_.dtype)},
                     {"save_invstd", relative_error(ch.save_invstd, r.invstd)}};
      if (centred(problem_.op)) comparisons.push_back({"save_mean", relative_error(ch.save_mean, r.mean)});
      if (has_running_statistics(problem_.op)) {
        comparisons.push_back({"running_mean", relative_error(ch.running_mean, r.running_mean)});
        comparisons.push_back({"running_var", relative_error(ch.running_var, r.running_var)});
      }
      break;
    }
    case Direction::forward_inference:
      comparisons = {{"y", relative_error(output, inference_y_), output_tolerance(problem_.dtype)}};
      break;
    case Direction::backward:
      comparisons = {{"dx", relative_error(output, backward_->dx), output_tolerance(problem_.dtype)},
                     {"grad_weight", relative_error(ch.grad_weight, backward_->dweight)}};
      if (centred(problem_.op)) comparisons.push_back({"grad_bias", relative_error(ch.grad_bias, backward_->dbias)});
      break;
    case Direction::statistics:
    case Direction::backward_reduce:
    case Direction::backward_elementwise: throw std::logic_error("Verifier::check: not a bench direction");
  }
  ch.reset_running_statistics();

  for (const Comparison& c : comparisons) {
    if (!(c.error < c.tolerance)) {
      throw VerificationError(fmt::format(
          "verification failed: {} {} {} {} {} {} {}: {} differs from the float64 reference by {:.3g} "
          "(max |{} - reference| / max |reference|), expected < {:g}",
          to_string(problem_.op), name(problem_.dtype), name(direction), problem_.layout_name(), problem_.shape.name,
          shape_string(problem_.shape.shape), implementation.name, c.output, c.error, c.output, c.tolerance));
    }
  }
}

}  // namespace fusednorm::bench
