#include "runtime/tuning.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <istream>
#include <iterator>
#include <mutex>
#include <ostream>
#include <span>
#include <string_view>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "runtime/plan.h"

namespace fusednorm::detail {

int tensors_like_x(Direction direction, Epilogue epilogue) {
  const bool relu = epilogue == Epilogue::relu || epilogue == Epilogue::add_relu;
  switch (direction) {
    case Direction::statistics: return 1;
    case Direction::backward_reduce: return relu ? 3 : 2;  // x, dy and y
    case Direction::forward_training:
    case Direction::forward_inference: return epilogue == Epilogue::add_relu ? 3 : 2;
    case Direction::backward:
    case Direction::backward_elementwise: break;
  }
  switch (epilogue) {
    case Epilogue::none:
    case Epilogue::silu: return 3;  // SiLU's backward recomputes v from x
    case Epilogue::relu: return 4;
    case Epilogue::add_relu: return 5;
  }
  return 3;
}

int64_t working_set_bytes(Direction direction, Epilogue epilogue, int64_t elements) {
  return tensors_like_x(direction, epilogue) * elements * static_cast<int64_t>(sizeof(float));
}

std::string kernel_name(const KernelVariant& v) {
  const std::string name = v.name;
  const size_t isa = name.rfind(std::string("_") + to_string(v.isa));
  return isa == std::string::npos ? name : name.substr(0, isa);
}

namespace {

constexpr std::string_view kMagic = "fusednorm-tuning";
constexpr std::string_view kVersion = "1";
constexpr std::string_view kHeaderKeys[] = {"machine", "cpu", "date", "halide", "threads"};
constexpr std::string_view kRequiredKeys[] = {"machine", "cpu", "date", "halide"};
constexpr std::string_view kColumns[] = {"kernel", "class", "variant", "ms", "result", "shapes"};

std::string mebibytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 20) && bytes % (int64_t{1} << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= (int64_t{1} << 10) && bytes % (int64_t{1} << 10) == 0) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} bytes", bytes);
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> fields;
  while (true) {
    const size_t tab = line.find('\t');
    fields.push_back(line.substr(0, tab));
    if (tab == std::string_view::npos) return fields;
    line.remove_prefix(tab + 1);
  }
}

std::string joined(std::span<const std::string_view> words, std::string_view separator) {
  std::string text;
  for (std::string_view w : words) text += (text.empty() ? "" : std::string(separator)) + std::string(w);
  return text;
}

const KernelVariant* built_variant(std::string_view name) {
  for (const KernelVariant& v : all_variants()) {
    if (name == v.name) return &v;
  }
  return nullptr;
}

