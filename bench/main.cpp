// fusednorm_bench: FusedNorm's normalization kernels -- BatchNorm (and with its fused ReLU) on the ResNet-50
// and MLP shapes, LayerNorm and RMSNorm on transformer rows, GroupNorm on a U-Net's, InstanceNorm on a style
// network's -- in each layout and direction, each
// against a naive baseline, oneDNN, PyTorch and the copy bandwidth measured in the same run, on the same buffer size
// and cache regime. Prints a table, writes JSON rows. See bench/README.md.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/cases.h"
#include "bench/copy_ceiling.h"
#include "bench/machine.h"
#include "bench/onednn_baseline.h"
#include "bench/options.h"
#include "bench/problem.h"
#include "bench/pytorch_baseline.h"
#include "bench/report.h"
#include "bench/small_calls.h"
#include "bench/timing.h"
#include "bench/tune.h"
#include "bench/verify.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"

namespace fusednorm::bench {
namespace {

// Above this 1-minute load average another process is probably competing for the cores.
constexpr double kBusyLoadAverage = 0.5;

// Halide sizes its thread pool from HL_NUM_THREADS when the first kernel runs, so this runs before any;
// OpenMP (baseline, oneDNN, copies) and PyTorch's ATen take the same count, so every row uses the same cores.
int configure_threads(const Options& options, const MachineInfo& machine) {
  const int threads = options.threads > 0 ? options.threads : machine.cores;
  setenv("HL_NUM_THREADS", std::to_string(threads).c_str(), 1);
  omp_set_num_threads(threads);
  pytorch::configure(threads);
  return threads;
}

// The --problem cases, then --shapes; without either, every op on its network's shapes (the default lists of
// bench/cases.cpp; small ones with --quick).
std::vector<BenchShape> benchmark_shapes(const Options& options) {
  std::vector<BenchShape> all;
  for (const std::string& spec : options.problems) all.push_back(parse_problem(spec));
  std::vector<std::string> lists = options.shape_lists;
  if (lists.empty() && options.problems.empty()) lists = default_shape_lists(options.quick);
  std::vector<BenchShape> listed;
  for (const std::string& name : lists) {
    for (BenchShape& shape : shape_list(name)) listed.push_back(std::move(shape));
  }
  for (BenchShape& shape : without_repeated_cases(std::move(listed))) all.push_back(std::move(shape));
  return all;
}

// The dtypes of the op's cases on the shape: a --problem's own, or float32 then half_dtypes(op).
std::vector<DType> case_dtypes(const BenchShape& shape, Op op) {
  if (shape.dtype) return {*shape.dtype};
  std::vector<DType> result = {DType::float32};
  for (DType dtype : half_dtypes(op)) result.push_back(dtype);
  return result;
}

// --filter matches a substring of "<op>/<direction>/<layout>/<shape name>/<dtype>".
// A --problem is its one direction and layout.
bool selected(const Options& options, const BenchShape& shape, Op op, Layout layout, Direction direction,
              DType dtype) {
  if (shape.direction.value_or(direction) != direction || shape.layout.value_or(layout) != layout) return false;
  const std::string key = fmt::format("{}/{}/{}/{}/{}", to_string(op), name(direction), layout_name(op, layout),
                                      shape.name, name(dtype));
  return key.find(options.filter) != std::string::npos;
}

std::vector<Direction> selected_directions(const Options& options, const BenchShape& shape, Op op, Layout layout,
                                           DType dtype) {
  std::vector<Direction> result;
  for (Direction direction : directions(op)) {
    if (selected(options, shape, op, layout, direction, dtype)) result.push_back(direction);
  }
  return result;
}

// Calls f(op, layout, dtype, direction) for every selected case of the shape.
template <typename F>
void for_each_selected_case(const Options& options, const BenchShape& shape, const F& f) {
  for (Op op : shape.ops) {
    for (Layout layout : layouts(op)) {
      for (DType dtype : case_dtypes(shape, op)) {
        for (Direction direction : selected_directions(options, shape, op, layout, dtype)) {
          f(op, layout, dtype, direction);
        }
      }
    }
  }
}

// The rows of a case: fusednorm, fusednorm in place (forwards), one per autoscheduler, naive, oneDNN (at most;
// a blocked row is skipped for shapes it does not take, and the progress count then ends early), PyTorch. A
// 16-bit case: fusednorm and oneDNN.
int rows_per_case(Op op, Direction direction, Layout layout, DType dtype) {
  const int onednn_rows = static_cast<int>(onednn::storages(op, layout).size());
  if (dtype != DType::float32) return 1 + onednn_rows;
  return 2 + has_in_place_row(direction) + static_cast<int>(autoscheduled_schedules(op, direction, layout).size()) +
         onednn_rows + pytorch::has_row(op, direction);
}

int selected_rows(const Options& options, const BenchShape& shape) {
  int count = 0;
  for_each_selected_case(options, shape, [&](Op op, Layout layout, DType dtype, Direction direction) {
    count += rows_per_case(op, direction, layout, dtype);
  });
  return count;
}

bool selects_in_place_rows(const Options& options, const BenchShape& shape) {
  bool any = false;
  for_each_selected_case(options, shape, [&](Op, Layout, DType dtype, Direction direction) {
    any = any || (has_in_place_row(direction) && dtype == DType::float32);
  });
  return any;
}

// One line on stderr, rewritten in place on a terminal, one line per step otherwise (logs stay readable).
class Progress {
 public:
  explicit Progress(int total)
      : total_(total), width_(std::to_string(total).size()), terminal_(isatty(fileno(stderr))) {}
  void step(const std::string& what) {
    step_++;
    fmt::print(stderr, "{}[{:>{}}/{}] {}{}", terminal_ ? "\r\033[K" : "", step_, width_, total_, what,
               terminal_ ? "" : "\n");
    std::fflush(stderr);
  }
  void status(const std::string& what) {
    if (terminal_) fmt::print(stderr, "\r\033[K[{:>{}}/{}] {}", step_, width_, total_, what);
    std::fflush(stderr);
  }
  void done() {
    if (terminal_) fmt::print(stderr, "\r\033[K");
  }

