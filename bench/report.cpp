#include "bench/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "fusednorm/tensor.h"

namespace fusednorm::bench {
namespace {

// The goal for the NCHW training forward, as a share of the non-temporal copy's bandwidth.
constexpr double kTargetRatioToCopyNt = 0.5;

// The copy ceiling of the same shape: "copy" or "copy_nt".
const Row* ceiling_of(const std::vector<Row>& rows, const Row& row, const std::string& copy_impl) {
  for (const Row& r : rows) {
    if (r.kind == "ceiling" && r.impl == copy_impl && r.shape == row.shape) return &r;
  }
  return nullptr;
}

// The naive baseline of the same shape, direction and layout.
const Row* baseline_of(const std::vector<Row>& rows, const Row& row) {
  for (const Row& r : rows) {
    if (r.kind == "baseline" && r.shape == row.shape && r.direction == row.direction && r.layout == row.layout) {
      return &r;
    }
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

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_value(const std::optional<std::string>& text) { return text ? json_string(*text) : "null"; }

std::string json_value(const std::optional<double>& number) {
  return number && std::isfinite(*number) ? fmt::format("{:.6g}", *number) : "null";
}

std::string json_row(const Row& r) {
  return fmt::format(
      "{{\"op\": {}, \"direction\": {}, \"epilogue\": \"none\", \"layout\": {}, \"dtype\": \"float32\", "
      "\"shape\": [{}], \"shape_name\": {}, \"impl\": {}, \"kind\": {}, \"inplace\": {}, \"ms\": {:.6g}, "
      "\"ms_min\": {:.6g}, \"reps\": {}, \"gbps\": {:.6g}, \"bytes\": {}, \"threads\": {}, \"cache\": {}, "
      "\"ratio_to_ceiling\": {}, "
      "\"ratio_to_copy_nt\": {}, \"ratio_to_baseline\": {}, \"others_cpu_share\": {}, \"attempts\": {}}}",
      json_string(r.op), json_value(r.direction), json_value(r.layout), fmt::join(r.shape, ", "),
      json_string(r.shape_name), json_string(r.impl), json_string(r.kind), r.in_place, r.timing.median_ms,
      r.timing.min_ms, r.timing.reps, r.gbps(), r.bytes, r.threads, json_string(r.cache),
      json_value(r.ratio_to_ceiling), json_value(r.ratio_to_copy_nt), json_value(r.ratio_to_baseline),
      json_value(r.timing.others_cpu_share), r.timing.attempts);
}

}  // namespace

void complete_ratios(std::vector<Row>& rows) {
  for (Row& r : rows) {
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
  }
}

void print_table(const std::vector<Row>& rows, const std::vector<ShapeNote>& notes) {
  constexpr size_t kColumns = 11;
  using Line = std::array<std::string, kColumns>;
  const Line header = {"op", "direction", "layout",    "shape",   "impl",  "kind",
                       "ms", "GB/s",      "x ceiling", "x naive", "others"};
  constexpr std::array<bool, kColumns> kRightAligned = {false, false, false, false, false, false,
                                                        true,  true,  true,  true,  true};
  std::vector<Line> lines;
  int unreliable = 0;
  for (const Row& r : rows) {
    const bool busy = r.timing.disturbed();
    unreliable += busy;
    lines.push_back({r.op, r.direction.value_or("-"), r.layout.value_or("-"), shape_string(r.shape), r.impl, r.kind,
                     fmt::format("{:.3f}", r.timing.median_ms), fmt::format("{:.1f}", r.gbps()),
                     ratio_text(r.ratio_to_ceiling, r.ceiling_disturbed),
                     ratio_text(r.ratio_to_baseline, r.baseline_disturbed),
                     percent_text(r.timing.others_cpu_share, busy)});
  }
  std::array<size_t, kColumns> width{};
  for (size_t c = 0; c < kColumns; c++) {
    width[c] = header[c].size();
    for (const Line& line : lines) width[c] = std::max(width[c], line[c].size());
  }
  auto print_line = [&](const Line& line) {
    std::string text;
    for (size_t c = 0; c < kColumns; c++) {
      text += kRightAligned[c] ? fmt::format("{:>{}}", line[c], width[c]) : fmt::format("{:<{}}", line[c], width[c]);
      text += c + 1 < kColumns ? "  " : "";
    }
    fmt::print("{}\n", text);
  };

  print_line(header);
  for (size_t i = 0; i < rows.size(); i++) {
    if (i == 0 || rows[i].shape != rows[i - 1].shape) {
      auto note = std::find_if(notes.begin(), notes.end(),
                               [&](const ShapeNote& n) { return n.shape_name == rows[i].shape_name; });
      fmt::print("\n# {} {}{}\n", rows[i].shape_name, shape_string(rows[i].shape),
                 note != notes.end() ? ": " + note->text : "");
    }
    print_line(lines[i]);
  }
  fmt::print(
      "\nothers: the share of the CPUs other processes used while the row was timed (- : too short to tell); a ratio "
      "marked ! divides by such a row.");
  if (unreliable > 0) {
    fmt::print(
        " {} row(s) marked ! ran beside more than {:.0f}% even when timed again: their numbers are unreliable; "
        "rerun on a quiet machine (or with --filter)",
        unreliable, 100 * kDisturbedShare);
  }
  fmt::print("\n");
}

void print_target_summary(const std::vector<Row>& rows) {
  fmt::print("\nTarget: batch_norm forward_training nchw at >= {} x the non-temporal copy (copy_nt) bandwidth\n",
             kTargetRatioToCopyNt);
  bool any = false;
  for (const Row& r : rows) {
    if (r.kind != "fusednorm" || r.direction != "forward_training" || r.layout != "nchw") continue;
    any = true;
    const Row* copy_nt = ceiling_of(rows, r, "copy_nt");
    const double ratio = r.ratio_to_copy_nt.value_or(NAN);
    const bool reliable = copy_nt && !copy_nt->timing.disturbed() && !r.timing.disturbed();
    const char* verdict = !reliable                       ? "unreliable (marked ! above)"
                          : ratio >= kTargetRatioToCopyNt ? "meets the target"
                                                          : "below the target";
    fmt::print("  {:<16} {:<20} {:<30} {:6.1f} GB/s of {:6.1f} GB/s: {:.2f}  {}\n", r.shape_name, shape_string(r.shape),
               r.impl, r.gbps(), copy_nt ? copy_nt->gbps() : NAN, ratio, verdict);
  }
  if (!any) fmt::print("  (no such row in this run)\n");
}

void write_json(const std::string& path, const std::vector<Row>& rows, const MachineInfo& machine,
                const RunSettings& settings) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: cannot write the JSON results to {}", path));
  out << "{\n";
  out << fmt::format(
      "  \"machine\": {{\"cpu\": {}, \"cores\": {}, \"llc_bytes\": {}, \"llc_source\": {}, \"memory_bytes\": {}, "
      "\"date\": {}, \"load_average\": {:.2f}}},\n",
      json_string(machine.cpu_model), machine.cores, machine.llc_bytes, json_string(machine.llc_source),
      machine.memory_bytes, json_string(machine.date), machine.load_average);
  out << fmt::format(
      "  \"settings\": {{\"threads\": {}, \"quick\": {}, \"filter\": {}, \"reps\": {}, \"max_isa\": {}, "
      "\"copy_isa\": {}}},\n",
      settings.threads, settings.quick, json_string(settings.filter),
      settings.reps > 0 ? fmt::format("{}", settings.reps) : "null", json_string(settings.max_isa),
      json_string(settings.copy_isa));
  out << "  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); i++) out << "    " << json_row(rows[i]) << (i + 1 < rows.size() ? ",\n" : "\n");
  out << "  ]\n}\n";
  if (!out) throw std::runtime_error(fmt::format("fusednorm_bench: writing the JSON results to {} failed", path));
}

}  // namespace fusednorm::bench
