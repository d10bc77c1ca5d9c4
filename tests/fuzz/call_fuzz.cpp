// Fuzz target: the validation of a call. batch_norm_forward(), group_norm_forward() or layer_norm_forward() with a
// fuzzed shape (odd sizes, zeros, extents whose product wraps int64), layout and strides, options (eps, momentum,
// groups, normalized_shape, epilogue, mode), which optional tensors are given and at what size, and aliasing
// between them, on tiny tensors. What must hold, besides no crash and no sanitizer report:
//   - a refused call throws fusednorm::Error and writes nothing (outputs poisoned before, compared bit for bit);
//   - what PyTorch refuses is refused (a wrong size, a partial overlap, groups that do not divide C, a
//     normalized_shape that is not the input's trailing dimensions, one value per channel in training, ...);
//   - an accepted call with well-conditioned statistics matches the float64 reference (tests/support).
// Each choice's first option (a zero byte) is a valid one, so that mutations start from calls that run.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/layer_norm.h"
#include "fuzz/fuzz_support.h"
#include "support/batch_norm_reference.h"

namespace {

using namespace fusednorm;

enum class Op { batch_norm, group_norm, layer_norm };

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

int64_t product(const std::vector<int64_t>& extents) {
  int64_t p = 1;
  for (int64_t e : extents) p *= e;
  return p;
}

// The caller's side of one call: what it passes, and what it knows PyTorch would refuse.
struct Call {
  fuzz::Choices& in;
  bool must_refuse = false;
  std::string why = "";  // what must have been refused