bool is_identifier(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// Reads one table; every message is "<source>:<line>: ...".
class Parser {
 public:
  Parser(std::istream& in, const std::string& source) : in_(in) { table_.source = source; }

  TuningTable parse() {
    enum class Part { magic, header, rows } part = Part::magic;
    std::string line;
    while (std::getline(in_, line)) {
      line_number_++;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.front() == '#') continue;
      const std::vector<std::string_view> fields = split_tabs(line);
      switch (part) {
        case Part::magic:
          if (fields.size() != 2 || fields[0] != kMagic || fields[1] != kVersion) {
            fail(fmt::format("'{}', expected the first line '{}<TAB>{}' (a FusedNorm tuning table, format {})",
                             shorten(line), kMagic, kVersion, kVersion));
          }
          part = Part::header;
          break;
        case Part::header:
          if (fields == std::vector<std::string_view>(std::begin(kColumns), std::end(kColumns))) {
            check_header_complete();
            part = Part::rows;
          } else {
            header_line(fields, line);
          }
          break;
        case Part::rows: row(fields, line); break;
      }
    }
    if (in_.bad()) fail("read error");
    if (part == Part::magic) fail(fmt::format("empty, expected the first line '{}<TAB>{}'", kMagic, kVersion));
    if (part == Part::header) {
      fail(fmt::format("end of file in the header, expected the column line '{}'", joined(kColumns, "<TAB>")));
    }
    table_.index();
    return std::move(table_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("tuning table {}:{}: {}", table_.source, line_number_, what));
  }
  static std::string shorten(std::string_view line) {
    std::string text(line.substr(0, 80));
    std::replace(text.begin(), text.end(), '\t', ' ');
    return line.size() > 80 ? text + "..." : text;
  }

  void header_line(const std::vector<std::string_view>& fields, std::string_view line) {
    const std::string_view key = fields[0];
    if (key == "class") {
      class_line(fields);
      return;
    }
    if (std::find(std::begin(kHeaderKeys), std::end(kHeaderKeys), key) == std::end(kHeaderKeys)) {
      fail(fmt::format("'{}', expected a header line ({}, class) or the column line '{}'", shorten(line),
                       joined(kHeaderKeys, ", "), joined(kColumns, "<TAB>")));
    }
    if (fields.size() != 2) fail(fmt::format("{} has {} fields, expected 2 ({}<TAB>value)", key, fields.size(), key));
    for (const auto& [existing, value] : table_.header) {
      if (existing == key) fail(fmt::format("a second {} line, expected one", key));
    }
    table_.header.emplace_back(key, fields[1]);
  }

  void class_line(const std::vector<std::string_view>& fields) {
    if (fields.size() != 3) {
      fail(fmt::format("class has {} fields, expected 3 (class<TAB>name<TAB>max working-set bytes or -)",
                       fields.size()));
    }
    if (!table_.classes.empty() && table_.classes.back().max_bytes < 0) {
      fail(fmt::format("class {} after the unbounded class {}, expected the unbounded class last", fields[1],
                       table_.classes.back().name));
    }
    if (!is_identifier(fields[1])) {
      fail(fmt::format("class name '{}', expected lower-case letters, digits and _", fields[1]));
    }
    for (const TuningClass& c : table_.classes) {
      if (c.name == fields[1]) fail(fmt::format("class {} declared twice", c.name));
    }
    int64_t bytes = -1;
    if (fields[2] != "-") {
      auto [end, error] = std::from_chars(fields[2].data(), fields[2].data() + fields[2].size(), bytes);
      if (error != std::errc() || end != fields[2].data() + fields[2].size() || bytes <= 0) {
        fail(fmt::format("class {} bound '{}', expected a positive number of bytes, or - for the last class", fields[1],
                         fields[2]));
      }
      if (!table_.classes.empty() && bytes <= table_.classes.back().max_bytes) {
        fail(fmt::format("class {} bound {}, expected more than class {}'s {}", fields[1], bytes,
                         table_.classes.back().name, table_.classes.back().max_bytes));
      }
    }
    table_.classes.push_back({std::string(fields[1]), bytes});
  }

  void check_header_complete() const {
    for (std::string_view key : kRequiredKeys) {
      const bool found = std::any_of(table_.header.begin(), table_.header.end(),
                                     [&](const auto& entry) { return entry.first == key; });
      if (!found)
        fail(fmt::format("the column line before a {} line, expected the header to name {}", key,
                         joined(kRequiredKeys, ", ")));
    }
    if (table_.classes.empty()) fail("the column line before any class line, expected at least one class");
    if (table_.classes.back().max_bytes >= 0) {
      fail(fmt::format("the column line after class {} with bound {}, expected the last class unbounded (-)",
                       table_.classes.back().name, table_.classes.back().max_bytes));
    }
  }

  void row(const std::vector<std::string_view>& fields, std::string_view line) {
    if (fields.size() != std::size(kColumns)) {
      fail(fmt::format("a row of {} fields ('{}'), expected {} ({})", fields.size(), shorten(line), std::size(kColumns),
                       joined(kColumns, ", ")));
    }
    TuningRow r{std::string(fields[0]), std::string(fields[1]), std::string(fields[2]),
                std::nullopt,           std::string(fields[4]), std::string(fields[5])};
    const KernelVariant* variant = built_variant(r.variant);
    if (!variant) {
      fail(
          fmt::format("variant {}, expected a variant this build has (fusednorm::variants(); was the table "
                      "written by another build?)",
                      r.variant));
    }
    if (kernel_name(*variant) != r.kernel) {
      fail(fmt::format("variant {} in a row of kernel {}, expected a variant of {} (its kernel is {})", r.variant,
                       r.kernel, r.kernel, kernel_name(*variant)));
    }
    if (std::none_of(table_.classes.begin(), table_.classes.end(),
                     [&](const TuningClass& c) { return c.name == r.shape_class; })) {
      std::vector<std::string_view> names;
      for (const TuningClass& c : table_.classes) names.push_back(c.name);
      fail(fmt::format("class {}, expected one of the classes declared above: {}", r.shape_class, joined(names, ", ")));
    }
    if (fields[3] != "-") {
      const std::string text(fields[3]);
      char* end = nullptr;
      errno = 0;
      const double ms = std::strtod(text.c_str(), &end);
      if (end != text.c_str() + text.size() || errno != 0 || !std::isfinite(ms) || ms <= 0) {
        fail(
            fmt::format("ms '{}' for {}, expected a positive number of milliseconds, or - for a variant that is "
                        "out",
                        fields[3], r.variant));
      }
      r.ms = ms;
      if (r.result != "fastest" && r.result != "ok") {
        fail(fmt::format("result '{}' for {} with a time, expected fastest or ok", shorten(r.result), r.variant));
      }
    } else if (r.result == "fastest" || r.result == "ok" || r.result.empty()) {
      fail(fmt::format("result '{}' for {} without a time, expected why it is out (refused ..., wrong ...)", r.result,
                       r.variant));
    }
    for (const TuningRow& other : table_.rows) {
      if (other.variant == r.variant && other.shape_class == r.shape_class) {
        fail(fmt::format("a second row of {} in class {}, expected one per variant and class", r.variant,
                         r.shape_class));
      }
    }
    table_.rows.push_back(std::move(r));
  }

  std::istream& in_;
  TuningTable table_;
  int line_number_ = 0;
};

// The loaded table, or the error FUSEDNORM_TUNING's file gave (thrown by every call until cleared).
struct TuningState {
  std::mutex mutex;
  bool environment_read = false;
  std::shared_ptr<const TuningTable> table;
  std::string environment_error;
};

