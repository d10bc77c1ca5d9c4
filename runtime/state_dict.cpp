// safetensors reading and writing, for the dtypes layer state uses (F32, I64). The format: an 8-byte
// little-endian header length N, N bytes of JSON, then the tensors' bytes at the header's data_offsets.
#include "fusednorm/state_dict.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <variant>

#include "fusednorm/error.h"
#include "runtime/checks.h"

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

int64_t StateTensor::numel() const { return detail::checked_product("StateTensor", "shape", shape); }

namespace {

static_assert(sizeof(float) == 4 && sizeof(int64_t) == 8, "safetensors F32 / I64");

// The subset of JSON a safetensors header uses: objects, arrays, strings, integers.
struct Json {
  using Object = std::vector<std::pair<std::string, Json>>;
  std::variant<std::monostate, std::string, int64_t, std::vector<Json>, Object> value;
};

// Appends code point `c` in UTF-8.
void append_utf8(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xc0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xe0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  }
}

// A header comes from a file, so anything malformed, including JSON of the wrong type where the format has an
// object, a string or an integer, must end as fusednorm::Error naming the path, never as another exception or
// a crash (deep nesting would exhaust the stack).
class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  Json parse_document() {
    Json j = parse(0);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters after the header object");
    return j;
  }

 private:
  // A safetensors header nests three levels (header, entry, shape); this leaves room for __metadata__.
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("load_state_dict: '{}': malformed safetensors header at byte {}: {}", path_, pos_, what));
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
  uint32_t parse_hex4() {
    if (text_.size() - pos_ < 4) fail("unterminated \\u escape");
    uint32_t value = 0;
    for (int i = 0; i < 4; i++) {
      const char h = text_[pos_++];
      const int digit = std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                        : h >= 'a' && h <= 'f'                      ? h - 'a' + 10
                        : h >= 'A' && h <= 'F'                      ? h - 'A' + 10
                                                                    : -1;
      if (digit < 0) fail("expected 4 hexadecimal digits after \\u");
      value = value * 16 + static_cast<uint32_t>(digit);
    }
    return value;
  }
  std::string parse_string() {
    expect('"');
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      const char ch = text_[pos_++];
      if (ch != '\\') {
        s += ch;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/': s += e; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          uint32_t c = parse_hex4();
          // A code point above U+FFFF comes as a surrogate pair.
          if (c >= 0xd800 && c < 0xdc00 && text_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            const uint32_t low = parse_hex4();
            if (low < 0xdc00 || low >= 0xe000) fail("expected a low surrogate after a high one");
            c = 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00);
          }
          append_utf8(s, c);
          break;
        }
        default: pos_--; fail(fmt::format("unknown escape '\\{}'", e));
      }
    }
    if (pos_ >= text_.size()) fail("unterminated string");
    pos_++;
    return s;
  }
  // JSON integers (the format's offsets and extents); a fraction or an exponent is not one.
  int64_t parse_integer() {
    const bool negative = text_[pos_] == '-';
    if (negative) pos_++;
    if (pos_ >= text_.size() || !std::isdigit(static_cast<unsigned char>(text_[pos_]))) fail("expected a digit");
    uint64_t magnitude = 0;
    const uint64_t limit = negative ? uint64_t{1} << 63 : (uint64_t{1} << 63) - 1;
    while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      const uint64_t digit = static_cast<uint64_t>(text_[pos_] - '0');
      if (magnitude > (limit - digit) / 10) fail("integer out of range (more than 64 bits)");
      magnitude = magnitude * 10 + digit;
      pos_++;
    }
    return negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
  }
  Json parse(int depth) {
    if (depth > kMaxDepth) fail(fmt::format("nested deeper than {} levels", kMaxDepth));
    char c = peek();
    if (c == '{') {
      pos_++;
      Json::Object members;
      if (peek() == '}') {
        pos_++;
        return {members};
      }
      while (true) {
        std::string key = parse_string();
        expect(':');
        members.emplace_back(std::move(key), parse(depth + 1));
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
        items.push_back(parse(depth + 1));
        if (peek() == ',') {
          pos_++;
          continue;
        }
        expect(']');
        return {items};
      }
    }
    if (c == '"') return {parse_string()};
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) return {parse_integer()};
    fail(fmt::format("unexpected character '{}'", c));
  }

  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
};

