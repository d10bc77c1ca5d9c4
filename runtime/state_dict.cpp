// safetensors reading and writing, for the dtypes layer state uses (F32, BF16, F16, I64). The format: an 8-byte
// little-endian header length N, N bytes of JSON, then the tensors' bytes at the header's data_offsets.
#include "fusednorm/state_dict.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>

#include "fusednorm/error.h"
#include "fusednorm/tensor.h"
#include "runtime/checks.h"

namespace fusednorm {

namespace {
// The 16-bit dtypes' bits of a float32 value (rounded to nearest even), and back (exact).
uint16_t bits_of(StateTensor::DType dtype, float value) {
  return dtype == StateTensor::DType::bfloat16 ? to_bfloat16(value).bits : to_float16(value).bits;
}
float value_of(StateTensor::DType dtype, uint16_t bits) {
  return dtype == StateTensor::DType::bfloat16 ? to_float(bfloat16{bits}) : to_float(float16{bits});
}
}  // namespace

StateTensor StateTensor::from_floats(std::vector<float> values, DType dtype) {
  if (dtype == DType::int64) throw Error("StateTensor::from_floats: dtype is int64, expected a floating dtype");
  StateTensor t;
  t.dtype = dtype;
  t.shape = {static_cast<int64_t>(values.size())};
  t.f32 = std::move(values);
  if (dtype != DType::float32) {
    for (float& v : t.f32) v = value_of(dtype, bits_of(dtype, v));
  }
  return t;
}

const char* to_string(StateTensor::DType dtype) {
  switch (dtype) {
    case StateTensor::DType::float32: return "float32";
    case StateTensor::DType::int64: return "int64";
    case StateTensor::DType::bfloat16: return "bfloat16";
    case StateTensor::DType::float16: return "float16";
  }
  return "?";
}

StateTensor StateTensor::scalar_int64(int64_t value) {
  StateTensor t;
  t.dtype = DType::int64;
  t.i64 = {value};
  return t;
}

int64_t StateTensor::numel() const { return detail::checked_product("StateTensor", "shape", shape); }

namespace {

static_assert(sizeof(float) == 4 && sizeof(int64_t) == 8, "safetensors F32 / I64");

using Json = nlohmann::json;

// The reference reader's limits (huggingface/safetensors): a header of at most 100 MB; and ours, JSON nested at
// most this deep (a safetensors header nests three levels: header, entry, shape).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxDepth = 64;

// The header's JSON, refusing what the reference reader (serde_json into a map and a struct) refuses: invalid
// UTF-8, lone surrogates, raw control characters, leading zeros, trailing characters, and a key twice in one
// object (nlohmann keeps the last; the first would have won before).
Json parse_header(const std::string& text, const std::string& path) {
  auto fail = [&](const std::string& what) {
    return Error(fmt::format("load_state_dict: '{}': malformed safetensors header: {}", path, what));
  };
  std::vector<std::set<std::string>> keys;  // of each object being parsed
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth > kMaxDepth) throw fail(fmt::format("nested deeper than {} levels", kMaxDepth));
    if (event == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      keys.pop_back();
    } else if (event == Json::parse_event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(key).second) throw fail(fmt::format("the key '{}' appears twice in one object", key));
    }
    return true;
  };
  try {
    return Json::parse(text, check);
  } catch (const Json::exception& e) {
    throw fail(e.what());
  }
}

// The tensor dtypes of the format read and written.
struct FileDType {
  const char* name;
  StateTensor::DType dtype;
  uint64_t bytes;
};
constexpr FileDType kFileDTypes[] = {{"F32", StateTensor::DType::float32, 4},
                                     {"F16", StateTensor::DType::float16, 2},
                                     {"BF16", StateTensor::DType::bfloat16, 2},
                                     {"I64", StateTensor::DType::int64, 8}};

const FileDType& file_dtype(StateTensor::DType dtype) {
  return *std::find_if(std::begin(kFileDTypes), std::end(kFileDTypes),
                       [&](const FileDType& type) { return type.dtype == dtype; });
}

