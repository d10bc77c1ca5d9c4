#include "bench/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ranges>
#include <stdexcept>

#include "fusednorm/tensor.h"

namespace fusednorm::bench {
namespace {

// The goal for the NCHW training forward, as a share of the non-temporal copy's bandwidth.
constexpr double kTargetRatioToCopyNt = 0.5;

// The copy ceiling of the same shape: "copy" or "copy_nt". (Two lists may hold the same extents under two
// names, BatchNorm's and GroupNorm's cache shapes: each name has its own copies.)
const Row* ceiling_of(const std::vector<Row>& rows, const Row& row, const std::string& copy_impl) {
  for (const Row& r : rows) {
    if (r.kind == "ceiling" && r.impl == copy_impl && r.shape_name == row.shape_name) return &r;
  }
  return nullptr;
}

// Rows of the same case but for the layout: op, shape and direction.
bool same_operation(const Row& a, const Row& b) {
  return a.op == b.op && a.dtype == b.dtype && a.shape_name == b.shape_name && a.direction == b.direction;
}

// The naive baseline of the same op, shape, direction and layout, if it was timed (a wrong result is not).
const Row* baseline_of(const std::vector<Row>& rows, const Row& row) {
  for (const Row& r : rows) {
    if (r.kind == "baseline" && r.error.empty() && same_operation(r, row) && r.layout == row.layout) return &r;
  }
  return nullptr;
}

bool is_plain_layout(const std::optional<std::string>& layout) {
  return layout == "nchw" || layout == "nhwc" || layout == "rows";
}

// The fastest timed library row of the same op, shape and direction, on this row's plain layout or a blocked one.
const Row* library_of(const std::vector<Row>& rows, const Row& row) {
  const Row* best = nullptr;
  for (const Row& r : rows) {
    if (r.kind != "library" || !r.error.empty() || !same_operation(r, row)) continue;
    if (r.layout != row.layout && is_plain_layout(r.layout)) continue;
    if (!best || r.timing.median_ms < best->timing.median_ms) best = &r;
  }
  return best;
}

// The timed row of `kind` ("library": oneDNN, "framework": PyTorch) of the same op, shape and direction on `layout`
// ("nchw", "nhwc", "rows", or "blocked": any other).
const Row* library_row(const std::vector<Row>& rows, const Row& row, const std::string& layout,
                       const std::string& kind = "library") {
  for (const Row& r : rows) {
    if (r.kind != kind || !r.error.empty() || !same_operation(r, row)) continue;
    if (layout == "blocked" ? !is_plain_layout(r.layout) : r.layout == layout) return &r;
  }
  return nullptr;
}

// "! 0.42" when the row the ratio divides by was disturbed.
std::string ratio_text(const std::optional<double>& ratio, bool disturbed) {
  return ratio ? fmt::format("{}{:.2f}", disturbed ? "! " : "", *ratio) : "-";
}

std::string percent_text(const std::optional<double>& share, bool marked) {
  return share ? fmt::format("{}{:.0f}%", marked ? "! " : "", 100 * *share) : "-";
}

// The JSON keeps the order keys are written in (ordered_json), so that a row reads as the README lists it.
using Json = nlohmann::ordered_json;

Json json_value(const std::optional<std::string>& text) { return text ? Json(*text) : Json(nullptr); }

// NaN and infinities have no JSON form: null, as for a value that was not measured.
Json json_value(const std::optional<double>& number) {
  return number && std::isfinite(*number) ? Json(*number) : Json(nullptr);
}

Json json_row(const Row& r) {
  // A row that was not timed has no time, GB/s or ratios (null), and its error.
  auto timed = [&](double value) { return r.error.empty() ? std::optional<double>(value) : std::nullopt; };
  return {{"op", r.op},
          {"direction", json_value(r.direction)},
          {"epilogue", r.epilogue},
          {"layout", json_value(r.layout)},
          {"dtype", r.dtype},
          {"shape", r.shape},
          {"shape_name", r.shape_name},
          {"impl", r.impl},
          {"kind", r.kind},
          {"schedule", json_value(r.schedule.empty() ? std::nullopt : std::optional<std::string>(r.schedule))},
          {"inplace", r.in_place},
          {"ms", json_value(timed(r.timing.median_ms))},
          {"ms_min", json_value(timed(r.timing.min_ms))},
          {"reps", r.timing.reps},
          {"gbps", json_value(timed(r.gbps()))},
          {"bytes", r.bytes},
          {"threads", r.threads},
          {"cache", r.cache},
          {"ratio_to_ceiling", json_value(r.ratio_to_ceiling)},
          {"ratio_to_copy_nt", json_value(r.ratio_to_copy_nt)},
          {"ratio_to_baseline", json_value(r.ratio_to_baseline)},
          {"ratio_to_library", json_value(r.ratio_to_library)},
          {"ratio_to_pytorch", json_value(r.ratio_to_pytorch)},
          {"others_cpu_share", json_value(r.timing.others_cpu_share)},
          {"attempts", r.timing.attempts},
          {"error", json_value(r.error.empty() ? std::nullopt : std::optional<std::string>(r.error))}};
}

// The table's columns, the same in the text and the markdown.
constexpr size_t kColumns = 13;
using Line = std::array<std::string, kColumns>;
const Line kHeader = {"op",   "direction", "layout",  "shape",    "impl",      "kind",  "ms",
                      "GB/s", "x ceiling", "x naive", "x onednn", "x pytorch", "others"};
constexpr std::array<bool, kColumns> kRightAligned = {false, false, false, false, false, false, true,
                                                      true,  true,  true,  true,  true,  true};

// The op, and the dtype where it is not float32: "batch_norm bfloat16".
std::string op_text(const Row& r) { return r.dtype == "float32" ? r.op : r.op + " " + r.dtype; }

std::vector<Line> table_lines(const std::vector<Row>& rows) {
  std::vector<Line> lines;
  for (const Row& r : rows) {
    if (!r.error.empty()) {  // the error itself is in the footnote
      lines.push_back({op_text(r), r.direction.value_or("-"), r.layout.value_or("-"), shape_string(r.shape), r.impl,
                       r.kind,
                       r.error.starts_with(kWrongResult) ? "wrong" : "refused", "-", "-", "-", "-", "-", "-"});
      continue;
    }
    lines.push_back(
        {op_text(r), r.direction.value_or("-"), r.layout.value_or("-"), shape_string(r.shape), r.impl, r.kind,
         fmt::format("{:.3f}", r.timing.median_ms), fmt::format("{:.1f}", r.gbps()),
         ratio_text(r.ratio_to_ceiling, r.ceiling_disturbed), ratio_text(r.ratio_to_baseline, r.baseline_disturbed),
         ratio_text(r.ratio_to_library, r.library_disturbed), ratio_text(r.ratio_to_pytorch, r.pytorch_disturbed),
         percent_text(r.timing.others_cpu_share, r.timing.disturbed())});
  }
  return lines;
}

bool starts_shape(const std::vector<Row>& rows, size_t i) {
  return i == 0 || rows[i].shape_name != rows[i - 1].shape_name;
}

// The line above a shape's rows, after its name: "[32, 64, 112, 112]: 25.7M elements, ...; cold: ...".
std::string shape_caption(const Row& row, const std::vector<ShapeNote>& notes) {
  auto note =
      std::find_if(notes.begin(), notes.end(), [&](const ShapeNote& n) { return n.shape_name == row.shape_name; });
  return fmt::format("{}{}", shape_string(row.shape), note != notes.end() ? ": " + note->text : "");
}

std::string footnote(const std::vector<Row>& rows) {
  const auto unreliable = std::count_if(rows.begin(), rows.end(), [](const Row& r) { return r.timing.disturbed(); });
  std::string text =
      "others: the share of the CPUs other processes used while the row was timed (- : too short to tell); a ratio "
      "marked ! divides by such a row.";
  if (unreliable > 0) {
    text += fmt::format(
        " {} row(s) marked ! ran beside more than {:.0f}% even when timed again: their numbers are unreliable; "
        "rerun on a quiet machine (or with --filter)",
        unreliable, 100 * kDisturbedShare);
  }
  for (const Row& r : rows) {
    if (r.error.empty()) continue;
    const bool wrong = r.error.starts_with(kWrongResult);
    text += fmt::format("\n{}: {} {} {} {} {} {}: {}", wrong ? "wrong" : "refused", r.impl, op_text(r),
                        r.direction.value_or("-"), r.layout.value_or("-"), r.shape_name, shape_string(r.shape),
                        wrong ? r.error.substr(std::string_view(kWrongResult).size()) : r.error);
  }
  return text;
}

std::string target_title() {
  return fmt::format("Target: batch_norm forward_training nchw at >= {} x the non-temporal copy (copy_nt) bandwidth",
                     kTargetRatioToCopyNt);
}

struct TargetLine {
  std::string shape_name, shape, impl;
  double gbps, copy_nt_gbps, ratio;
  std::string verdict;
};

// The fusednorm rows the target is about, out of place and in place.
std::vector<TargetLine> target_lines(const std::vector<Row>& rows) {
  std::vector<TargetLine> lines;
  for (const Row& r : rows) {
    if (r.kind != "fusednorm" || r.op != "batch_norm" || r.dtype != "float32" || r.direction != "forward_training" ||
        r.layout != "nchw") {
      continue;
    }
    if (r.schedule != "hand" || !r.error.empty()) continue;  // the target is the hand schedule's
    const Row* copy_nt = ceiling_of(rows, r, "copy_nt");
    const double ratio = r.ratio_to_copy_nt.value_or(NAN);
    const bool reliable = copy_nt && !copy_nt->timing.disturbed() && !r.timing.disturbed();
    const char* verdict = !reliable                       ? "unreliable (marked ! above)"
                          : ratio >= kTargetRatioToCopyNt ? "meets the target"
                                                          : "below the target";
    lines.push_back(
        {r.shape_name, shape_string(r.shape), r.impl, r.gbps(), copy_nt ? copy_nt->gbps() : NAN, ratio, verdict});
  }
  return lines;
}

// Markdown would read a | inside a table cell as the next column (escaped, it reads as | elsewhere too). Our
// text has no other markup characters: GitHub does not read the underscores inside words such as
// forward_training as emphasis.
std::string markdown_text(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string small_calls_title() {
  return "Small calls: the seed's BatchNorm1d(64) through the layer API, float32, hot; copy: memcpy of x into y, "
         "timed the same way; ratio: median over copy";
}

// The small-call table's cells: a time timed beside other processes is marked !, as in the main table.
std::array<std::string, 4> small_call_cells(const SmallCallRow& r) {
  auto us = [](const Timing& t) { return fmt::format("{}{:.2f}", t.disturbed() ? "! " : "", 1e3 * t.median_ms); };
  return {r.name, us(r.timing), us(r.copy), fmt::format("{:.1f}", r.ratio())};
}

// "training forward + backward <= 5 us: above it", one per row that has a target.
std::string small_call_targets(const std::vector<SmallCallRow>& rows) {
  std::vector<std::string> parts;
  for (const SmallCallRow& r : rows) {
    if (r.target_us <= 0) continue;
    parts.push_back(fmt::format("{} <= {:g} us: {}", r.name, r.target_us,
                                1e3 * r.timing.median_ms <= r.target_us ? "meets it" : "above it"));
  }
  if (parts.empty()) parts.emplace_back("none among these rows");
  std::string text = fmt::format("Targets: {}", fmt::join(parts, "; "));
  if (std::any_of(rows.begin(), rows.end(), [](const SmallCallRow& r) { return r.timing.disturbed(); })) {
    text += fmt::format(
        ". A time marked ! was measured while other processes used more than {:.0f}% of the CPUs, even when timed "
        "again: not to be trusted",
        100 * kDisturbedShare);
  }
  return text;
}

Json small_call_json(const SmallCallRow& r) {
  return {{"case", r.name},
          {"key", r.key},
          {"shape", r.shape},
          {"dtype", "float32"},
          {"median_us", json_value(1e3 * r.timing.median_ms)},
          {"min_us", json_value(1e3 * r.timing.min_ms)},
          {"reps", r.timing.reps},
          {"copy_us", json_value(1e3 * r.copy.median_ms)},
          {"ratio", json_value(r.ratio())},
          {"target_us", r.target_us > 0 ? Json(r.target_us) : Json()},
          {"others_cpu_share", json_value(r.timing.others_cpu_share)},
          {"attempts", r.timing.attempts}};
}

}  // namespace

void complete_ratios(std::vector<Row>& rows) {
  for (Row& r : rows) {
    if (!r.error.empty()) continue;
    const Row* copy = ceiling_of(rows, r, "copy");
    const Row* copy_nt = ceiling_of(rows, r, "copy_nt");
    if (copy && copy_nt) {
      r.ratio_to_ceiling = r.gbps() / std::max(copy->gbps(), copy_nt->gbps());
      r.ceiling_disturbed = copy->timing.disturbed() || copy_nt->timing.disturbed();
    }
    if (copy_nt) r.ratio_to_copy_nt = r.gbps() / copy_nt->gbps();
    if (r.kind == "ceiling") continue;
    if (const Row* baseline = baseline_of(rows, r)) {
      r.ratio_to_baseline = baseline->timing.median_ms / r.timing.median_ms;
      r.baseline_disturbed = baseline->timing.disturbed();
    }
    if (r.kind == "framework") continue;
    if (const Row* pytorch = library_row(rows, r, r.layout.value_or(""), "framework")) {
      r.ratio_to_pytorch = pytorch->timing.median_ms / r.timing.median_ms;
      r.pytorch_disturbed = pytorch->timing.disturbed();
    }
    if (r.kind == "library") continue;
    if (const Row* library = library_of(rows, r)) {
      r.ratio_to_library = library->timing.median_ms / r.timing.median_ms;
      r.library_disturbed = library->timing.disturbed();
    }
  }
}

void print_table(const std::vector<Row>& rows, const std::vector<ShapeNote>& notes) {
  const std::vector<Line> lines = table_lines(rows);
  std::array<size_t, kColumns> width{};
  for (size_t c = 0; c < kColumns; c++) {
    width[c] = kHeader[c].size();
    for (const Line& line : lines) width[c] = std::max(width[c], line[c].size());
  }
  auto print_line = [&](const Line& line) {
    Line cells;
    for (size_t c = 0; c < kColumns; c++) {
      cells[c] = kRightAligned[c] ? fmt::format("{:>{}}", line[c], width[c]) : fmt::format("{:<{}}", line[c], width[c]);
    }
    fmt::print("{}\n", fmt::join(cells, "  "));
  };

  print_line(kHeader);
  for (size_t i = 0; i < rows.size(); i++) {
    if (starts_shape(rows, i)) fmt::print("\n# {} {}\n", rows[i].shape_name, shape_caption(rows[i], notes));
    print_line(lines[i]);
  }
  fmt::print("\n{}\n", footnote(rows));
}

void print_target_summary(const std::vector<Row>& rows) {
  fmt::print("\n{}\n", target_title());
  const std::vector<TargetLine> targets = target_lines(rows);
  for (const TargetLine& t : targets) {
    fmt::print("  {:<16} {:<20} {:<30} {:6.1f} GB/s of {:6.1f} GB/s: {:.2f}  {}\n", t.shape_name, t.shape, t.impl,
               t.gbps, t.copy_nt_gbps, t.ratio, t.verdict);
  }
  if (targets.empty()) fmt::print("  (no such row in this run)\n");
}

void print_schedule_summary(const std::vector<Row>& rows) {
  fmt::print("\nHand schedule against the autoschedulers (GB/s over copy_nt; hand's speed-up over each in ())\n");
  bool any = false;
  for (const Row& hand : rows) {
    if (hand.kind != "fusednorm" || hand.schedule != "hand" || hand.in_place || !hand.error.empty()) continue;
    std::string text;
    std::optional<double> others = hand.timing.others_cpu_share;
    for (const Row& r : rows) {
      if (r.kind != "fusednorm" || r.schedule == "hand" || r.in_place || !same_operation(r, hand) ||
          r.layout != hand.layout) {
        continue;
      }
      if (!r.error.empty()) {
        text += fmt::format("  {} refused", r.schedule);
        continue;
      }
      if (r.timing.others_cpu_share) others = std::max(others.value_or(0), *r.timing.others_cpu_share);
      text += fmt::format("  {} {} ({:.2f}x){}", r.schedule, ratio_text(r.ratio_to_copy_nt, r.ceiling_disturbed),
                          r.timing.median_ms / hand.timing.median_ms, r.timing.disturbed() ? " (!)" : "");
    }
    if (text.empty()) continue;
    any = true;
    fmt::print("  {:<22} {:<15} {:<17} {:<5} hand {}{}   others {}\n", hand.shape_name, hand.op, *hand.direction,
               *hand.layout, ratio_text(hand.ratio_to_copy_nt, hand.ceiling_disturbed), text,
               others ? fmt::format("<= {:.0f}%", 100 * *others) : "-");
  }
  if (!any) {
    fmt::print("  (no autoscheduled rows in this run: FUSEDNORM_BUILD_AUTOSCHEDULED is off, or none runs here)\n");
    return;
  }
  const bool hand_avx2 = std::all_of(rows.begin(), rows.end(), [](const Row& r) {
    return r.kind != "fusednorm" || r.schedule != "hand" || r.impl.find("/avx2") != std::string::npos;
  });
  if (!hand_avx2) {
    fmt::print(
        "  note: the autoscheduled kernels are avx2, the hand rows here are not: FUSEDNORM_MAX_ISA=avx2 "
        "compares like with like\n");
  }
}

void print_library_summary(const std::vector<Row>& rows) {
  fmt::print("\nFusedNorm against oneDNN and PyTorch (their time over FusedNorm's: > 1 is faster)\n");
  bool any = false;
  double worst_others = 0;
  for (const Row& r : rows) {
    if (r.kind != "fusednorm" || r.in_place || !r.error.empty()) continue;
    if (r.schedule != "hand") continue;  // print_schedule_summary compares the autoscheduled rows with hand
    if (r.direction != "forward_training" && r.direction != "backward") continue;
    std::string ratios;
    std::optional<double> others = r.timing.others_cpu_share;
    std::vector<const Row*> libraries;
    for (const char* layout : {"blocked", "nchw", "nhwc", "rows"}) libraries.push_back(library_row(rows, r, layout));
    libraries.push_back(library_row(rows, r, r.layout.value_or(""), "framework"));
    for (const Row* library : libraries) {
      if (!library) continue;
      if (library->timing.others_cpu_share) {
        others = std::max(others.value_or(0), *library->timing.others_cpu_share);
      }
      ratios += fmt::format("  {:5.2f} x {}{}", library->timing.median_ms / r.timing.median_ms, library->impl,
                            library->timing.disturbed() ? " (!)" : "");
    }
    if (ratios.empty()) continue;
    any = true;
    worst_others = std::max(worst_others, others.value_or(0));
    fmt::print("  {:<22} {:<15} {:<17} {:<5} {:<24}{}   others {}\n", r.shape_name, r.op, *r.direction, *r.layout,
               r.impl, ratios, others ? fmt::format("<= {:.0f}%", 100 * *others) : "-");
  }
  if (!any) {
    fmt::print("  (no such rows in this run: oneDNN and PyTorch not built, or no op they have selected)\n");
    return;
  }
  fmt::print(
      "  others: the most any of the line's rows saw other processes use of the CPUs (- : too short to tell; at "
      "most {:.0f}% in this run); {}\n",
      100 * worst_others,
      worst_others > kDisturbedShare
          ? "above 10% the ratios are not to be trusted (the OpenMP rows suffer more): rerun on a quiet machine"
          : "a shared machine still shifts ratios by a few percent");
}

void print_small_calls(const std::vector<SmallCallRow>& rows) {
  if (rows.empty()) return;
  fmt::print("\n{}\n", small_calls_title());
  size_t width = std::string_view("case").size();
  for (const SmallCallRow& r : rows) width = std::max(width, r.name.size());
  fmt::print("  {:<{}}  {:>9}  {:>7}  {:>5}\n", "case", width, "median us", "copy us", "ratio");
  for (const SmallCallRow& r : rows) {
    const auto cells = small_call_cells(r);
    fmt::print("  {:<{}}  {:>9}  {:>7}  {:>5}\n", cells[0], width, cells[1], cells[2], cells[3]);
  }
  fmt::print("  {}\n", small_call_targets(rows));
}

void write_markdown(const std::string& path, const std::string& title, const std::vector<HeaderLine>& header,
                    const std::vector<Row>& rows, const std::vector<ShapeNote>& notes,
                    const std::vector<SmallCallRow>& small_calls) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: cannot write the markdown table to {}", path));
  auto table_row = [](const auto& cells) {
    return fmt::format("| {} |\n", fmt::join(cells | std::views::transform(markdown_text), " | "));
  };
  const std::string separator = fmt::format(
      "| {} |",
      fmt::join(kRightAligned | std::views::transform([](bool right) { return right ? "---:" : "---"; }), " | "));