  void refuse_if(bool condition, const char* what) {
    if (condition && !must_refuse) {
      must_refuse = true;
      why = what;
    }
  }
  // A tensor of `expected` elements, 1-D over `storage` (which holds at least expected + 1): absent, of that size,
  // or of a wrong size (one less, one more).
  std::optional<TensorView> sized(std::vector<float>& storage, int64_t expected, const char* name) {
    const int kind = static_cast<int>(in.below(6));
    if (kind < 2) return std::nullopt;
    if (expected < 0) {  // from a negative num_groups, which the call must refuse anyway
      refuse_if(true, name);
      expected = 0;
    }
    const int64_t n = kind == 5 ? expected + 1 : kind == 4 ? std::max<int64_t>(expected - 1, 0) : expected;
    refuse_if(n != expected, name);
    return TensorView(storage.data(), {n});
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Choices in(data, size);
  const Op op = in.pick<Op>({Op::batch_norm, Op::group_norm, Op::layer_norm});

  // The shape: rank 1 to 6 with extents 0 to 4, or, sometimes, extents whose product wraps int64.
  const bool wraps = in.below(16) == 15;
  const size_t rank = wraps ? 3 : in.pick<size_t>({4, 2, 3, 5, 1, 6});
  std::vector<int64_t> shape;
  for (size_t d = 0; d < rank; d++) shape.push_back(in.pick<int64_t>({2, 3, 1, 4, 0}));
  if (wraps) {
    shape = in.pick<std::vector<int64_t>>(
        {{1, 3, 6148914691236517207}, {6148914691236517207, 3, 1}, {4294967296, 4294967296, 2}, {2, 2, INT64_MAX}});
  }
  const int64_t numel = wraps ? 0 : product(shape);
  const auto elements = static_cast<size_t>(numel);
  const int64_t batch = shape[0], channels = rank >= 2 ? shape[1] : 0;

  // x: small integers over 8 (exact in float), sometimes NaN.
  std::vector<float> x(elements + 8);
  for (float& v : x) v = in.below(32) == 31 ? std::numeric_limits<float>::quiet_NaN() : (in.byte() - 128) / 8.0f;

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
  // y: separate, the input itself (in place), or the input shifted by one element (a partial overlap).
  const int alias = static_cast<int>(in.below(4));
  Buffer y(elements + 8);
  float* y_data = alias == 1 ? x.data() : alias == 2 ? x.data() + 1 : y.values.data();
  std::vector<float> z(elements + 8, 0.75f);
  const bool with_residual = in.flag();
  // A view refuses a shape whose element count wraps (or a negative stride) itself, with the same Error.
  std::optional<TensorView> input, output, residual;
  try {
    input = view(x.data());
    output = view(y_data);
    if (with_residual) residual = view(z.data());
  } catch (const Error&) {
    return 0;
  }

  Call call{in};
  call.refuse_if(wraps, "a shape whose element count wraps int64");
  call.refuse_if(alias == 2 && elements > 1, "an output partially overlapping the input");
  call.refuse_if(numel == 0, "an input without elements");
  const double eps = in.pick<double>({1e-5, 1e-3, 0.0, -1.0, std::nan(""), 1e300});
  call.refuse_if(!(eps >= 0), "a negative or NaN eps");
  const Epilogue epilogue = in.pick<Epilogue>({Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu});

  // Per-channel, per-group, per-row and per-feature tensors: room for the largest of them, and one more.
  const size_t small = std::max<size_t>(elements, 64) + 1;
  std::vector<float> weight(small, 1.5f), bias(small, -0.25f), running_mean(small, 0.5f), running_var(small, 2.0f);
  Buffer save_mean(small), save_invstd(small);
  int64_t batches = in.pick<int64_t>({0, 5, INT64_MAX, -1});
  const std::vector<float> x_before = x, mean_before = running_mean, var_before = running_var;
  const int64_t batches_before = batches;

  // Which call, and how the reference sees it.
  std::optional<reference::Grouping> grouping;
  bool training = true;
  Layout layout = Layout::nchw;
  std::function<void()> run;
  BatchNormForwardTensors bn{.input = *input, .output = *output};
  BatchNormOptions bn_options{.eps = eps, .epilogue = epilogue};
  GroupNormForwardTensors gn{.input = *input, .output = *output};
  GroupNormOptions gn_options{.eps = eps, .epilogue = epilogue};
  LayerNormForwardTensors ln{.input = *input, .output = *output};
  LayerNormOptions ln_options{.normalized_shape = {}, .eps = eps};
  call.refuse_if(rank < 2 && op != Op::layer_norm, "an input of rank < 2");
  if (op != Op::layer_norm) {
    call.refuse_if(residual.has_value() != (epilogue == Epilogue::add_relu),
                   "a residual without add_relu, or add_relu without one");
  }
  if (op == Op::batch_norm) {
    bn_options.training = training = !in.flag();
    bn_options.momentum = in.pick<std::optional<double>>({0.1, std::nullopt, 0.0, 1.0, -0.5, 1.5, std::nan("")});
    bn_options.running_variance_update = in.flag() ? RunningVarianceUpdate::biased : RunningVarianceUpdate::unbiased;
    bn.weight = call.sized(weight, channels, "a weight of the wrong size");
    bn.bias = call.sized(bias, channels, "a bias of the wrong size");
    if (in.flag()) {
      bn.running_mean = call.sized(running_mean, channels, "a running mean of the wrong size");
      bn.running_var = call.sized(running_var, channels, "a running variance of the wrong size");
    }
    if (in.flag()) bn.num_batches_tracked = &batches;
    if (in.flag()) {
      bn.save_mean = call.sized(save_mean.values, channels, "a save_mean of the wrong size");
      bn.save_invstd = call.sized(save_invstd.values, channels, "a save_invstd of the wrong size");
    }
    bn.residual = residual;
    call.refuse_if(bn.running_mean.has_value() != bn.running_var.has_value(),
                   "a running mean without a running variance, or the reverse");
    call.refuse_if(!training && !bn.running_mean, "evaluation without running statistics");
    call.refuse_if(training && channels > 0 && numel / channels <= 1, "training on one value per channel");
    call.refuse_if(epilogue == Epilogue::silu, "BatchNorm + SiLU, which has no kernel");
    run = [&] { batch_norm_forward(bn, bn_options); };
  } else if (op == Op::group_norm) {
    gn_options.num_groups = in.pick<int64_t>({1, 2, channels, 3, 0, -1, channels + 1});
    const int64_t groups = gn_options.num_groups;
    call.refuse_if(groups <= 0 || (channels > 0 && channels % groups != 0), "num_groups that does not divide C");
    gn.weight = call.sized(weight, channels, "a weight of the wrong size");
    gn.bias = call.sized(bias, channels, "a bias of the wrong size");
    if (in.flag()) {
      gn.save_mean = call.sized(save_mean.values, batch * groups, "a save_mean of the wrong size");
      gn.save_invstd = call.sized(save_invstd.values, batch * groups, "a save_invstd of the wrong size");
    }
    gn.residual = residual;
    run = [&] { group_norm_forward(gn, gn_options); };
  } else {
    // normalized_shape: the input's last 1, 2 or 0 dimensions, or all of them and one more; sometimes one
    // extent off.
    const auto dims = static_cast<size_t>(in.pick<int>({1, 2, 0, static_cast<int>(rank) + 1}));
    for (size_t d = rank - std::min(dims, rank); d < rank; d++) ln_options.normalized_shape.push_back(shape[d]);
    if (dims > rank) ln_options.normalized_shape.insert(ln_options.normalized_shape.begin(), 1);
    if (!ln_options.normalized_shape.empty() && in.below(8) == 7) ln_options.normalized_shape.back() += 1;
    const bool trailing = dims >= 1 && dims <= rank &&
                          std::equal(ln_options.normalized_shape.begin(), ln_options.normalized_shape.end(),
                                     shape.end() - static_cast<std::ptrdiff_t>(dims));
    call.refuse_if(!trailing, "a normalized_shape that is not the input's trailing dimensions");
    const int64_t features = trailing ? product(ln_options.normalized_shape) : 1;
    const int64_t rows = features > 0 ? numel / features : 0;
    ln.weight = call.sized(weight, features, "a weight of the wrong size");
    ln.bias = call.sized(bias, features, "a bias of the wrong size");
    if (in.flag()) {
      ln.save_mean = call.sized(save_mean.values, rows, "a save_mean of the wrong size");
      ln.save_invstd = call.sized(save_invstd.values, rows, "a save_invstd of the wrong size");
    }
    if (trailing && numel > 0) grouping = reference::Grouping::rows(reference::Norm::layer, rows, features);
    run = [&] { layer_norm_forward(ln, ln_options); };
  }

  bool refused = false;
  try {
    run();
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
  if (call.must_refuse) fuzz::violated(call.why + " was accepted");

  // The accepted call against the float64 reference, where the statistics are well conditioned. An accepted view
  // is dense: row-major, or channels-last for the channel norms.
  if (op == Op::layer_norm) {
    if (!input->is_contiguous()) fuzz::violated("a LayerNorm input that is not row-major was accepted");
  } else {
    layout = output->is_contiguous() ? Layout::nchw : Layout::nhwc;
    const reference::Dims dims{batch, channels, numel / (batch * channels), layout};
    grouping = op == Op::batch_norm ? reference::Grouping::batch(dims)
                                    : reference::Grouping::group(dims, gn_options.num_groups);
  }
  const bool has_weight = op == Op::batch_norm   ? bn.weight.has_value()
                          : op == Op::group_norm ? gn.weight.has_value()
                                                 : ln.weight.has_value();
  const bool has_bias = op == Op::batch_norm   ? bn.bias.has_value()
                        : op == Op::group_norm ? gn.bias.has_value()
                                               : ln.bias.has_value();
  const reference::Affine affine{has_weight ? weight.data() : nullptr, has_bias ? bias.data() : nullptr};
  // LayerNorm has no epilogue: the fuzzed one is not passed to it.
  const Epilogue applied = op == Op::layer_norm ? Epilogue::none : epilogue;
  const float* z_data = residual && applied == Epilogue::add_relu ? z.data() : nullptr;
  std::vector<double> expected, variance;
  if (training) {
    const reference::Forward f = reference::forward(x_before.data(), *grouping, affine, eps, applied, z_data);
    expected = f.y;
    variance = f.biased_var;
  } else {
    std::vector<double> mean, invstd;
    for (int64_t c = 0; c < channels; c++) {
      mean.push_back(mean_before[static_cast<size_t>(c)]);
      invstd.push_back(1.0 / std::sqrt(static_cast<double>(var_before[static_cast<size_t>(c)]) + eps));
      variance.push_back(var_before[static_cast<size_t>(c)]);
    }
    expected = reference::normalize(x_before.data(), *grouping, mean.data(), invstd.data(), affine, applied, z_data);
  }
  double scale = 0;
  for (double e : expected) scale = std::isfinite(e) ? std::max(scale, std::abs(e)) : scale;
  reference::for_each_element(*grouping, [&](int64_t i, int64_t, int64_t k) {
    if (!(variance[static_cast<size_t>(k)] + eps > 1e-3)) return;  // ill-conditioned: not compared
    const double e = expected[static_cast<size_t>(i)];
    const double got = y_data[i];
    if (std::isnan(e) ? !std::isnan(got) : !(std::abs(got - e) <= 1e-5 * std::max(scale, 1.0))) {
      fuzz::violated("an accepted call's output differs from the float64 reference at element " + std::to_string(i) +
                     ": " + std::to_string(got) + " against " + std::to_string(e) + " (op " +
                     std::to_string(static_cast<int>(op)) + ", shape " + shape_string(shape) + ", epilogue " +
                     to_string(applied) + ", layout " + to_string(layout) + ")");
    }
  });
  return 0;
}