 private:
  int total_, step_ = 0;
  size_t width_;  // of the step number: as many digits as the total
  bool terminal_;
};

class Benchmark {
 public:
  Benchmark(const Options& options, const MachineInfo& machine, int threads)
      : options_(options),
        machine_(machine),
        threads_(threads),
        plan_(options.reps > 0 ? fixed_reps_plan(options.reps)
              : options.quick  ? quick_plan()
                               : default_plan()),
        shapes_(benchmark_shapes(options)),
        progress_(count_steps()) {}

  const TimingPlan& plan() const { return plan_; }

  std::vector<Row> run() {
    for (const BenchShape& shape : shapes_) run_shape(shape);
    if (runs_small_calls()) {
      small_calls_ = time_small_calls(options_.filter, plan_, machine_.cores,
                                      [&](const std::string& what) { progress_.step(what); });
    }
    progress_.done();
    complete_ratios(rows_);
    return rows_;
  }
  const std::vector<ShapeNote>& notes() const { return notes_; }
  const std::vector<SmallCallRow>& small_calls() const { return small_calls_; }

 private:
  // The small calls come with the shape lists (the default ones or --shapes), not with --problem cases alone,
  // which replace the lists.
  bool runs_small_calls() const { return options_.problems.empty() || !options_.shape_lists.empty(); }

  // Two copy ceilings per shape with any selected row, then the rows of each selected case; the small calls' copy
  // and cases.
  int count_steps() const {
    int steps = 0;
    for (const BenchShape& shape : shapes_) {
      const int rows = selected_rows(options_, shape);
      steps += rows > 0 ? 2 + rows : 0;
    }
    const int small_calls = runs_small_calls() ? selected_small_calls(options_.filter) : 0;
    return steps + (small_calls > 0 ? 1 + small_calls : 0);
  }

  void run_shape(const BenchShape& shape) {
    if (selected_rows(options_, shape) == 0) return;
    int64_t numel = 1;
    for (int64_t extent : shape.shape) numel *= extent;
    const int64_t tensor_bytes = numel * static_cast<int64_t>(sizeof(float));
    const CacheRegime regime = choose_cache_regime(tensor_bytes, machine_.llc_bytes);
    const CacheRegime in_place = in_place_regime(regime, tensor_bytes, machine_.llc_bytes);
    std::string note = fmt::format("{:.1f}M elements, {} per tensor; {}", static_cast<double>(numel) / 1e6,
                                   megabytes(tensor_bytes), describe(regime, tensor_bytes, machine_.llc_bytes));
    if (const std::string text = describe_in_place(in_place, tensor_bytes);
        !text.empty() && selects_in_place_rows(options_, shape)) {
      note += ", " + text;
    }
    notes_.push_back({shape.name, note});

    measure_copy_ceilings(shape, numel, regime);
    for (Op op : shape.ops) {
      for (Layout layout : layouts(op)) {
        for (DType dtype : case_dtypes(shape, op)) {
          const std::vector<Direction> chosen = selected_directions(options_, shape, op, layout, dtype);
          if (chosen.empty()) continue;
          progress_.status(fmt::format("{} {} {} {}: allocating and filling {} buffer set(s)", shape.name,
                                       to_string(op), layout_name(op, layout), name(dtype), regime.buffer_sets));
          Problem problem = make_problem(shape, op, layout, regime.buffer_sets, dtype);
          Verifier verifier(problem);
          for (Direction direction : chosen) measure_case(problem, verifier, direction, regime, in_place);
        }
      }
    }
  }

