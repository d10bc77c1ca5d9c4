// safetensors reading and writing, for the dtypes layer state uses (F32, I64). The format: an 8-byte
// little-endian header length N, N bytes of JSON, then the tensors' bytes at the header's data_offsets.
#include "fusednorm/state_dict.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <variant>

#include "fusednorm/error.h"

namespace fusednorm {

StateTensor StateTensor::from_floats(std::vector<float> values) {
  StateTensor t;
  t.shape = {static_cast<int64_t>(values.size())};
  t.f32 = std::move(values);
  return t;
}

StateTensor StateTensor::scalar_int64(int64_t value) {
  StateTensor t;
  t.dtype = DType::int64;
  t.i64 = {value};
  return t;
}

int64_t StateTensor::numel() const {
  int64_t n = 1;
  for (int64_t extent : shape) n *= extent;
  return n;
}

namespace {

static_assert(sizeof(float) == 4 && sizeof(int64_t) == 8, "safetensors F32 / I64");

// The subset of JSON a safetensors header uses: objects, arrays, strings, integers.
struct Json {
  std::variant<std::monostate, std::string, int64_t, std::vector<Json>, std::vector<std::pair<std::string, Json>>> value;
};

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  Json parse_document() {
    Json j = parse();
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters after the header object");
    return j;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("load_state_dict: {}: malformed safetensors header at byte {}: {}", path_, pos_, what));
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) pos_++;
  }
  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c));
    pos_++;
  }
  std::string parse_string() {
    expect('"');
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      if (text_[pos_] == '\\') {
        if (++pos_ >= text_.size()) break;
        char e = text_[pos_];
        s += e == 'n' ? '\n' : e == 't' ? '\t' : e;  // names in state dicts need no \u escapes
      } else {
        s += text_[pos_];
      }
      pos_++;
    }
    if (pos_ >= text_.size()) fail("unterminated string");
    pos_++;
    return s;
  }
  Json parse() {
    char c = peek();
    if (c == '{') {
      pos_++;
      std::vector<std::pair<std::string, Json>> members;
      if (peek() == '}') {
        pos_++;
        return {members};
      }
      while (true) {
        std::string key = parse_string();
        expect(':');
        members.emplace_back(std::move(key), parse());
        if (peek() == ',') {
          pos_++;
          continue;
        }
        expect('}');
        return {members};
      }
    }
    if (c == '[') {
      pos_++;
      std::vector<Json> items;
      if (peek() == ']') {
        pos_++;
        return {items};
      }
      while (true) {
        items.push_back(parse());
        if (peek() == ',') {
          pos_++;
          continue;
        }
        expect(']');
        return {items};
      }
    }
    if (c == '"') return {parse_string()};
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      size_t used = 0;
      int64_t v = std::stoll(text_.substr(pos_, 24), &used);
      pos_ += used;
      return {v};
    }
    fail(fmt::format("unexpected character '{}'", c));
  }

  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
};

const Json* member(const Json& object, const std::string& key) {
  for (const auto& [k, v] : std::get<std::vector<std::pair<std::string, Json>>>(object.value)) {
    if (k == key) return &v;
  }
  return nullptr;
}

}  // namespace

void save_state_dict(const StateDict& state, const std::string& path) {
  std::string header = "{";
  std::string data;
  for (const auto& [name, t] : state) {
    const bool f32 = t.dtype == StateTensor::DType::float32;
    const size_t bytes = static_cast<size_t>(t.numel()) * (f32 ? 4 : 8);
    if ((f32 ? t.f32.size() * 4 : t.i64.size() * 8) != bytes) {
      throw Error(fmt::format("save_state_dict: '{}' has {} values, expected {} (shape {})", name,
                              f32 ? t.f32.size() : t.i64.size(), t.numel(), fmt::join(t.shape, ", ")));
    }
    if (header.size() > 1) header += ",";
    header += fmt::format("\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", name,
                          f32 ? "F32" : "I64", fmt::join(t.shape, ","), data.size(), data.size() + bytes);
    const char* p = f32 ? reinterpret_cast<const char*>(t.f32.data()) : reinterpret_cast<const char*>(t.i64.data());
    data.append(p, bytes);  // x86-64 and arm-64 are little-endian, as the format is
  }
  header += "}";
  while (header.size() % 8) header += ' ';  // the format aligns the data section to 8 bytes
  uint64_t length = header.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw Error(fmt::format("save_state_dict: cannot write '{}'", path));
}

StateDict load_state_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("load_state_dict: cannot open '{}'", path));
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t length = 0;
  if (file.size() < 8) throw Error(fmt::format("load_state_dict: '{}' has {} bytes, expected at least 8", path, file.size()));
  std::memcpy(&length, file.data(), 8);
  if (length > file.size() - 8) {
    throw Error(fmt::format("load_state_dict: '{}' declares a {}-byte header, but the file has {} bytes", path, length,
                            file.size()));
  }
  const std::string header = file.substr(8, length);
  const size_t data_begin = 8 + length;
  Json root = JsonParser(header, path).parse_document();
  if (!std::holds_alternative<std::vector<std::pair<std::string, Json>>>(root.value)) {
    throw Error(fmt::format("load_state_dict: '{}': the header is not a JSON object", path));
  }
  StateDict state;
  for (const auto& [name, entry] : std::get<std::vector<std::pair<std::string, Json>>>(root.value)) {
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& what) {
      return Error(fmt::format("load_state_dict: '{}': tensor '{}' {}", path, name, what));
    };
    if (!std::holds_alternative<std::vector<std::pair<std::string, Json>>>(entry.value)) throw bad("is not an object");
    const Json* dtype = member(entry, "dtype");
    const Json* shape = member(entry, "shape");
    const Json* offsets = member(entry, "data_offsets");
    if (!dtype || !shape || !offsets) throw bad("lacks dtype, shape or data_offsets");
    StateTensor t;
    const std::string& dtype_name = std::get<std::string>(dtype->value);
    if (dtype_name == "F32") t.dtype = StateTensor::DType::float32;
    else if (dtype_name == "I64") t.dtype = StateTensor::DType::int64;
    else throw bad(fmt::format("has dtype '{}', expected F32 or I64", dtype_name));
    for (const Json& extent : std::get<std::vector<Json>>(shape->value)) t.shape.push_back(std::get<int64_t>(extent.value));
    const auto& range = std::get<std::vector<Json>>(offsets->value);
    if (range.size() != 2) throw bad("has data_offsets without two entries");
    const int64_t begin = std::get<int64_t>(range[0].value), end = std::get<int64_t>(range[1].value);
    const int64_t element = t.dtype == StateTensor::DType::float32 ? 4 : 8;
    if (begin < 0 || end < begin || static_cast<uint64_t>(end) > file.size() - data_begin || end - begin != t.numel() * element) {
      throw bad(fmt::format("has data_offsets [{}, {}], expected {} bytes within the {}-byte data section", begin, end,
                            t.numel() * element, file.size() - data_begin));
    }
    const char* p = file.data() + data_begin + begin;
    if (t.dtype == StateTensor::DType::float32) {
      t.f32.resize(static_cast<size_t>(t.numel()));
      std::memcpy(t.f32.data(), p, static_cast<size_t>(end - begin));
    } else {
      t.i64.resize(static_cast<size_t>(t.numel()));
      std::memcpy(t.i64.data(), p, static_cast<size_t>(end - begin));
    }
    state.emplace(name, std::move(t));
  }
  return state;
}

}  // namespace fusednorm
