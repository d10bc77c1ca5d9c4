// Tuned dispatch (docs/TUNING.md): the table's parser (a good file, each kind of malformed line, a
// variant this build does not have), the shape class of a call, and dispatch with a table loaded: the tuned
// variant runs and the report names it, table and class, the result still matches the float64 reference; a
// schedule set with set_schedule takes precedence; max_isa caps the choice; a tuned kernel that refuses a call
// is reported and the untuned choice runs. Nothing here is timed: the tables are written by the tests.
#include "runtime/tuning.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "support/norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

// What FUSEDNORM_TUNING gave at the first call: main() points it at a malformed file, before any call.
std::string environment_error;
std::string environment_file;  // the malformed table main() points FUSEDNORM_TUNING at

const std::string kKernel = "batch_norm_forward_training_nchw_affine";

// The variants of kKernel that run here, in dispatch's order (best instruction set first, hand before the
// autoschedulers of the same set).
std::vector<VariantInfo> kernel_variants(const std::string& schedule = "") {
  std::vector<VariantInfo> found;
  for (const VariantInfo& v : variants()) {
    if (v.kernel == kKernel && v.runs_here && (schedule.empty() || v.schedule == schedule)) found.push_back(v);
  }
  return found;
}

std::string header(const std::string& classes = "class\tcache\t4194304\nclass\tllc\t268435456\nclass\tdram\t-\n") {
  return "fusednorm-tuning\t1\nmachine\ttest\ncpu\ttest cpu\ndate\t2026-01-01T00:00:00Z\nhalide\t21.0.0\n" + classes +
         "kernel\tclass\tvariant\tms\tresult\tshapes\n";
}

std::string row(const std::string& variant, const std::string& shape_class, const std::string& ms,
                const std::string& result = "ok", const std::string& kernel = kKernel) {
  return kernel + "\t" + shape_class + "\t" + variant + "\t" + ms + "\t" + result + "\tsome.shape\n";
}

detail::TuningTable parse(const std::string& text) {
  std::istringstream in(text);
  return detail::parse_tuning_table(in, "test.tsv");
}

// The message parsing `text` throws; "" (and a failure) if it does not.
std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "parsed without error:\n" << text;
  return "";
}