  Row base_row(const BenchShape& shape, const CacheRegime& regime) const {
    Row row;
    row.shape_name = shape.name;
    row.shape = shape.shape;
    row.cache = regime.name();
    row.threads = threads_;
    return row;
  }

  // Both copies of a buffer of the shape's size, in the shape's cache regime: the roofline of its rows.
  void measure_copy_ceilings(const BenchShape& shape, int64_t numel, const CacheRegime& regime) {
    std::vector<AlignedBuffer> sources, destinations;
    for (int set = 0; set < regime.buffer_sets; set++) {
      fill_uniform(sources.emplace_back(numel).data(), numel, -1.0f, 1.0f, 7 + static_cast<uint64_t>(set));
      destinations.emplace_back(numel);
    }
    for (CopyStores stores : {CopyStores::regular, CopyStores::non_temporal}) {
      progress_.step(fmt::format("{} {}", shape.name, impl_name(stores)));
      Row row = base_row(shape, regime);
      row.op = "copy";
      row.impl = impl_name(stores);
      row.kind = "ceiling";
      row.bytes = 2 * numel * static_cast<int64_t>(sizeof(float));
      row.timing = time_runs(
          [&](int set) {
            parallel_copy(sources[static_cast<size_t>(set)].data(), destinations[static_cast<size_t>(set)].data(),
                          numel, stores);
          },
          regime, plan_, machine_.cores);
      rows_.push_back(row);
    }
  }

  // in_place: the regime of the in-place rows, the same as `regime` but for the buffers it rotates through.
  void measure_case(Problem& problem, Verifier& verifier, Direction direction, const CacheRegime& regime,
                    const CacheRegime& in_place) {
    const Op op = problem.op;
    const std::string what = fmt::format("{} {} {} {} {}", problem.shape.name, to_string(op), problem.layout_name(),
                                         name(direction), name(problem.dtype));
    progress_.status(what + ": computing the float64 reference");
    verifier.prepare(direction);
    const bool half = problem.dtype != DType::float32;
    std::vector<Implementation> implementations = {
        fusednorm_implementation(op, direction, problem.layout, /*in_place=*/false, "hand", problem.dtype)};
    if (!half) {
      if (has_in_place_row(direction)) {
        implementations.push_back(fusednorm_implementation(op, direction, problem.layout, /*in_place=*/true));
      }
      for (const std::string& schedule : autoscheduled_schedules(op, direction, problem.layout)) {
        implementations.push_back(
            fusednorm_implementation(op, direction, problem.layout, /*in_place=*/false, schedule));
      }
      implementations.push_back(naive_implementation(direction));
    }
    for (onednn::Storage storage : onednn::storages(op, problem.layout)) {
      if (auto impl = onednn::implementation(direction, problem, storage)) implementations.push_back(std::move(*impl));
    }
    if (!half) {
      if (auto impl = pytorch::implementation(direction, problem)) implementations.push_back(std::move(*impl));
    }
    for (const Implementation& impl : implementations) {
      progress_.step(fmt::format("{} {}: verifying", what, impl.name));
      if (impl.prepare) impl.prepare(problem);
      const CacheRegime& row_regime = impl.in_place ? in_place : regime;
      Row row = base_row(problem.shape, row_regime);
      row.schedule = impl.schedule;
      try {
        verifier.check(impl, direction);
      } catch (const Error& e) {
        // An autoscheduled kernel, planned for the generator's estimates, may refuse other extents (a Halide
        // bounds error): a row that says so. The hand schedule takes any shape, so there it is a bug. PyTorch may
        // refuse a case too (its error, as fusednorm::Error): a row that says so.
        const bool may_refuse = (impl.kind == "fusednorm" && impl.schedule != "hand") || impl.kind == "framework";
        if (!may_refuse) throw;
        row.error = e.what();
      } catch (const VerificationError& e) {
        // A wrong FusedNorm result is a bug; a baseline's is a finding (seen: oneDNN 2.6 BatchNorm NHWC with
        // C = 2 over 33M values per channel), reported in its row rather than ending the run.
        if (impl.kind == "fusednorm") throw;
        row.error = std::string(kWrongResult) + e.what();
      }
      progress_.status(fmt::format("{} {}: timing", what, impl.name));
      // Every in-place buffer starts from a copy of x, whatever the rows before left in it.
      if (impl.in_place) problem.refill_in_place(row_regime.buffer_sets);
      row.op = to_string(op);
      row.dtype = name(problem.dtype);
      row.epilogue = fusednorm::to_string(epilogue(op));
      row.direction = name(direction);
      // A blocked oneDNN row is reported under its own layout ("nChw16c"), not the case's.
      row.layout = impl.name.starts_with("onednn/") ? impl.name.substr(7) : problem.layout_name();
      row.impl = impl.name;
      row.kind = impl.kind;
      row.in_place = impl.in_place;
      row.bytes = tensors_moved(op, direction) * problem.tensor_bytes();
      if (row.error.empty()) {
        row.timing = time_runs([&](int set) { impl.run(problem, set); }, row_regime, plan_, machine_.cores);
      }
      rows_.push_back(row);
    }
  }

