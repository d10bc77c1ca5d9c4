#include "bench/options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "bench/cases.h"
#include "fusednorm/error.h"

namespace fusednorm::bench {
namespace {

constexpr const char* kUsage = R"(usage: fusednorm_bench [options]

Times FusedNorm's kernels, each checked against the float64 reference first, against a naive OpenMP
baseline, oneDNN, PyTorch (where built with libtorch) and the copy bandwidth measured in the same run:
  batch_norm       forward training, forward inference, backward; NCHW and NHWC (ResNet-50, MLP and the
                   seed's BatchNorm1d)
  batch_norm_relu  BatchNorm with its fused ReLU: forward training, backward; NCHW and NHWC (ResNet-50)
  layer_norm       forward training, backward; rows (transformer)
  rms_norm         forward training, backward; rows (transformer, LLM); oneDNN 2.6 and PyTorch 1.13 have
                   none (PyTorch's row: the composite a user writes)
  group_norm       forward training, backward; NCHW and NHWC (U-Net); oneDNN 2.6 has none
  instance_norm    forward training, backward; NCHW and NHWC (style transfer); oneDNN 2.6 has none
each by the hand schedule and every autoscheduler built; the forwards also in place (".../inplace").
Then the small calls: the seed's BatchNorm1d(64) layer on a [32, 64] batch, training forward + backward and
evaluation forward, in microseconds beside a copy of the same bytes (not with --problem alone).

  --quick          smaller shapes of the same kinds (ResNet-50 at batch 2, ...) and short timing
  --filter TEXT    only rows whose "<op>/<direction>/<layout>/<shape name>/<dtype>" contains TEXT (layout:
                   nchw, nhwc, rows; dtype: float32, bfloat16, float16), e.g. backward, layer_norm, batch_norm/,
                   batch_norm_relu/backward/nhwc, stage4, bfloat16;
                   the small calls' is "small_call/batch_norm/<forward_training+backward or
                   forward_inference>/32x64" (--filter small_call: only them)
  --shapes LISTS   comma-separated shape lists of tests/support/shapes.h, each with its ops:
                   resnet50 (batch 32: batch_norm, batch_norm_relu), resnet50_batch2, mlp_bn1d (8192 x 1024:
                   batch_norm), mlp_bn1d_small, seed_bn1d (32 x 64, 256 x 64: batch_norm), transformer
                   (8192 x 1024, 4096 x 4096: layer_norm, rms_norm), transformer_small, llm (4096 x 4096,
                   16 x 8192: rms_norm), llm_small, unet (8 x 320 x 64 x 64 in 32 groups: group_norm),
                   unet_small, style (8 x 64 x 128 x 128: instance_norm), style_small, cache (one small input
                   per op). A case two lists share is timed once, under the first list's name. Default:
                   resnet50,mlp_bn1d,seed_bn1d,transformer,llm,unet,style,cache; with --quick
                   resnet50_batch2,mlp_bn1d_small,seed_bn1d,transformer_small,llm_small,unet_small,
                   style_small,cache
  --problem SPEC   one case given on the command line, benchdnn-style (repeatable; alone it replaces the
                   default lists, with --shapes it is added to them):
                   OP:DIRECTION:LAYOUT:SHAPE[:gGROUPS|:dDIMS][:DTYPE] with SHAPE (N, C, *spatial) in any
                   layout and DTYPE float32 (default), bfloat16 or float16, e.g.
                     batch_norm:forward_training:nhwc:32x64x112x112
                     batch_norm_relu:backward:nchw:256x2048x7x7
                     group_norm:forward_training:nhwc:8x320x64x64:g32   (GROUPS required)
                     layer_norm:backward:rows:8192x1024                (the last DIMS dimensions, default 1)
                     rms_norm:backward:rows:16x8192                    (as layer_norm)
                     instance_norm:forward_training:nhwc:8x64x128x128
                     layer_norm:forward_training:rows:8192x1024:bfloat16
  --threads N      threads for the kernels (HL_NUM_THREADS), the baseline and the copies (default: cores)
  --reps N         exactly N timed runs per row (default: at least 5 and about 0.5 s)
  --json PATH      where the JSON rows go (default: results.json in the current directory)
  --markdown PATH  also write the table as GitHub-flavoured markdown (one table per shape under its cache
                   regime line, then the target summary), for docs/PERFORMANCE.md to include verbatim
  --tune           instead of the table: for each kernel and shape class (cache, llc, dram), time every
                   variant that runs here (hand schedule per instruction set, autoscheduled), each checked
                   against the float64 reference first, and write the tuning table dispatch loads
                   (FUSEDNORM_TUNING, fusednorm::load_tuning; docs/TUNING.md): the cache and llc
                   classes, two shapes each. With --quick: one shape per class, short timing. --filter
                   matches "<kernel>/<class>" then; --threads and --reps apply
  --dram           with --tune, also the dram class (one shape above the last-level cache per kernel, cold:
                   seconds per kernel, more with a big cache)
  --tuning-table PATH  where --tune writes the table (default: tuning.tsv in the current directory)
  --help           this text
)";

[[noreturn]] void usage_error(const std::string& message) {
  fmt::print(stderr, "fusednorm_bench: {}\n\n{}", message, kUsage);
  std::exit(2);
}

// The checks below run as CLI11 parses a value and throw CLI::ValidationError with the whole message (naming the
// option, the value and what was expected), which parse_options prints above the usage.
int positive_int(std::string_view flag, const std::string& text) {
  const std::optional<int64_t> value = positive_integer(text);
  if (!value || *value > std::numeric_limits<int>::max()) {
    throw CLI::ValidationError(fmt::format("{} is '{}', expected a positive integer", flag, text));
  }
  return static_cast<int>(*value);
}

std::vector<std::string> shape_lists(std::string_view flag, std::string_view text) {
  std::vector<std::string> names;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view name = text.substr(0, comma);
    const std::vector<std::string>& known = shape_list_names();
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      throw CLI::ValidationError(
          fmt::format("{} names '{}', expected one or more of {}", flag, name, fmt::join(known, ", ")));
    }
    names.emplace_back(name);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  if (names.empty()) throw CLI::ValidationError(fmt::format("{} needs at least one shape list", flag));
  return names;
}

// CLI11 lets a flag take a value ("--quick=false", "--quick=x" read as a conversion failure); ours take none, so
// that "--quick=x" is refused saying so. A bare flag reaches the check as "true".
CLI::Validator no_value() {
  return CLI::Validator(
      [](std::string& value) {
        return value == "true" ? std::string() : fmt::format("takes no value, got '{}'", value);
      },
      "");
}

// A valued option that keeps its last value when given twice, as the parser before CLI11 did.
template <typename F>
CLI::Option* add_valued(CLI::App& app, const char* name, F&& store) {
  return app.add_option_function<std::string>(name, std::forward<F>(store))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

}  // namespace

Options parse_options(int argc, char** argv) {
  Options options;
  CLI::App app("", "fusednorm_bench");
  // --help prints kUsage (below), written for this tool, rather than CLI11's generated text.
  app.set_help_flag("-h,--help");
  app.add_flag("--quick", options.quick)->check(no_value());
  app.add_flag("--tune", options.tune)->check(no_value());
  app.add_flag("--dram", options.tune_dram)->check(no_value());
  add_valued(app, "--filter", [&](const std::string& text) { options.filter = text; });
  add_valued(app, "--shapes", [&](const std::string& text) { options.shape_lists = shape_lists("--shapes", text); });
  add_valued(app, "--threads", [&](const std::string& text) { options.threads = positive_int("--threads", text); });
  add_valued(app, "--reps", [&](const std::string& text) { options.reps = positive_int("--reps", text); });
  add_valued(app, "--json", [&](const std::string& text) { options.json_path = text; });
  add_valued(app, "--markdown", [&](const std::string& text) { options.markdown_path = text; });
  add_valued(app, "--tuning-table", [&](const std::string& text) { options.tuning_path = text; });
  auto store_problems = [&](const std::vector<std::string>& specs) {
    for (const std::string& spec : specs) {
      try {
        parse_problem(spec);
      } catch (const Error& e) {
        throw CLI::ValidationError(e.what());
      }
    }
    options.problems = specs;
  };
  // Repeatable, one case per --problem: "--problem A B" refuses B rather than reading two cases.
  app.add_option_function<std::vector<std::string>>("--problem", store_problems)->allow_extra_args(false);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    fmt::print("{}", kUsage);
    std::exit(0);
  } catch (const CLI::ParseError& e) {
    usage_error(e.what());
  }
  if (options.tune && !options.problems.empty()) {
    usage_error("--problem does not apply to --tune, which times the shapes of each shape class");
  }
  return options;
}

}  // namespace fusednorm::bench