TuningState& state() {
  static TuningState s;
  return s;
}

std::shared_ptr<const TuningTable> load(const std::string& path, const char* what) {
  std::ifstream file(path);
  if (!file) {
    throw Error(fmt::format("{}: cannot open tuning table '{}': {}", what, path, std::strerror(errno)),
                Error::Kind::io);
  }
  return std::make_shared<const TuningTable>(parse_tuning_table(file, path));
}

// Under the state's mutex.
void read_environment(TuningState& s) {
  if (s.environment_read) return;
  s.environment_read = true;
  const char* path = std::getenv("FUSEDNORM_TUNING");
  if (!path || !*path) return;
  try {
    s.table = load(path, "FUSEDNORM_TUNING");
  } catch (const Error& e) {
    s.environment_error = e.what();
  }
}

}  // namespace

size_t TuningTable::class_of(int64_t working_set) const {
  for (size_t i = 0; i < classes.size(); i++) {
    if (classes[i].max_bytes < 0 || working_set <= classes[i].max_bytes) return i;
  }
  return classes.size() - 1;
}

std::string TuningTable::describe_class(size_t i) const {
  const TuningClass& c = classes.at(i);
  if (c.max_bytes >= 0) return fmt::format("{} (working set up to {})", c.name, mebibytes(c.max_bytes));
  return i == 0 ? c.name : fmt::format("{} (working set above {})", c.name, mebibytes(classes[i - 1].max_bytes));
}

void TuningTable::index() {
  index_.clear();
  for (const TuningRow& r : rows) {
    if (!r.ms) continue;
    const KernelVariant* v = built_variant(r.variant);
    const auto c =
        std::find_if(classes.begin(), classes.end(), [&](const TuningClass& tc) { return tc.name == r.shape_class; });
    if (!v || c == classes.end()) continue;  // parse_tuning_table() refuses both
    const Key key{v->norm, v->direction, v->layout, v->epilogue, v->affine, static_cast<size_t>(c - classes.begin())};
    index_[key].push_back({v, *r.ms});
  }
  for (auto& [key, list] : index_) {
    std::stable_sort(list.begin(), list.end(), [](const Candidate& a, const Candidate& b) { return a.ms < b.ms; });
  }
}

const std::vector<TuningTable::Candidate>* TuningTable::candidates(const KernelVariant& like,
                                                                   size_t class_index) const {
  auto found = index_.find(Key{like.norm, like.direction, like.layout, like.epilogue, like.affine, class_index});
  return found == index_.end() ? nullptr : &found->second;
}

TuningTable parse_tuning_table(std::istream& in, const std::string& source) { return Parser(in, source).parse(); }

void write_tuning_table(std::ostream& out, const TuningTable& table) {
  auto clean = [](std::string text) {
    std::replace_if(
        text.begin(), text.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; }, ' ');
    return text;
  };
  out << kMagic << '\t' << kVersion << '\n';
  out << "# FusedNorm tuning table, written by fusednorm_bench --tune; docs/TUNING.md describes it.\n";
  for (const auto& [key, value] : table.header) out << key << '\t' << clean(value) << '\n';
  out << "# class<TAB>name<TAB>max working set (bytes of the x-shaped tensors a call reads and writes)\n";
  for (const TuningClass& c : table.classes) {
    out << "class\t" << c.name << '\t' << (c.max_bytes < 0 ? std::string("-") : std::to_string(c.max_bytes)) << '\n';
  }
  out << joined(kColumns, "\t") << '\n';
  for (const TuningRow& r : table.rows) {
    out << r.kernel << '\t' << r.shape_class << '\t' << r.variant << '\t'
        << (r.ms ? fmt::format("{:.6g}", *r.ms) : std::string("-")) << '\t' << clean(r.result) << '\t'
        << clean(r.shapes) << '\n';
  }
}

std::shared_ptr<const TuningTable> current_tuning() {
  TuningState& s = state();
  std::lock_guard lock(s.mutex);
  read_environment(s);
  if (!s.environment_error.empty()) {
    throw Error(s.environment_error + " (FUSEDNORM_TUNING; fusednorm::clear_tuning() or load_tuning() replaces it)");
  }
  return s.table;
}

}  // namespace fusednorm::detail

namespace fusednorm {

void load_tuning(const std::string& path) {
  std::shared_ptr<const detail::TuningTable> table = detail::load(path, "load_tuning");
  detail::TuningState& s = detail::state();
  std::lock_guard lock(s.mutex);
  s.environment_read = true;  // FUSEDNORM_TUNING cannot replace it later
  s.environment_error.clear();
  s.table = std::move(table);
  detail::settings_changed();
}

void clear_tuning() {
  detail::TuningState& s = detail::state();
  std::lock_guard lock(s.mutex);
  s.environment_read = true;
  s.environment_error.clear();
  s.table.reset();
  detail::settings_changed();
}

std::string tuning_table() {
  const std::shared_ptr<const detail::TuningTable> table = detail::current_tuning();
  return table ? table->source : std::string();
}

}  // namespace fusednorm
