#pragma once
// Layer state under PyTorch's state_dict names ("weight", "bias", "running_mean", "running_var",
// "num_batches_tracked", with a "prefix." per layer), saved in the safetensors format: an 8-byte little-endian
// header length, a JSON header {"name": {"dtype": "F32"|"I64", "shape": [...], "data_offsets": [begin, end]}},
// then the raw little-endian data. Python reads it with safetensors.torch.load_file(path), and a PyTorch
// model.state_dict() saved with safetensors.torch.save_file loads here: F32 and I64 tensors as they are, F16 and
// BF16 ones widened to float32 (exactly; saving writes F32). Loading is as strict as the reference reader
// (huggingface/safetensors): valid UTF-8 JSON without a key twice in one object, non-negative integer shapes and
// offsets, the tensors' bytes back to back filling the data section, a header of at most 100 MB.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fusednorm {

struct StateTensor {
  enum class DType { float32, int64 };
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  std::vector<float> f32;  // when float32
  std::vector<int64_t> i64;  // when int64

  static StateTensor from_floats(std::vector<float> values);
  static StateTensor scalar_int64(int64_t value);
  int64_t numel() const;
};

using StateDict = std::map<std::string, StateTensor>;

// Throw fusednorm::Error naming the path and what is wrong (I/O, malformed header, unsupported dtype).
void save_state_dict(const StateDict& state, const std::string& path);
StateDict load_state_dict(const std::string& path);

}  // namespace fusednorm
