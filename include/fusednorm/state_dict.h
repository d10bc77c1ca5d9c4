#pragma once
// Layer state under PyTorch's state_dict names ("weight", "bias", "running_mean", "running_var",
// "num_batches_tracked", with a "prefix." per layer), saved in the safetensors format: an 8-byte little-endian
// header length, a JSON header {"name": {"dtype": "F32"|"BF16"|"F16"|"I64", "shape": [...], "data_offsets":
// [begin, end]}}, then the raw little-endian data. Python reads it with safetensors.torch.load_file(path), and a
// PyTorch model.state_dict() saved with safetensors.torch.save_file loads here, each tensor keeping its dtype.
// Loading is as strict as the reference reader
// (huggingface/safetensors): valid UTF-8 JSON without a key twice in one object, non-negative integer shapes and
// offsets, the tensors' bytes back to back filling the data section, a header of at most 100 MB.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fusednorm {

struct StateTensor {
  // float32, bfloat16 and float16 are the floating dtypes (safetensors F32, BF16, F16).
  enum class DType { float32, int64, bfloat16, float16 };
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  std::vector<float> f32;    // when floating: the values, widened to float32 (exactly) where the dtype is 16-bit
  std::vector<int64_t> i64;  // when int64

  // A 1-d tensor of `values`, rounded to `dtype` (to nearest even) where it is 16-bit.
  static StateTensor from_floats(std::vector<float> values, DType dtype = DType::float32);
  static StateTensor scalar_int64(int64_t value);
  int64_t numel() const;
  bool is_floating() const { return dtype != DType::int64; }
};
// "float32", "int64", "bfloat16", "float16".
const char* to_string(StateTensor::DType dtype);

using StateDict = std::map<std::string, StateTensor>;

// Throw fusednorm::Error naming the path and what is wrong (I/O, malformed header, unsupported dtype).
void save_state_dict(const StateDict& state, const std::string& path);
StateDict load_state_dict(const std::string& path);

}  // namespace fusednorm
