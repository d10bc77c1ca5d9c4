#include "bench/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <span>

namespace fusednorm::bench {
namespace {

// max |got - want| / max |want|; NaN when any output is NaN (a NaN fails every comparison).
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

struct Comparison {
  const char* output;
  double error;
};

}  // namespace

const reference::ForwardTraining& Verifier::training_reference() {
  if (!training_) {
    const ChannelTensors& ch = problem_.channels;
    training_ = reference::batch_norm_forward_training(problem_.sets[0].x.data(), problem_.dims, ch.weight.data(),
                                                       ch.bias.data(), ch.initial_running_mean.data(),
                                                       ch.initial_running_var.data(), kMomentum, kEps);
  }
  return *training_;
}

void Verifier::prepare(Direction direction) {
  ChannelTensors& ch = problem_.channels;
  const BufferSet& set = problem_.sets[0];
  // At most one full-size reference at a time (the largest are 200 MB each); the backward keeps needing the
  // training statistics, not y.
  inference_y_ = {};
  backward_.reset();
  if (direction == Direction::forward_training) {
    training_.reset();
  } else if (training_) {
    training_->y = {};
  }

  switch (direction) {
    case Direction::forward_training: training_reference(); return;
    case Direction::forward_inference:
      inference_y_ =
          reference::batch_norm_forward_inference(set.x.data(), problem_.dims, ch.weight.data(), ch.bias.data(),
                                                  ch.initial_running_mean.data(), ch.initial_running_var.data(), kEps);
      return;
    case Direction::backward: {
      const reference::ForwardTraining& forward = training_reference();
      std::vector<double> mean(forward.mean.size()), invstd(forward.invstd.size());
      for (size_t c = 0; c < mean.size(); c++) {
        // The backward gets the statistics in float, as a forward saves them; the reference uses exactly those.
        ch.batch_mean[c] = static_cast<float>(forward.mean[c]);
        ch.batch_invstd[c] = static_cast<float>(forward.invstd[c]);
        mean[c] = ch.batch_mean[c];
        invstd[c] = ch.batch_invstd[c];
      }
      training_->y = {};
      backward_ = reference::batch_norm_backward(set.x.data(), set.grad_output.data(), problem_.dims, ch.weight.data(),
                                                 mean.data(), invstd.data(), /*training=*/true);
      return;
    }
  }
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
      const reference::ForwardTraining& r = *training_;
      comparisons = {{"y", relative_error(output, r.y)},
                     {"save_mean", relative_error(ch.save_mean, r.mean)},
                     {"save_invstd", relative_error(ch.save_invstd, r.invstd)},
                     {"running_mean", relative_error(ch.running_mean, r.running_mean)},
                     {"running_var", relative_error(ch.running_var, r.running_var)}};
      break;
    }
    case Direction::forward_inference: comparisons = {{"y", relative_error(output, inference_y_)}}; break;
    case Direction::backward:
      comparisons = {{"dx", relative_error(output, backward_->dx)},
                     {"grad_weight", relative_error(ch.grad_weight, backward_->dweight)},
                     {"grad_bias", relative_error(ch.grad_bias, backward_->dbias)}};
      break;
  }
  ch.reset_running_statistics();

  for (const Comparison& c : comparisons) {
    if (!(c.error < kTolerance)) {
      throw VerificationError(fmt::format(
          "verification failed: batch_norm {} {} {} {} {}: {} differs from the float64 reference by {:.3g} "
          "(max |{} - reference| / max |reference|), expected < {:g}",
          to_string(direction), fusednorm::to_string(problem_.layout), problem_.shape.name,
          shape_string(problem_.shape.shape), implementation.name, c.output, c.error, c.output, kTolerance));
    }
  }
}

}  // namespace fusednorm::bench