// A table file under the test's temporary directory, loaded for the scope and cleared after.
class ScopedTuning {
 public:
  ScopedTuning(const std::string& name, const std::string& text)
      : path_((std::filesystem::path(::testing::TempDir()) / name).string()) {
    std::ofstream(path_) << text;
    load_tuning(path_);
  }
  ~ScopedTuning() { clear_tuning(); }
  ScopedTuning(const ScopedTuning&) = delete;
  ScopedTuning& operator=(const ScopedTuning&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One BatchNorm training forward, affine, NCHW, (2, 4, 5, 7): a working set of 2 x 280 floats (class cache in the
// tables above); the result is checked against the float64 reference.
void run_and_check(const std::string& name) {
  const reference::Dims d{2, 4, 35, Layout::nchw};
  const std::vector<int64_t> shape = {2, 4, 5, 7};
  test::Random rng(test::seed_for(name));
  std::vector<float> x = test::random_input(d, rng), y = test::poisoned(d.numel());
  std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 2), bias = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> mean = test::poisoned(d.c), invstd = test::poisoned(d.c);
  batch_norm_forward({.input = TensorView(x.data(), shape),
                      .output = TensorView(y.data(), shape),
                      .weight = TensorView(weight.data(), {d.c}),
                      .bias = TensorView(bias.data(), {d.c}),
                      .save_mean = TensorView(mean.data(), {d.c}),
                      .save_invstd = TensorView(invstd.data(), {d.c})});
  const reference::Forward want =
      reference::forward(x.data(), reference::Grouping::batch(d), {weight.data(), bias.data()}, 1e-5);
  EXPECT_TRUE(test::close("y", y, want.y));
  EXPECT_TRUE(test::close("save_mean", mean, want.mean));
  EXPECT_TRUE(test::close("save_invstd", invstd, want.invstd));
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(TuningTableTest, ParsesAGoodFile) {
  // One row per variant and class: the last row has a class of its own, as the build may have one variant only
  // (the sanitizer presets build sse41 alone).
  const std::vector<VariantInfo> vs = kernel_variants();
  ASSERT_FALSE(vs.empty());
  const std::string text = "# a comment\n\n" + header() + row(vs.front().name, "llc", "0.5", "fastest") +
                           "# another comment\n" + row(vs.front().name, "cache", "0.02", "ok") +
                           row(vs.back().name, "dram", "-", "refused some.shape: bounds error");
  const detail::TuningTable t = parse(text);
  EXPECT_EQ(t.source, "test.tsv");
  ASSERT_EQ(t.classes.size(), 3u);
  EXPECT_EQ(t.classes[0].name, "cache");
  EXPECT_EQ(t.classes[1].max_bytes, 268435456);
  EXPECT_EQ(t.classes[2].max_bytes, -1);
  ASSERT_EQ(t.rows.size(), 3u);
  EXPECT_EQ(*t.rows[0].ms, 0.5);
  EXPECT_FALSE(t.rows[2].ms.has_value());
  EXPECT_EQ(t.rows[2].result, "refused some.shape: bounds error");
  ASSERT_GE(t.header.size(), 4u);
  EXPECT_EQ(t.header[0], (std::pair<std::string, std::string>{"machine", "test"}));
  // Written and read again: the same table.
  std::ostringstream written;
  detail::write_tuning_table(written, t);
  const detail::TuningTable again = parse(written.str());
  EXPECT_EQ(again.rows.size(), t.rows.size());
  EXPECT_EQ(again.rows[1].variant, t.rows[1].variant);
  EXPECT_EQ(*again.rows[1].ms, *t.rows[1].ms);
}

TEST(TuningTableTest, RanksTheTimedVariantsOfAKernelAndClass) {
  const std::vector<VariantInfo> vs = kernel_variants();
  if (vs.size() < 2) GTEST_SKIP() << "one variant of " << kKernel << " runs here";
  const detail::TuningTable t =
      parse(header() + row(vs[0].name, "cache", "2", "ok") + row(vs[1].name, "cache", "1", "fastest") +
            row(vs[0].name, "llc", "-", "wrong some.shape: y has error 1"));
  const detail::KernelVariant like{Norm::batch,
                                   Direction::forward_training,
                                   Layout::nchw,
                                   Epilogue::none,
                                   true,
                                   DType::float32,
                                   Backend::cpu,
                                   detail::Isa::sse41,
                                   "hand",
                                   "",
                                   nullptr,
                                   nullptr};
  const auto* cache = t.candidates(like, 0);
  ASSERT_NE(cache, nullptr);
  ASSERT_EQ(cache->size(), 2u);
  EXPECT_EQ(std::string(cache->at(0).variant->name), vs[1].name);
  EXPECT_EQ(std::string(cache->at(1).variant->name), vs[0].name);
  EXPECT_EQ(t.candidates(like, 1), nullptr) << "a variant that is out is not a candidate";
  EXPECT_EQ(t.candidates(like, 2), nullptr);
}

TEST(TuningTableTest, MalformedLinesNameTheFileTheLineAndWhatWasExpected) {
  const std::string variant = kernel_variants().at(0).name;
  const std::string good_row = row(variant, "cache", "1", "fastest");
  struct Case {
    std::string text, expected;
  };
  const std::vector<Case> cases = {
      {"", "test.tsv:0: empty, expected the first line 'fusednorm-tuning<TAB>1'"},
      {"fusednorm-tuning\t2\n", "test.tsv:1: 'fusednorm-tuning 2', expected the first line 'fusednorm-tuning<TAB>1'"},
      {"kernel,class,variant\n", "test.tsv:1: 'kernel,class,variant', expected the first line"},
      {"fusednorm-tuning\t1\nmachine\ttest\n", "test.tsv:2: end of file in the header, expected the column line"},
      {"fusednorm-tuning\t1\nhost\tx\n",
       "test.tsv:2: 'host x', expected a header line (machine, cpu, date, halide, "
       "threads, class)"},
      {"fusednorm-tuning\t1\nmachine\ta\tb\n", "test.tsv:2: machine has 3 fields, expected 2"},
      {header("class\tllc\t100\nclass\tcache\t50\nclass\tdram\t-\n"),
       "test.tsv:7: class cache bound 50, expected more than class llc's 100"},
      {header("class\tcache\t100\nclass\tllc\tlots\nclass\tdram\t-\n"),
       "test.tsv:7: class llc bound 'lots', expected a positive number of bytes, or - for the last class"},
      {header("class\tcache\t100\n"),
       "test.tsv:7: the column line after class cache with bound 100, expected the "
       "last class unbounded (-)"},
      {header("class\tall\t-\nclass\tmore\t-\n"), "test.tsv:7: class more after the unbounded class all"},
      {header("class\tCache\t-\n"), "test.tsv:6: class name 'Cache', expected lower-case letters"},
      {"fusednorm-tuning\t1\nmachine\tm\ncpu\tc\ndate\td\nclass\tall\t-\nkernel\tclass\tvariant\tms\tresult\tshapes\n",
       "test.tsv:6: the column line before a halide line"},
      {header() + good_row + kKernel + "\tcache\t" + variant + "\t1\tfastest\n", "test.tsv:11: a row of 5 fields"},
      {header() + row(variant, "l3", "1"),
       "test.tsv:10: class l3, expected one of the classes declared above: cache, "
       "llc, dram"},
      {header() + row(variant, "cache", "fast"), "test.tsv:10: ms 'fast' for " + variant},
      {header() + row(variant, "cache", "-1"), "test.tsv:10: ms '-1' for " + variant},
      {header() + row(variant, "cache", "-", "fastest"),
       "test.tsv:10: result 'fastest' for " + variant + " without a time, expected why it is out"},
      {header() + row(variant, "cache", "1", "great"),
       "test.tsv:10: result 'great' for " + variant + " with a time, expected fastest or ok"},
      {header() + good_row + row(variant, "cache", "2"), "test.tsv:11: a second row of " + variant + " in class cache"},
      {header() + row(variant, "cache", "1", "ok", "batch_norm_backward_nchw_affine"),
       "test.tsv:10: variant " + variant +
           " in a row of kernel batch_norm_backward_nchw_affine, expected a variant of "
           "batch_norm_backward_nchw_affine (its kernel is " +
           kKernel + ")"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string message = parse_error(c.text);
    EXPECT_TRUE(contains(message, "tuning table " + c.expected)) << message;
  }
}

TEST(TuningTableTest, AVariantThisBuildDoesNotHaveIsAnError) {
  const std::string message = parse_error(header() + row(kKernel + "_avx1024", "cache", "1", "fastest"));
  EXPECT_TRUE(
      contains(message, "tuning table test.tsv:10: variant " + kKernel + "_avx1024, expected a variant this build has"))
      << message;
}

TEST(TuningTableTest, LoadTuningThrowsForAMissingOrMalformedFileAndKeepsTheTableBefore) {
  const std::string missing = (std::filesystem::path(::testing::TempDir()) / "no_such_table.tsv").string();
  try {
    load_tuning(missing);
    ADD_FAILURE() << "loaded " << missing;
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "load_tuning: cannot open tuning table '" + missing + "'")) << e.what();
    EXPECT_EQ(e.kind(), Error::Kind::io);
  }
  EXPECT_EQ(tuning_table(), "");
  ScopedTuning good("good.tsv", header());
  EXPECT_EQ(tuning_table(), good.path());
  const std::string bad = (std::filesystem::path(::testing::TempDir()) / "bad.tsv").string();
  std::ofstream(bad) << header() << "kernel only\n";
  EXPECT_THROW(load_tuning(bad), Error);
  EXPECT_EQ(tuning_table(), good.path()) << "a malformed file replaced the table loaded before";
}

// main() set FUSEDNORM_TUNING to a malformed file: the first call threw, naming it and the line.
TEST(TuningTableTest, AMalformedFileFromTheEnvironmentIsAnError) {
  EXPECT_TRUE(contains(environment_error, "tuning table ")) << environment_error;
  EXPECT_TRUE(contains(environment_error, environment_file + ":1: 'not a table', expected the first line"))
      << environment_error;
  EXPECT_TRUE(contains(environment_error, "(FUSEDNORM_TUNING;")) << environment_error;
}

TEST(ShapeClassTest, WorkingSetCountsTheTensorsShapedLikeX) {
  EXPECT_EQ(detail::working_set_bytes(Direction::forward_training, Epilogue::none, 1000), 8000);
  EXPECT_EQ(detail::working_set_bytes(Direction::forward_inference, Epilogue::relu, 1000), 8000);
  EXPECT_EQ(detail::working_set_bytes(Direction::forward_training, Epilogue::add_relu, 1000), 12000);  // + z
  EXPECT_EQ(detail::working_set_bytes(Direction::backward, Epilogue::none, 1000), 12000);              // x, dy, dx
  EXPECT_EQ(detail::working_set_bytes(Direction::backward, Epilogue::silu, 1000), 12000);
  EXPECT_EQ(detail::working_set_bytes(Direction::backward, Epilogue::relu, 1000), 16000);      // + y
  EXPECT_EQ(detail::working_set_bytes(Direction::backward, Epilogue::add_relu, 1000), 20000);  // + y, dz
}

TEST(ShapeClassTest, ACallIsInTheFirstClassItsWorkingSetDoesNotExceed) {
  const detail::TuningTable t = parse(header());
  EXPECT_EQ(t.class_of(0), 0u);
  EXPECT_EQ(t.class_of(4194304), 0u);
  EXPECT_EQ(t.class_of(4194305), 1u);
  EXPECT_EQ(t.class_of(268435456), 1u);
  EXPECT_EQ(t.class_of(268435457), 2u);
  EXPECT_EQ(t.class_of(int64_t{1} << 50), 2u);
  EXPECT_EQ(t.describe_class(0), "cache (working set up to 4 MiB)");
  EXPECT_EQ(t.describe_class(2), "dram (working set above 256 MiB)");
}

// The table's fastest variant runs (a slower instruction set than dispatch's default, so that the choice shows),
// the report says which table and class chose it and why the others were passed over, and verbose mode prints it.
TEST(TunedDispatchTest, RunsTheTunedVariantAndSaysSo) {
  const std::vector<VariantInfo> hand = kernel_variants("hand");
  if (hand.size() < 2) GTEST_SKIP() << "one hand variant of " << kKernel << " runs here";
  const VariantInfo &fastest = hand.back(), &slower = hand.front();
  ScopedTuning tuning("tuned.tsv",
                      header() + row(slower.name, "cache", "2", "ok") + row(fastest.name, "cache", "1", "fastest"));
  set_verbose(true);
  ::testing::internal::CaptureStderr();
  run_and_check("tuned");
  const std::string printed = ::testing::internal::GetCapturedStderr();
  set_verbose(false);
  const std::string report = last_dispatch_report();
  // Verbose level 1: the one line of the call, which says the table chose it.
  EXPECT_TRUE(printed.starts_with("fusednorm,exec,cpu,batch_norm,forward_training,nchw,float32,none," + fastest.name +
                                  ",hand,tuned,2x4x5x7,"))
      << printed;
  EXPECT_EQ(std::count(printed.begin(), printed.end(), '\n'), 1) << printed;
  EXPECT_TRUE(contains(report, "fusednorm: batch_norm forward_training: ran " + fastest.name +
                                   " (schedule hand; tuned: class cache (working set up to 4 MiB), working set "
                                   "2.2 KiB, table " +
                                   tuning.path() + ")"))
      << report;
  EXPECT_TRUE(contains(report, "passed over " + slower.name + ": tuned slower in class cache: 2 ms against 1 ms"))
      << report;
  // Another kernel's candidates keep their reasons.
  EXPECT_TRUE(contains(report, "passed over batch_norm_forward_training_nhwc_affine_" + fastest.isa +
                                   ": layout nhwc, the tensors are nchw"))
      << report;
}

TEST(TunedDispatchTest, ACallOfAClassTheTableHasNothingForRunsTheUntunedChoice) {
  const std::vector<VariantInfo> hand = kernel_variants("hand");
  ScopedTuning tuning("other_class.tsv", header() + row(hand.back().name, "llc", "1", "fastest"));
  run_and_check("other_class");
  const std::string report = last_dispatch_report();
  EXPECT_TRUE(contains(report, "ran " + hand.front().name + " (schedule hand)")) << report;
  EXPECT_TRUE(contains(report, "tuning: table " + tuning.path() + " has no timed variant of " + kKernel +
                                   " in class cache (working set up to 4 MiB), working set 2.2 KiB: the untuned "
                                   "choice"))
      << report;
}

TEST(TunedDispatchTest, ASetScheduleTakesPrecedenceOverTheTable) {
  const std::vector<VariantInfo> hand = kernel_variants("hand");
  ScopedTuning tuning("precedence.tsv", header() + row(hand.back().name, "cache", "1", "fastest"));
  for (const std::string& schedule : built_schedules()) {
    if (schedule == "hand" || kernel_variants(schedule).empty()) continue;
    SCOPED_TRACE(schedule);
    test::ScopedSchedule scoped(schedule);
    try {
      run_and_check("precedence");
    } catch (const Error& e) {
      // An autoscheduled kernel may refuse this small call (a Halide bounds error): dispatch chose it all the same.
      EXPECT_TRUE(contains(e.what(), "failed (Halide error")) << e.what();
    }
    const std::string report = last_dispatch_report();
    EXPECT_TRUE(contains(report, "ran " + kernel_variants(schedule).front().name + " (schedule " + schedule + ")"))
        << report;
    EXPECT_TRUE(contains(report, "tuning: table " + tuning.path() + " not consulted: schedule " + schedule +
                                     " is set (set_schedule, FUSEDNORM_SCHEDULE), which takes precedence"))
        << report;
  }
  // Back to hand: the table decides again.
  run_and_check("precedence_hand");
  EXPECT_TRUE(contains(last_dispatch_report(), "ran " + hand.back().name + " (schedule hand; tuned: "))
      << last_dispatch_report();
}

TEST(TunedDispatchTest, MaxIsaCapsTheTunedChoice) {
  const std::vector<VariantInfo> hand = kernel_variants("hand");
  if (hand.size() < 2) GTEST_SKIP() << "one hand variant of " << kKernel << " runs here";
  const VariantInfo &best = hand.front(), &lower = hand.back();
  {
    // The table ranks the best instruction set first; with max_isa below it, the next tabled variant runs.
    ScopedTuning tuning("capped.tsv",
                        header() + row(best.name, "cache", "1", "fastest") + row(lower.name, "cache", "3", "ok"));
    test::ScopedMaxIsa limit(lower.isa);
    run_and_check("capped");
    const std::string report = last_dispatch_report();
    EXPECT_TRUE(contains(report, "ran " + lower.name + " (schedule hand; tuned: class cache")) << report;
    EXPECT_TRUE(contains(report, "passed over " + best.name + ": " + best.isa + " is above the max_isa limit " +
                                     lower.isa + " (tuned 1 ms in class cache)"))
        << report;
  }
  {
    // Nothing tabled runs under the cap: the untuned choice, and the report says why.
    ScopedTuning tuning("capped_out.tsv", header() + row(best.name, "cache", "1", "fastest"));
    test::ScopedMaxIsa limit(lower.isa);
    run_and_check("capped_out");
    const std::string report = last_dispatch_report();
    EXPECT_TRUE(contains(report, "ran " + lower.name + " (schedule hand)")) << report;
    EXPECT_TRUE(contains(report, "none of its variants of " + kKernel + " runs here; " + best.name + ": " + best.isa +
                                     " is above the max_isa limit " + lower.isa + ": the untuned choice"))
        << report;
  }
}

// An autoscheduled kernel planned for 32 x 256 x 56 x 56 may refuse the small call (a Halide bounds error, before
// it computes anything): the untuned choice runs, and the report says the tuned one refused and why. Where it
// accepts the call, it runs as tuned. Either way the result is the reference's.
TEST(TunedDispatchTest, ATunedKernelThatRefusesTheCallIsReportedAndTheUntunedChoiceRuns) {
  const std::vector<VariantInfo> hand = kernel_variants("hand");
  int refused = 0, tested = 0;
  for (const VariantInfo& v : kernel_variants()) {
    if (v.schedule == "hand") continue;
    SCOPED_TRACE(v.name);
    tested++;
    ScopedTuning tuning("refusal.tsv", header() + row(v.name, "cache", "1", "fastest"));
    set_verbose(true);
    ::testing::internal::CaptureStderr();
    run_and_check("refusal");
    const std::string printed = ::testing::internal::GetCapturedStderr();
    set_verbose(false);
    const std::string report = last_dispatch_report();
    if (contains(report, "ran " + v.name + " (schedule " + v.schedule + "; tuned: ")) continue;
    refused++;
    EXPECT_TRUE(
        contains(report, "ran " + hand.front().name + " (schedule hand; the tuned " + v.name + " refused the call)"))
        << report;
    EXPECT_TRUE(contains(report, "passed over " + v.name +
                                     ": tuned for class cache, but its kernel refused this "
                                     "call: batch_norm: kernel " +
                                     v.name + " failed (Halide error"))
        << report;
    EXPECT_TRUE(contains(report, "the untuned choice ran instead")) << report;
    // Verbose: the line of the call says the tuned variant refused and names the one that ran.
    EXPECT_TRUE(contains(printed, "," + hand.front().name + ",hand,tuned_refused,2x4x5x7,")) << printed;
    const DispatchInfo info = last_dispatch();
    EXPECT_EQ(info.choice, "tuned_refused");
    EXPECT_EQ(info.variant, hand.front().name);
    EXPECT_TRUE(contains(info.refusal, "batch_norm: kernel " + v.name + " failed (Halide error")) << info.refusal;
  }
  if (tested == 0) GTEST_SKIP() << "this build has no autoscheduled variant of " << kKernel;
  RecordProperty("refused", refused);
}

}  // namespace
}  // namespace fusednorm

int main(int argc, char** argv) {
  // FUSEDNORM_TUNING is read at the first call: a malformed file there makes it throw, naming the file and line.
  // One file per process: ctest runs each case as a process of its own, two at a time, and with one shared name one
  // process truncated the file while another read it ("empty", a flaky failure).
  const std::string path =
      (std::filesystem::temp_directory_path() / ("env_malformed_" + std::to_string(getpid()) + ".tsv")).string();
  fusednorm::environment_file = path;
  std::ofstream(path) << "not a table\n";
  setenv("FUSEDNORM_TUNING", path.c_str(), 1);
  try {
    fusednorm::tuning_table();
  } catch (const fusednorm::Error& e) {
    fusednorm::environment_error = e.what();
  }
  std::filesystem::remove(path);
  fusednorm::clear_tuning();
  fusednorm::set_verbose(false);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
