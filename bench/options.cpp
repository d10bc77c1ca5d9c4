#include "bench/options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string_view>

namespace fusednorm::bench {
namespace {

constexpr const char* kUsage = R"(usage: fusednorm_bench [options]

Times FusedNorm's BatchNorm kernels (forward training, forward inference, backward; NCHW and NHWC) on the
ResNet-50 batch-32 shapes, against a naive OpenMP baseline and the copy bandwidth measured in the same run.
The forwards are timed out of place and in place (impl ".../inplace": y written over x).

  --quick          the same shapes at batch 2 and short timing, for development
  --filter TEXT    only rows whose "batch_norm/<direction>/<layout>/<shape name>" contains TEXT,
                   e.g. backward, nhwc, forward_training/nchw, stage4
  --shapes LISTS   comma-separated shape lists of tests/support/shapes.h: resnet50 (batch 32, the default),
                   resnet50_batch2 (the default with --quick), mlp_bn1d, mlp_bn1d_small, cache
  --threads N      threads for the kernels (HL_NUM_THREADS), the baseline and the copies (default: cores)
  --reps N         exactly N timed runs per row (default: at least 5 and about 0.5 s)
  --json PATH      where the JSON rows go (default: results.json beside the executable)
  --markdown PATH  also write the table as GitHub-flavoured markdown (one table per shape under its cache
                   regime line, then the target summary), for docs/PERFORMANCE.md to include verbatim
  --help           this text
)";

[[noreturn]] void usage_error(const std::string& message) {
  fmt::print(stderr, "fusednorm_bench: {}\n\n{}", message, kUsage);
  std::exit(2);
}

int positive_int(std::string_view flag, std::string_view text) {
  int value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1) {
    usage_error(fmt::format("{} is '{}', expected a positive integer", flag, text));
  }
  return value;
}

std::vector<std::string> shape_lists(std::string_view flag, std::string_view text) {
  std::vector<std::string> names;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view name = text.substr(0, comma);
    if (std::find(std::begin(kShapeListNames), std::end(kShapeListNames), name) == std::end(kShapeListNames)) {
      usage_error(
          fmt::format("{} names '{}', expected one or more of {}", flag, name, fmt::join(kShapeListNames, ", ")));
    }
    names.emplace_back(name);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  if (names.empty()) usage_error(fmt::format("{} needs at least one shape list", flag));
  return names;
}

}  // namespace

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; i++) {
    std::string_view arg = argv[i];
    std::string_view value;
    // Both "--flag value" and "--flag=value".
    if (auto equals = arg.find('='); arg.starts_with("--") && equals != std::string_view::npos) {
      value = arg.substr(equals + 1);
      arg = arg.substr(0, equals);
    }
    auto next_value = [&]() -> std::string_view {
      if (!value.empty()) return value;
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", arg));
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", kUsage);
      std::exit(0);
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--filter") {
      options.filter = next_value();
    } else if (arg == "--shapes") {
      options.shape_lists = shape_lists(arg, next_value());
    } else if (arg == "--threads") {
      options.threads = positive_int(arg, next_value());
    } else if (arg == "--reps") {
      options.reps = positive_int(arg, next_value());
    } else if (arg == "--json") {
      options.json_path = next_value();
    } else if (arg == "--markdown") {
      options.markdown_path = next_value();
    } else {
      usage_error(fmt::format("unknown argument '{}'", argv[i]));
    }
  }
  return options;
}

}  // namespace fusednorm::bench