  out << markdown_text(title) << "\n\n";
  for (const HeaderLine& line : header) {
    out << "- **" << markdown_text(line.label) << "** " << markdown_text(line.text) << "\n";
  }
  const std::vector<Line> lines = table_lines(rows);
  for (size_t i = 0; i < rows.size(); i++) {
    if (starts_shape(rows, i)) {
      out << "\n**" << rows[i].shape_name << "** " << markdown_text(shape_caption(rows[i], notes)) << "\n\n";
      out << table_row(kHeader) << separator << "\n";
    }
    out << table_row(lines[i]);
  }
  out << "\n" << markdown_text(footnote(rows)) << "\n";

  out << "\n" << markdown_text(target_title()) << "\n\n";
  const std::vector<TargetLine> targets = target_lines(rows);
  const std::array<std::string, 7> target_header = {"shape name",   "shape", "impl",   "GB/s",
                                                    "copy_nt GB/s", "ratio", "verdict"};
  if (!targets.empty()) out << table_row(target_header) << "| --- | --- | --- | ---: | ---: | ---: | --- |\n";
  for (const TargetLine& t : targets) {
    out << table_row(std::array<std::string, 7>{t.shape_name, t.shape, t.impl, fmt::format("{:.1f}", t.gbps),
                                                fmt::format("{:.1f}", t.copy_nt_gbps), fmt::format("{:.2f}", t.ratio),
                                                t.verdict});
  }
  if (targets.empty()) out << "(no such row in this run)\n";
  if (!small_calls.empty()) {
    out << "\n" << markdown_text(small_calls_title()) << "\n\n";
    out << table_row(std::array<std::string, 4>{"case", "median us", "copy us", "ratio"})
        << "| --- | ---: | ---: | ---: |\n";
    for (const SmallCallRow& r : small_calls) out << table_row(small_call_cells(r));
    out << "\n" << markdown_text(small_call_targets(small_calls)) << "\n";
  }
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: writing the markdown table to {} failed", path));
}

void write_json(const std::string& path, const std::vector<Row>& rows, const std::vector<SmallCallRow>& small_calls,
                const MachineInfo& machine, const RunSettings& settings) {
  Json json = {{"machine",
                {{"cpu", machine.cpu_model},
                 {"cores", machine.cores},
                 {"llc_bytes", machine.llc_bytes},
                 {"llc_source", machine.llc_source},
                 {"memory_bytes", machine.memory_bytes},
                 {"date", machine.date},
                 {"load_average", machine.load_average}}},
               {"settings",
                {{"threads", settings.threads},
                 {"quick", settings.quick},
                 {"filter", settings.filter},
                 {"reps", settings.reps > 0 ? Json(settings.reps) : Json(nullptr)},
                 {"max_isa", settings.max_isa},
                 {"copy_isa", settings.copy_isa}}},
               {"rows", Json::array()},
               {"small_calls", Json::array()}};
  for (const Row& row : rows) json["rows"].push_back(json_row(row));
  for (const SmallCallRow& row : small_calls) json["small_calls"].push_back(small_call_json(row));
  std::ofstream out(path);
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: cannot write the JSON results to {}", path));
  // Text from the machine (the CPU's name) or from an error message is not checked to be UTF-8: a bad byte is
  // written as U+FFFD rather than ending the run after all its timing.
  out << json.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: writing the JSON results to {} failed", path));
}

}  // namespace fusednorm::bench
