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

StateTensor floats_of_shape(const std::vector<float>& values, const std::vector<int64_t>& shape, DType dtype) {
  const auto state_dtype = dtype == DType::bfloat16  ? StateTensor::DType::bfloat16
                           : dtype == DType::float16 ? StateTensor::DType::float16
                                                     : StateTensor::DType::float32;
  StateTensor tensor = StateTensor::from_floats(values, state_dtype);
  tensor.shape = shape;
  return tensor;
}

// A 16-bit dtype's bits of a value (rounded to nearest even), and the value of its bits.
uint16_t bits_of(DType dtype, float value) {
  return dtype == DType::bfloat16 ? to_bfloat16(value).bits : to_float16(value).bits;
}
float value_of(DType dtype, uint16_t bits) {
  return dtype == DType::bfloat16 ? to_float(bfloat16{bits}) : to_float(float16{bits});
}
float rounded(DType dtype, float value) {
  return dtype == DType::float32 ? value : value_of(dtype, bits_of(dtype, value));
}
}  // namespace

NormLayer::NormLayer(std::string name, detail::LayerContents contents, Epilogue epilogue)
    : name_(std::move(name)), contents_(std::move(contents)), epilogue_(epilogue) {
  if (!parse_kind<DType>(fusednorm::name(contents_.dtype))) {
    throw Error(fmt::format("{}: dtype is {}, expected float32, bfloat16 or float16", name_,
                            static_cast<int>(contents_.dtype)));
  }
  const size_t features = element_count(contents_.feature_shape);
  const bool half = contents_.dtype != DType::float32;
  if (contents_.has_weight) {
    weight_.assign(features, 1.0f);
    grad_weight_.assign(features, 0.0f);
    if (half) {
      weight_bits_.resize(features);
      batch_grad_weight_bits_.resize(features);
    } else {
      batch_grad_weight_.resize(features);
    }
  }
  if (contents_.has_bias) {
    bias_.assign(features, 0.0f);
    grad_bias_.assign(features, 0.0f);
    if (half) {
      bias_bits_.resize(features);
      batch_grad_bias_bits_.resize(features);
    } else {
      batch_grad_bias_.resize(features);
    }
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
// A 16-bit layer's view is of its values rounded into `bits` (a few thousand at most, every call).
std::optional<TensorView> NormLayer::parameter_view(std::vector<float>& values, std::vector<uint16_t>& bits,
                                                    const char* what) const {
  const size_t features = element_count(contents_.feature_shape);
  if (values.size() != features) {
    throw Error(fmt::format("{}: {} has {} values, expected {} (the layer's feature shape {}); resize it back", name_,
                            what, values.size(), features, shape_string(contents_.feature_shape)));
  }
  const DType dtype = contents_.dtype;
  if (dtype == DType::float32) return TensorView(values.data(), contents_.feature_shape);
  for (size_t i = 0; i < features; i++) bits[i] = bits_of(dtype, values[i]);
  return TensorView({bits.data(), dtype}, contents_.feature_shape);
}

std::optional<TensorView> NormLayer::weight_view() {
  if (!contents_.has_weight) return std::nullopt;
  return parameter_view(weight_, weight_bits_, "weight");
}

std::optional<TensorView> NormLayer::bias_view() {
  if (!contents_.has_bias) return std::nullopt;
  return parameter_view(bias_, bias_bits_, "bias");
}

// grad += the batch's gradient, in the parameters' dtype.
void NormLayer::accumulate(std::vector<float>& grad, const std::vector<float>& batch,
                           const std::vector<uint16_t>& batch_bits) const {
  const DType dtype = contents_.dtype;
  if (dtype == DType::float32) {
    for (size_t i = 0; i < batch.size(); i++) grad[i] += batch[i];
  } else {
    for (size_t i = 0; i < batch_bits.size(); i++) grad[i] = rounded(dtype, grad[i] + value_of(dtype, batch_bits[i]));
  }
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
  // The functional forwards accept no overlap of y and x but the same view: y.data_ptr() == x.data_ptr() is in place.
  saved.input_overwritten = y.data_ptr() == x.data_ptr();
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
  const DType dtype = contents_.dtype;
  auto batch_view = [&](std::vector<float>& floats, std::vector<uint16_t>& bits) {
    return dtype == DType::float32 ? TensorView(floats.data(), contents_.feature_shape)
                                   : TensorView({bits.data(), dtype}, contents_.feature_shape);
  };
  ParameterGrads grads;
  if (contents_.has_weight) grads.weight = batch_view(batch_grad_weight_, batch_grad_weight_bits_);
  if (contents_.has_bias) grads.bias = batch_view(batch_grad_bias_, batch_grad_bias_bits_);
  run_backward(saved_, dy, dx, dz, grads);

  accumulate(grad_weight_, batch_grad_weight_, batch_grad_weight_bits_);
  accumulate(grad_bias_, batch_grad_bias_, batch_grad_bias_bits_);
  has_saved_ = false;
}

void NormLayer::copy_state_from(const NormLayer& other) {
  weight_ = other.weight_;
  bias_ = other.bias_;
  grad_weight_ = other.grad_weight_;
  grad_bias_ = other.grad_bias_;
  running_mean_ = other.running_mean_;
  running_var_ = other.running_var_;
  num_batches_tracked_ = other.num_batches_tracked_;
  training_ = other.training_;
}

void NormLayer::zero_grad() {
  std::fill(grad_weight_.begin(), grad_weight_.end(), 0.0f);
  std::fill(grad_bias_.begin(), grad_bias_.end(), 0.0f);
}

void NormLayer::save_to(StateDict& state, const std::string& prefix) const {
  const std::vector<int64_t>& shape = contents_.feature_shape;
  if (contents_.has_weight) state[prefix + "weight"] = floats_of_shape(weight_, shape, contents_.dtype);
  if (contents_.has_bias) state[prefix + "bias"] = floats_of_shape(bias_, shape, contents_.dtype);
  if (contents_.has_running_stats) {
    state[prefix + "running_mean"] = floats_of_shape(running_mean_, shape, DType::float32);
    state[prefix + "running_var"] = floats_of_shape(running_var_, shape, DType::float32);
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
    const std::vector<int64_t> want_shape = scalar ? std::vector<int64_t>{} : contents_.feature_shape;
    if (t.is_floating() == scalar || t.shape != want_shape) {
      throw Error(fmt::format("{}: load_from: '{}{}' is {} {}, expected {} {}", name_, prefix, key, to_string(t.dtype),
                              shape_string(t.shape),
                              scalar            ? "int64"
                              : t.is_floating() ? to_string(t.dtype)
                                                : "float32, bfloat16 or float16",
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

  auto parameter = [&](const char* key) {
    std::vector<float> values = state.at(prefix + key).f32;
    for (float& v : values) v = rounded(contents_.dtype, v);
    return values;
  };
  if (contents_.has_weight) weight_ = parameter("weight");
  if (contents_.has_bias) bias_ = parameter("bias");
  if (contents_.has_running_stats) {
    running_mean_ = state.at(prefix + "running_mean").f32;
    running_var_ = state.at(prefix + "running_var").f32;
    num_batches_tracked_ = state.at(prefix + "num_batches_tracked").i64.at(0);
  }
}

}  // namespace fusednorm