  const Options& options_;
  const MachineInfo& machine_;
  int threads_;
  TimingPlan plan_;
  std::vector<BenchShape> shapes_;
  Progress progress_;
  std::vector<Row> rows_;
  std::vector<ShapeNote> notes_;
  std::vector<SmallCallRow> small_calls_;
};

std::string describe_plan(const TimingPlan& plan) {
  std::string text = fmt::format("median of >= {} runs and >= {:g} s per row, after >= {} warm-up runs and >= {:g} s",
                                 plan.min_reps, plan.min_seconds, plan.warmup_runs, plan.warmup_seconds);
  if (plan.min_reps == plan.max_reps) text = fmt::format("median of {} runs after warm-up", plan.min_reps);
  if (plan.retries_when_disturbed > 0) {
    text += fmt::format("; timed again (up to {} times) while other processes use > {:.0f}% of the CPUs",
                        plan.retries_when_disturbed, 100 * kDisturbedShare);
  }
  return text;
}

std::string title(const RunSettings& settings) {
  return fmt::format("FusedNorm schedule benchmark{}", settings.quick ? " (--quick: small shapes, short timing)" : "");
}

std::vector<HeaderLine> header_lines(const MachineInfo& machine, const RunSettings& settings, const TimingPlan& plan) {
  std::vector<std::string> isas = supported_isas();
  std::vector<HeaderLine> lines = {
      {"machine", fmt::format("{}, {} cores, last-level cache {} ({}), {} GiB memory", machine.cpu_model, machine.cores,
                              mebibytes(machine.llc_bytes), machine.llc_source, machine.memory_bytes >> 30)},
      {"date", machine.date},
      {"threads", fmt::format("{} (HL_NUM_THREADS for the kernels, OpenMP for the naive baseline, oneDNN and the "
                              "copies, at::set_num_threads for PyTorch)",
                              settings.threads)},
      {"kernels", fmt::format("the variant dispatch picks (affine, best instruction set{}: {})",
                              settings.max_isa.empty() ? "" : ", FUSEDNORM_MAX_ISA " + settings.max_isa,
                              isas.empty() ? "none" : isas.front())},
      {"schedules",
       "fusednorm/hand/<isa>: the hand schedule (dispatch's default); fusednorm/<autoscheduler>/avx2: the same "
       "generators planned by Mullapudi2016, Li2018, Adams2019 for 32x256x56x56 (the channel norms) or 8192 rows "
       "of 1024 (LayerNorm) (set_schedule), where built (none for rms_norm and instance_norm); one that refuses a "
       "shape (Halide bounds error) gets a row marked refused"},
      {"in place",
       "the forwards' .../inplace rows write y over x (output == input), each run on the previous run's output "
       "(the inference's every other run with the inverse parameters, so that it stays finite)"},
      {"oneDNN", onednn::available()
                     ? onednn::description() +
                           ": batch_normalization with scale and shift (batch_norm_relu: with fuse_norm_relu, the "
                           "training forward writing the workspace its backward reads) on the case's plain layout "
                           "(onednn/nchw, onednn/nhwc) and on its blocked layout (from the nchw case; reorders not "
                           "timed); layer_normalization with scale and shift on the rows (onednn/rows); group_norm, "
                           "rms_norm, instance_norm: no oneDNN row (oneDNN 2.6 has no group, RMS or instance "
                           "normalization)"
                     : onednn::description()},
      {"PyTorch", pytorch::available()
                      ? pytorch::description() +
                            ": pytorch/<layout>, on the case's own buffers (NHWC as channels_last; no copy): "
                            "native_batch_norm (+ relu_ for batch_norm_relu; backward: threshold_backward, then "
                            "native_batch_norm_backward), native_layer_norm, native_group_norm and their backwards "
                            "(group_norm's on contiguous() copies for NHWC, as autograd calls it); "
                            "instance_norm as ATen's (batch norm on x as (1, N*C, ...), contiguous() copies NHWC); "
                            "rms_norm: no op in 1.13, x * rsqrt(mean(x^2) + eps) * w, its backward by autograd; "
                            "outputs from a caching allocator"
                      : pytorch::description()},
      {"ceiling", fmt::format("the faster of copy ({} stores) and copy_nt ({} non-temporal stores), same size and "
                              "cache regime as the row; GB/s counts read + write",
                              settings.copy_isa, settings.copy_isa)},
      {"GB/s",
       "forward: x read + y written (in place too); backward: x and dy read + dx written, batch_norm_relu's also the "
       "forward's y read (its mask; oneDNN reads a bit mask instead); per-channel and per-statistic tensors not "
       "counted"},
      {"timing", describe_plan(plan)},
      {"checked", fmt::format("every fusednorm and baseline row against the float64 reference first (in place: on a "
                              "copy of x): max |out - ref| / max |ref| < {:g}",
                              kTolerance)},
  };
  if (!settings.filter.empty()) lines.push_back({"filter", fmt::format("'{}'", settings.filter)});
  if (machine.load_average > kBusyLoadAverage) {
    lines.push_back({"load", fmt::format("{:.2f} (1-minute average) at the start: other processes are running; "
                                         "timings may be noisy",
                                         machine.load_average)});
  }
  return lines;
}

void print_header(const std::string& title, const std::vector<HeaderLine>& lines) {
  fmt::print("{}\n", title);
  for (const HeaderLine& line : lines) fmt::print("  {:<8} {}\n", line.label, line.text);
  fmt::print("\n");
  std::fflush(stdout);
}

int run(int argc, char** argv) {
  const auto start = std::chrono::steady_clock::now();
  const Options options = parse_options(argc, argv);
  const MachineInfo machine = describe_machine();
  const int threads = configure_threads(options, machine);
  if (options.tune) return run_tuning(options, machine, threads);
  // Every row names the variant it times (fusednorm/<schedule>/<isa>): a tuning table (FUSEDNORM_TUNING) would
  // let dispatch run another one under that name.
  const bool tuning_ignored = std::getenv("FUSEDNORM_TUNING") != nullptr;
  clear_tuning();
  const RunSettings settings{threads, options.quick, options.filter, options.reps, max_isa(), copy_isa()};

  Benchmark benchmark(options, machine, threads);
  std::vector<HeaderLine> header = header_lines(machine, settings, benchmark.plan());
  if (tuning_ignored) {
    header.push_back({"tuning", "FUSEDNORM_TUNING is set and ignored: each row runs the variant it names"});
  }
  print_header(title(settings), header);
  std::vector<Row> rows = benchmark.run();
  const std::vector<SmallCallRow>& small_calls = benchmark.small_calls();
  if (rows.empty() && small_calls.empty()) {
    fmt::print(stderr, "fusednorm_bench: --filter '{}' selects no row\n", options.filter);
    return 2;
  }
  // --filter small_call selects the small calls alone: no kernel table, nor its summaries.
  if (!rows.empty()) {
    print_table(rows, benchmark.notes());
    print_target_summary(rows);
    print_schedule_summary(rows);
    print_library_summary(rows);
  }
  print_small_calls(small_calls);

  const std::string json_path =
      std::filesystem::absolute(options.json_path.empty() ? "results.json" : options.json_path).string();
  write_json(json_path, rows, small_calls, machine, settings);
  fmt::print("\nJSON rows: {}\n", json_path);
  if (!options.markdown_path.empty()) {
    const std::string markdown_path = std::filesystem::absolute(options.markdown_path).string();
    write_markdown(markdown_path, title(settings), header, rows, benchmark.notes(), small_calls);
    fmt::print("Markdown table: {}\n", markdown_path);
  }
  fmt::print("Took {:.0f} s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace
}  // namespace fusednorm::bench

int main(int argc, char** argv) {
  try {
    return fusednorm::bench::run(argc, argv);
  } catch (const fusednorm::bench::VerificationError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "\n{}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "\nfusednorm_bench: {}\n", e.what());
    return 1;
  }
}
