// Fuzz target: the validation of a call. batch_norm_forward() with a fuzzed shape (odd sizes, zeros, extents whose
// product wraps int64), layout and strides, options (eps, momentum, epilogue, mode), which optional tensors are
// given and at what size, and aliasing between them, on tiny tensors. What must hold, besides no crash and no
// sanitizer report:
//   - a refused call throws fusednorm::Error and writes nothing (outputs poisoned before, compared bit for bit);
//   - what PyTorch refuses is refused (a wrong size, a partial overlap, a shape that wraps, one value per channel);
//   - an accepted call with well-conditioned statistics matches the float64 reference (tests/support).
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/error.h"
#include "fuzz/fuzz_support.h"
#include "support/batch_norm_reference.h"

namespace {

using namespace fusednorm;

constexpr uint32_t kPoison = 0x7fc0dead;  // a NaN no kernel computes

struct Buffer {
  std::vector<float> values;
  explicit Buffer(size_t n) : values(n) {
    for (float& v : values) std::memcpy(&v, &kPoison, 4);
  }
  bool untouched() const {
    for (float v : values) {
      if (std::memcmp(&v, &kPoison, 4) != 0) return false;
    }
    return true;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

// A per-channel tensor: absent, of C values, or of a wrong size (C - 1, C + 1).
std::optional<TensorView> channel_tensor(fuzz::Choices& in, std::vector<float>& storage, int64_t channels,
                                         bool& wrong_size) {
  const int kind = static_cast<int>(in.below(6));
  if (kind < 2) return std::nullopt;
  const int64_t n = kind == 5 ? channels + 1 : kind == 4 ? std::max<int64_t>(channels - 1, 0) : channels;
  wrong_size = wrong_size || n != channels;
  return TensorView(storage.data(), {n});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Choices in(data, size);

  // Each choice's first option (a zero byte) is a valid one, so that mutations start from calls that run.
  // The shape: rank 1 to 6 with extents 0 to 4, or, sometimes, extents whose product wraps int64.
  const bool wraps = in.below(16) == 15;
  const size_t rank = wraps ? 3 : in.pick<size_t>({4, 2, 3, 5, 1, 6});
  std::vector<int64_t> shape;
  for (size_t d = 0; d < rank; d++) shape.push_back(in.pick<int64_t>({2, 3, 1, 4, 0}));
  if (wraps)
    shape = in.pick<std::vector<int64_t>>(
        {{1, 3, 6148914691236517207}, {6148914691236517207, 3, 1}, {4294967296, 4294967296, 2}, {2, 2, INT64_MAX}});
  const int64_t channels = rank >= 2 ? shape[1] : 0;
  int64_t numel = 1;
  for (int64_t e : shape) numel = wraps ? 0 : numel * e;
  const auto elements = static_cast<size_t>(std::max<int64_t>(numel, 0));

  // x: small integers over 8 (exact in float), sometimes NaN.
  std::vector<float> x(elements + 8);
  for (float& v : x)
    v = in.below(32) == 31 ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(in.byte() - 128) / 8.0f;

  // The layout: contiguous, channels-last, or strides of their own (which must be dense to be accepted).
  const int layout_kind = static_cast<int>(in.below(4));
  auto view = [&](float* p) {
    if (layout_kind == 1 && rank >= 3 && !wraps) return TensorView::channels_last(p, shape);
    if (layout_kind == 3 && !wraps) {
      std::vector<int64_t> strides;
      for (size_t d = 0; d < rank; d++) strides.push_back(static_cast<int64_t>(in.below(7)) - 1);
      return TensorView(p, shape, strides);
    }
    return TensorView(p, shape);
  };
  // A view refuses a shape whose element count wraps (or a negative stride) itself, with the same Error.
  std::optional<TensorView> input_view, output_view, residual_view;
  const int alias = static_cast<int>(in.below(4));
  Buffer y(elements + 8);
  // y: separate, the input itself (in place), or the input shifted by one element (a partial overlap).
  float* y_data = alias == 1 ? x.data() : alias == 2 ? x.data() + 1 : y.values.data();
  const bool partial_overlap = alias == 2 && elements > 1;
  std::vector<float> z(elements + 8, 0.75f);
  const bool with_residual = in.flag();
  try {
    input_view = view(x.data());
    output_view = view(y_data);
    if (with_residual) residual_view = view(z.data());
  } catch (const Error&) {
    return 0;
  }
  const TensorView& input = *input_view;
  const TensorView& output = *output_view;

  BatchNormOptions options;
  options.training = !in.flag();
  options.eps = in.pick<double>({1e-5, 1e-3, 0.0, -1.0, std::nan(""), 1e300});
  options.momentum = in.pick<std::optional<double>>({0.1, std::nullopt, 0.0, 1.0, -0.5, 1.5, std::nan("")});
  options.running_variance_update = in.flag() ? RunningVarianceUpdate::biased : RunningVarianceUpdate::unbiased;
  options.epilogue = in.pick<Epilogue>({Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu});

  const auto per_channel = static_cast<size_t>(std::clamp<int64_t>(channels + 1, 1, 64));
  std::vector<float> weight(per_channel, 1.5f), bias(per_channel, -0.25f), running_mean(per_channel, 0.5f),
      running_var(per_channel, 2.0f);
  Buffer save_mean(per_channel), save_invstd(per_channel);
  int64_t batches = in.pick<int64_t>({0, 5, INT64_MAX, -1});

  BatchNormForwardTensors tensors{.input = input, .output = output};
  bool wrong_size = false;
  tensors.weight = channel_tensor(in, weight, channels, wrong_size);
  tensors.bias = channel_tensor(in, bias, channels, wrong_size);
  if (in.flag()) {
    tensors.running_mean = channel_tensor(in, running_mean, channels, wrong_size);
    tensors.running_var = channel_tensor(in, running_var, channels, wrong_size);
  }
  if (in.flag()) tensors.num_batches_tracked = &batches;
  if (in.flag()) {
    tensors.save_mean = channel_tensor(in, save_mean.values, channels, wrong_size);
    tensors.save_invstd = channel_tensor(in, save_invstd.values, channels, wrong_size);
  }
  tensors.residual = residual_view;

  const std::vector<float> x_before = x, mean_before = running_mean, var_before = running_var;
  const int64_t batches_before = batches;
  bool refused = false;
  try {
    batch_norm_forward(tensors, options);
  } catch (const Error&) {
    refused = true;
  }
  if (refused) {
    if (!same_bits(x, x_before) || !y.untouched() || !save_mean.untouched() || !save_invstd.untouched() ||
        !same_bits(running_mean, mean_before) || !same_bits(running_var, var_before) || batches != batches_before) {
      fuzz::violated("a refused call wrote something");
    }
    return 0;
  }
  const int64_t values_per_channel = channels > 0 ? numel / channels : 0;
  if (wraps) fuzz::violated("a shape whose element count wraps int64 was accepted");
  if (wrong_size) fuzz::violated("a per-channel tensor of the wrong size was accepted");
  if (partial_overlap) fuzz::violated("an output partially overlapping the input was accepted");
  if (rank < 2 || numel == 0) fuzz::violated("an input of rank < 2 or without elements was accepted");
  if (options.training && values_per_channel <= 1) fuzz::violated("training on one value per channel was accepted");
  if (!(options.eps >= 0)) fuzz::violated("a negative or NaN eps was accepted");
  if (tensors.running_mean.has_value() != tensors.running_var.has_value()) {
    fuzz::violated("a running mean without a running variance, or the reverse, was accepted");
  }
  if (!options.training && !tensors.running_mean) fuzz::violated("evaluation without running statistics was accepted");
  if (tensors.residual.has_value() != (options.epilogue == Epilogue::add_relu)) {
    fuzz::violated("a residual without add_relu, or add_relu without one, was accepted");
  }
  if (options.epilogue == Epilogue::silu) fuzz::violated("BatchNorm + SiLU, which has no kernel, was accepted");

  // The accepted call against the float64 reference, where the statistics are well conditioned and the layout
  // is one the reference describes (the view was dense, or it would have been refused).
  if (options.epilogue != Epilogue::none) return 0;  // the epilogues are the suites' (tests/)
  const Layout layout = output.is_contiguous() ? Layout::nchw : Layout::nhwc;
  const reference::Dims dims{shape[0], channels, values_per_channel / std::max<int64_t>(shape[0], 1), layout};
  const float* w = tensors.weight ? weight.data() : nullptr;
  const float* b = tensors.bias ? bias.data() : nullptr;
  std::vector<double> expected, variance(static_cast<size_t>(channels), 1.0);
  if (options.training) {
    const reference::Forward f =
        reference::batch_norm_forward_training(x_before.data(), dims, w, b, nullptr, nullptr, 0.1, options.eps);
    expected = f.y;
    variance = f.biased_var;
  } else {
    expected = reference::batch_norm_forward_inference(x_before.data(), dims, w, b, mean_before.data(),
                                                       var_before.data(), options.eps);
  }
  double scale = 0;
  for (double e : expected) scale = std::isfinite(e) ? std::max(scale, std::abs(e)) : scale;
  for (int64_t i = 0; i < numel; i++) {
    const double e = expected[static_cast<size_t>(i)];
    const double got = y_data[i];
    const int64_t c = layout == Layout::nchw ? (i / dims.s) % channels : i % channels;
    if (!(variance[static_cast<size_t>(c)] + options.eps > 1e-3)) continue;  // ill-conditioned: not compared
    if (std::isnan(e) ? !std::isnan(got) : !(std::abs(got - e) <= 1e-5 * std::max(scale, 1.0))) {
      fuzz::violated("an accepted call's output differs from the float64 reference at element " + std::to_string(i));
    }
  }
  return 0;
}
