// What every layer of include/fusednorm/layers.h shares: the forward / backward protocol (the residual of
// add_relu, the forward a backward differentiates, gradient accumulation) and the state dict.
#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "fusednorm/error.h"
#include "fusednorm/layers.h"
#include "runtime/checks.h"

namespace fusednorm {

namespace {
size_t element_count(const std::vector<int64_t>& shape) {
  return static_cast<size_t>(detail::checked_product("layer", "feature shape", shape));
}

StateTensor floats_of_shape(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  StateTensor tensor = StateTensor::from_floats(values);
  tensor.shape = shape;
  return tensor;
}

const char* dtype_string(StateTensor::DType dtype) { return dtype == StateTensor::DType::int64 ? "int64" : "float32"; }
}  // namespace

NormLayer::NormLayer(std::string name, detail::LayerContents contents, Epilogue epilogue)
    : name_(std::move(name)), contents_(std::move(contents)), epilogue_(epilogue) {
  const size_t features = element_count(contents_.feature_shape);
  if (contents_.has_weight) {
    weight_.assign(features, 1.0f);
    grad_weight_.assign(features, 0.0f);
    batch_grad_weight_.resize(features);
  }
  if (contents_.has_bias) {
    bias_.assign(features, 0.0f);
    grad_bias_.assign(features, 0.0f);
    batch_grad_bias_.resize(features);
  }
  reset_running_stats();
}

void NormLayer::reset_running_stats() {
  if (!contents_.has_running_stats) return;
  const size_t features = element_count(contents_.feature_shape);
  running_mean_.assign(features, 0.0f);
  running_var_.assign(features, 1.0f);
  num_batches_tracked_ = 0;
}

// weight() and bias() hand out the vectors themselves, so a caller can resize them: the views are made only over the
// values that are there (a resized weight was read past its end), and refused before any call, as the buffers are.
std::optional<TensorView> NormLayer::parameter_view(std::vector<float>& values, const char* what) const {
  const size_t features = element_count(contents_.feature_shape);
  if (values.size() != features) {
    throw Error(fmt::format("{}: {} has {} values, expected {} (the layer's feature shape {}); resize it back", name_,
                            what, values.size(), features, shape_string(contents_.feature_shape)));
  }
  return TensorView(values.data(), contents_.feature_shape);
}

std::optional<TensorView> NormLayer::weight_view() {
  if (!contents_.has_weight) return std::nullopt;
  return parameter_view(weight_, "weight");
}

std::optional<TensorView> NormLayer::bias_view() {
  if (!contents_.has_bias) return std::nullopt;
  return parameter_view(bias_, "bias");
}

void NormLayer::check_residual(bool given, const char* call, const char* argument) const {
  const bool wanted = epilogue_ == Epilogue::add_relu;
  if (given && !wanted) {
    throw Error(
        fmt::format("{}: {} was given {}, expected none: only epilogue add_relu takes one, and this layer's "
                    "epilogue is {}",
                    name_, call, argument, to_string(epilogue_)));
  }
  if (!given && wanted) {
    throw Error(
        fmt::format("{}: {} without {}, expected one: the layer's epilogue is add_relu", name_, call, argument));
  }
}

void NormLayer::forward(const TensorView& x, const TensorView& y) { forward_with(x, std::nullopt, y); }

void NormLayer::forward(const TensorView& x, const TensorView& z, const TensorView& y) { forward_with(x, z, y); }

void NormLayer::forward_with(const TensorView& x, const std::optional<TensorView>& z, const TensorView& y) {
  check_residual(z.has_value(), "forward", "a residual (z)");
  check_input(x, "input");
  if (z) check_input(*z, "residual");
  Saved& saved = next_saved_;
  saved.input = x;
  saved.output.reset();
  const bool differentiable = run_forward(x, z, y, saved);

  // Only after success: what backward needs.
  if (!differentiable) {
    has_saved_ = false;
    return;
  }
  if (epilogue_ == Epilogue::relu || epilogue_ == Epilogue::add_relu) saved.output = y;
  // The functional forwards accept no overlap of y and x but the same view: y.data() == x.data() is in place.
  saved.input_overwritten = y.data() == x.data();
  std::swap(saved_, next_saved_);
  has_saved_ = true;
}

void NormLayer::backward(const TensorView& dy, const TensorView& dx) { backward_with(dy, dx, std::nullopt); }

void NormLayer::backward(const TensorView& dy, const TensorView& dx, const TensorView& dz) {
  backward_with(dy, dx, dz);
}

void NormLayer::backward_with(const TensorView& dy, const TensorView& dx, const std::optional<TensorView>& dz) {
  check_residual(dz.has_value(), "backward", "a grad_residual (dz)");
  if (!has_saved_) {
    throw Error(fmt::format("{}: backward has no forward to differentiate, expected {} since the last backward", name_,
                            differentiable_forward()));
  }
  if (saved_.input_overwritten) {
    throw Error(
        fmt::format("{}: backward of a forward that ran in place (output was input): the input it needs "
                    "was overwritten, expected a forward with an output apart from its input",
                    name_));
  }
  check_input(dy, "grad_output");
  if (dz) check_input(*dz, "grad_residual");

  // The functional backwards write the gradients of this batch; the layer accumulates them, as autograd does.
  ParameterGrads grads;
  if (contents_.has_weight) grads.weight = TensorView(batch_grad_weight_.data(), contents_.feature_shape);
  if (contents_.has_bias) grads.bias = TensorView(batch_grad_bias_.data(), contents_.feature_shape);
  run_backward(saved_, dy, dx, dz, grads);

  for (size_t i = 0; i < batch_grad_weight_.size(); i++) grad_weight_[i] += batch_grad_weight_[i];
  for (size_t i = 0; i < batch_grad_bias_.size(); i++) grad_bias_[i] += batch_grad_bias_[i];
  has_saved_ = false;
}

void NormLayer::zero_grad() {
  std::fill(grad_weight_.begin(), grad_weight_.end(), 0.0f);
  std::fill(grad_bias_.begin(), grad_bias_.end(), 0.0f);
}

void NormLayer::save_to(StateDict& state, const std::string& prefix) const {
  const std::vector<int64_t>& shape = contents_.feature_shape;
  if (contents_.has_weight) state[prefix + "weight"] = floats_of_shape(weight_, shape);
  if (contents_.has_bias) state[prefix + "bias"] = floats_of_shape(bias_, shape);
  if (contents_.has_running_stats) {
    state[prefix + "running_mean"] = floats_of_shape(running_mean_, shape);
    state[prefix + "running_var"] = floats_of_shape(running_var_, shape);
    state[prefix + "num_batches_tracked"] = StateTensor::scalar_int64(num_batches_tracked_);
  }
}

void NormLayer::load_from(const StateDict& state, const std::string& prefix) {
  std::vector<std::string> expected;
  if (contents_.has_weight) expected.push_back("weight");
  if (contents_.has_bias) expected.push_back("bias");
  if (contents_.has_running_stats) {
    expected.insert(expected.end(), {"running_mean", "running_var", "num_batches_tracked"});
  }

  // Check everything first: a failed load changes nothing.
  for (const std::string& key : expected) {
    auto it = state.find(prefix + key);
    if (it == state.end()) throw Error(fmt::format("{}: load_from: missing key '{}{}'", name_, prefix, key));
    const StateTensor& t = it->second;
    const bool scalar = key == "num_batches_tracked";
    const auto want_dtype = scalar ? StateTensor::DType::int64 : StateTensor::DType::float32;
    const std::vector<int64_t> want_shape = scalar ? std::vector<int64_t>{} : contents_.feature_shape;
    if (t.dtype != want_dtype || t.shape != want_shape) {
      throw Error(fmt::format("{}: load_from: '{}{}' is {} {}, expected {} {}", name_, prefix, key,
                              dtype_string(t.dtype), shape_string(t.shape), dtype_string(want_dtype),
                              shape_string(want_shape)));
    }
    // A StateTensor built by hand may not hold the values its shape says; load_state_dict's always do.
    const size_t values = scalar ? t.i64.size() : t.f32.size();
    if (static_cast<int64_t>(values) != t.numel()) {
      throw Error(fmt::format("{}: load_from: '{}{}' has {} values, expected {} (shape {})", name_, prefix, key, values,
                              t.numel(), shape_string(t.shape)));
    }
    // The counter the next training forward increments: a negative one, or one at the largest int64, would make
    // every later forward throw (it overflowed before).
    if (scalar && (t.i64[0] < 0 || t.i64[0] == std::numeric_limits<int64_t>::max())) {
      throw Error(fmt::format("{}: load_from: '{}{}' is {}, expected 0 to 2^63 - 2", name_, prefix, key, t.i64[0]));
    }
  }
  // The names any normalization layer of PyTorch's has: under this layer's prefix, one it lacks is unexpected.
  const std::string layer_keys[] = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"};
  for (const std::string& key : layer_keys) {
    if (state.count(prefix + key) && std::find(expected.begin(), expected.end(), key) == expected.end()) {
      throw Error(fmt::format("{}: load_from: unexpected key '{}{}' ({})", name_, prefix, key, contents_.options));
    }
  }

  if (contents_.has_weight) weight_ = state.at(prefix + "weight").f32;
  if (contents_.has_bias) bias_ = state.at(prefix + "bias").f32;
  if (contents_.has_running_stats) {
    running_mean_ = state.at(prefix + "running_mean").f32;
    running_var_ = state.at(prefix + "running_var").f32;
    num_batches_tracked_ = state.at(prefix + "num_batches_tracked").i64.at(0);
  }
}

}  // namespace fusednorm