uint16_t little_endian_16(const char* p) {
  return static_cast<uint16_t>(static_cast<unsigned char>(p[0]) | static_cast<unsigned char>(p[1]) << 8);
}

// A JSON array of non-negative integers that fit 64 bits (serde's Vec<usize>), or nullopt.
std::optional<std::vector<uint64_t>> unsigned_integers(const Json& j) {
  if (!j.is_array()) return std::nullopt;
  std::vector<uint64_t> result;
  for (const Json& item : j) {
    if (!item.is_number_unsigned()) return std::nullopt;
    result.push_back(item.get<uint64_t>());
  }
  return result;
}

// One tensor entry of the header, checked on its own; the offsets against the others afterwards.
struct Entry {
  std::string name;
  const FileDType* type;
  std::vector<int64_t> shape;
  uint64_t numel, begin, end;
};

Entry read_entry(const std::string& path, const std::string& name, const Json& fields) {
  auto bad = [&](const std::string& what) {
    return Error(fmt::format("load_state_dict: '{}': tensor '{}' {}", path, name, what));
  };
  if (!fields.is_object()) throw bad("is not an object");
  const auto dtype = fields.find("dtype"), shape = fields.find("shape"), offsets = fields.find("data_offsets");
  if (dtype == fields.end() || shape == fields.end() || offsets == fields.end()) {
    throw bad("lacks dtype, shape or data_offsets");
  }
  if (!dtype->is_string()) throw bad("has a dtype that is not a string");
  Entry entry{name, nullptr, {}, 1, 0, 0};
  for (const FileDType& type : kFileDTypes) {
    if (dtype->get_ref<const std::string&>() == type.name) entry.type = &type;
  }
  if (!entry.type)
    throw bad(fmt::format("has dtype '{}', expected F32, F16, BF16 or I64", dtype->get_ref<const std::string&>()));
  const std::optional<std::vector<uint64_t>> extents = unsigned_integers(*shape);
  if (!extents) throw bad(fmt::format("has shape {}, expected an array of integers >= 0", shape->dump()));
  // The element count, and its bytes, must fit 64 bits (the reference's ValidationOverflow); the data section
  // bounds them further below.
  uint64_t bytes = entry.type->bytes;
  for (uint64_t extent : *extents) {
    if (extent > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(entry.numel, extent, &entry.numel) ||
        __builtin_mul_overflow(bytes, extent, &bytes)) {
      throw bad(fmt::format("has shape {}: too many elements", shape->dump()));
    }
    entry.shape.push_back(static_cast<int64_t>(extent));
  }
  const std::optional<std::vector<uint64_t>> range = unsigned_integers(*offsets);
  if (!range || range->size() != 2) {
    throw bad(fmt::format("has data_offsets {}, expected two integers >= 0", offsets->dump()));
  }
  entry.begin = (*range)[0];
  entry.end = (*range)[1];
  if (entry.end < entry.begin || entry.end - entry.begin != bytes) {
    throw bad(fmt::format("has data_offsets [{}, {}], expected {} bytes for its dtype and shape", entry.begin,
                          entry.end, bytes));
  }
  return entry;
}

StateTensor read_tensor(const Entry& entry, const char* p) {
  StateTensor t;
  t.dtype = entry.type->dtype;
  t.shape = entry.shape;
  const auto n = static_cast<size_t>(entry.numel);
  // A tensor of no elements has no data: nothing to copy (memcpy from or to null is undefined even for 0 bytes).
  if (t.dtype == StateTensor::DType::int64) {
    t.i64.resize(n);
    if (n) std::memcpy(t.i64.data(), p, n * 8);  // x86-64 and arm-64 are little-endian, as the format is
    return t;
  }
  t.f32.resize(n);
  if (entry.type->bytes == 4) {
    if (n) std::memcpy(t.f32.data(), p, n * 4);
  } else {
    for (size_t i = 0; i < n; i++) t.f32[i] = value_of(t.dtype, little_endian_16(p + 2 * i));
  }
  return t;
}

}  // namespace