const Json* member(const Json::Object& object, const std::string& key) {
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

// The integers of a JSON array, or nullopt when it is not an array of integers.
std::optional<std::vector<int64_t>> integers(const Json& j) {
  const auto* items = std::get_if<std::vector<Json>>(&j.value);
  if (!items) return std::nullopt;
  std::vector<int64_t> result;
  for (const Json& item : *items) {
    const auto* value = std::get_if<int64_t>(&item.value);
    if (!value) return std::nullopt;
    result.push_back(*value);
  }
  return result;
}

// A JSON string as the format writes names: quotes, backslashes and control characters escaped.
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char ch : text) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
    } else {
      out += ch;
    }
  }
  return out + "\"";
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
    header += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", json_string(name),
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
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw Error(fmt::format("load_state_dict: '{}' is a directory, expected a safetensors file", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("load_state_dict: cannot open '{}'", path));
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("load_state_dict: cannot read '{}'", path));
  uint64_t length = 0;
  if (file.size() < 8)
    throw Error(fmt::format("load_state_dict: '{}' has {} bytes, expected at least 8", path, file.size()));
  std::memcpy(&length, file.data(), 8);
  if (length > file.size() - 8) {
    throw Error(fmt::format("load_state_dict: '{}' declares a {}-byte header, but the file has {} bytes", path, length,
                            file.size()));
  }
  const std::string header = file.substr(8, length);
  const size_t data_begin = 8 + length;
  Json root = JsonParser(header, path).parse_document();
  const auto* entries = std::get_if<Json::Object>(&root.value);
  if (!entries) throw Error(fmt::format("load_state_dict: '{}': the header is not a JSON object", path));
  StateDict state;
  for (const auto& [name, entry] : *entries) {
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& what) {
      return Error(fmt::format("load_state_dict: '{}': tensor '{}' {}", path, name, what));
    };
    const auto* fields = std::get_if<Json::Object>(&entry.value);
    if (!fields) throw bad("is not an object");
    if (state.count(name)) throw bad("appears twice in the header");
    const Json* dtype = member(*fields, "dtype");
    const Json* shape = member(*fields, "shape");
    const Json* offsets = member(*fields, "data_offsets");
    if (!dtype || !shape || !offsets) throw bad("lacks dtype, shape or data_offsets");
    StateTensor t;
    const auto* dtype_name = std::get_if<std::string>(&dtype->value);
    if (!dtype_name) throw bad("has a dtype that is not a string");
    if (*dtype_name == "F32") {
      t.dtype = StateTensor::DType::float32;
    } else if (*dtype_name == "I64") {
      t.dtype = StateTensor::DType::int64;
    } else {
      throw bad(fmt::format("has dtype '{}', expected F32 or I64", *dtype_name));
    }
    std::optional<std::vector<int64_t>> extents = integers(*shape);
    if (!extents) throw bad("has a shape that is not an array of integers");
    t.shape = std::move(*extents);
    // The element count must fit the file: anything near 2^56 elements is malformed. Checking each product
    // against that keeps it, and its size in bytes, from overflowing.
    int64_t numel = 1;
    for (int64_t extent : t.shape) {
      if (extent < 0) throw bad(fmt::format("has shape [{}], expected extents >= 0", fmt::join(t.shape, ", ")));
      if (extent != 0 && numel > (int64_t{1} << 56) / extent) {
        throw bad(fmt::format("has shape [{}]: too many elements", fmt::join(t.shape, ", ")));
      }
      numel *= extent;
    }
    std::optional<std::vector<int64_t>> range = integers(*offsets);
    if (!range) throw bad("has data_offsets that are not two integers");
    if (range->size() != 2) throw bad("has data_offsets without two entries");
    const int64_t begin = (*range)[0], end = (*range)[1];
    const int64_t element = t.dtype == StateTensor::DType::float32 ? 4 : 8;
    if (begin < 0 || end < begin || static_cast<uint64_t>(end) > file.size() - data_begin ||
        end - begin != numel * element) {
      throw bad(fmt::format("has data_offsets [{}, {}], expected {} bytes within the {}-byte data section", begin, end,
                            numel * element, file.size() - data_begin));
    }
    const char* p = file.data() + data_begin + begin;
    // A tensor of no elements has no data: nothing to copy (memcpy from or to null is undefined even for 0 bytes).
    if (t.dtype == StateTensor::DType::float32) {
      t.f32.resize(static_cast<size_t>(numel));
      if (numel) std::memcpy(t.f32.data(), p, static_cast<size_t>(end - begin));
    } else {
      t.i64.resize(static_cast<size_t>(numel));
      if (numel) std::memcpy(t.i64.data(), p, static_cast<size_t>(end - begin));
    }
    state.emplace(name, std::move(t));
  }
  return state;
}

}  // namespace fusednorm