void save_state_dict(const StateDict& state, const std::string& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::string data;
  for (const auto& [name, t] : state) {
    const FileDType& type = file_dtype(t.dtype);
    const size_t values = t.is_floating() ? t.f32.size() : t.i64.size();
    if (static_cast<int64_t>(values) != t.numel()) {
      throw Error(fmt::format("save_state_dict: '{}' has {} values, expected {} (shape {})", name, values, t.numel(),
                              fmt::join(t.shape, ", ")));
    }
    const size_t bytes = values * type.bytes;
    header[name] = {{"dtype", type.name}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + bytes}}};
    // x86-64 and arm-64 are little-endian, as the format is. 16-bit values are rounded to nearest even (exact for
    // those from_floats or load_state_dict made).
    if (t.dtype == StateTensor::DType::float32) {
      if (bytes) data.append(reinterpret_cast<const char*>(t.f32.data()), bytes);
    } else if (t.dtype == StateTensor::DType::int64) {
      if (bytes) data.append(reinterpret_cast<const char*>(t.i64.data()), bytes);
    } else {
      for (float v : t.f32) {
        const uint16_t bits = bits_of(t.dtype, v);
        data.append(reinterpret_cast<const char*>(&bits), 2);
      }
    }
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::type_error& e) {
    throw Error(fmt::format("save_state_dict: '{}': a tensor name is not valid UTF-8 ({})", path, e.what()));
  }
  while (text.size() % 8) text += ' ';  // the format aligns the data section to 8 bytes
  uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw Error(fmt::format("save_state_dict: cannot write '{}'", path), Error::Kind::io);
}

StateDict load_state_dict(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw Error(fmt::format("load_state_dict: '{}' is a directory, expected a safetensors file", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("load_state_dict: cannot open '{}'", path), Error::Kind::io);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("load_state_dict: cannot read '{}'", path), Error::Kind::io);
  uint64_t length = 0;
  if (file.size() < 8)
    throw Error(fmt::format("load_state_dict: '{}' has {} bytes, expected at least 8", path, file.size()));
  std::memcpy(&length, file.data(), 8);
  if (length > file.size() - 8 || length > kMaxHeaderBytes) {
    throw Error(
        fmt::format("load_state_dict: '{}' declares a {}-byte header, but the file has {} bytes (and the "
                    "format allows at most {})",
                    path, length, file.size(), kMaxHeaderBytes));
  }
  const Json root = parse_header(file.substr(8, length), path);
  if (!root.is_object()) throw Error(fmt::format("load_state_dict: '{}': the header is not a JSON object", path));
  std::vector<Entry> entries;
  for (const auto& [name, fields] : root.items()) {
    if (name != "__metadata__") {
      entries.push_back(read_entry(path, name, fields));
      continue;
    }
    // Free-form text: a map of strings to strings, or null.
    const bool strings =
        fields.is_null() ||
        (fields.is_object() && std::all_of(fields.begin(), fields.end(), [](const Json& v) { return v.is_string(); }));
    if (!strings) {
      throw Error(
          fmt::format("load_state_dict: '{}': __metadata__ is {}, expected an object of strings", path, fields.dump()));
    }
  }
  // The data section holds the tensors back to back in the order of their offsets, from its first byte to its
  // last: no gap, no overlap, nothing after (the reference's InvalidOffset and MetadataIncompleteBuffer).
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  const uint64_t data_bytes = file.size() - 8 - length;
  uint64_t next = 0;
  for (const Entry& entry : entries) {
    if (entry.begin != next) {
      throw Error(
          fmt::format("load_state_dict: '{}': tensor '{}' has data_offsets [{}, {}], expected them to begin "
                      "at {}, where the tensor before it ends (no gaps or overlaps)",
                      path, entry.name, entry.begin, entry.end, next));
    }
    next = entry.end;
  }
  if (next != data_bytes) {
    throw Error(
        fmt::format("load_state_dict: '{}': the tensors' data ends at byte {} of the {}-byte data section, "
                    "expected it to fill the section",
                    path, next, data_bytes));
  }
  StateDict state;
  for (const Entry& entry : entries)
    state.emplace(entry.name, read_tensor(entry, file.data() + 8 + length + entry.begin));
  return state;
}

}  // namespace fusednorm
