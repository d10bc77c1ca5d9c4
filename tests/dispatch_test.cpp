// Dispatch: which variant a call runs, from dispatch's own report (last_dispatch_report(); the same text that
// FUSEDNORM_VERBOSE=1 or set_verbose(true) prints on stderr). For every variant that runs here, a call through
// the public API that asks for exactly its norm, direction, layout, epilogue and affine (with max_isa set to its
// instruction set) must run it: a variant the dispatch can never choose (say, a second schedule of the same
// kernel) fails here, because no test would exercise it. The numerics of each are the other suites' concern.
#include "fusednorm/dispatch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "fusednorm/sync_batch_norm.h"
#include "runtime/call_tensors.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

// Best first within an architecture; a build has one architecture's (x86-64's three, or arm-64's neon).
const std::vector<std::string> kKnownIsas = {"avx512", "avx2", "sse41", "neon"};
const std::vector<std::string> kKnownNorms = {"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"};
const std::vector<std::string> kKnownEpilogues = {"none", "relu", "add_relu", "silu"};

// The variant a call ran, from dispatch's report of it. kernel_may_refuse: an autoscheduled kernel, planned for
// the generator's estimates, may refuse this call's small extents with a Halide bounds error; dispatch chose it
// all the same, which is what these tests check (tests/norm_conformance_test checks its numbers).
template <typename Call>
std::string variant_run_by(const Call& call, bool kernel_may_refuse = false) {
  try {
    call();
  } catch (const Error& e) {
    if (!kernel_may_refuse || std::string(e.what()).find("failed (Halide error") == std::string::npos) throw;
  }
  const std::string report = last_dispatch_report();
  const size_t ran = report.find(" ran ");
  if (ran == std::string::npos) {
    ADD_FAILURE() << "dispatch reported no variant; report: " << report;
    return "";
  }
  const size_t begin = ran + 5;
  return report.substr(begin, report.find_first_of(" \n", begin) - begin);
}

// "2x3x4x5", as verbose lines write x's shape.
std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t extent : shape) text += (text.empty() ? "" : "x") + std::to_string(extent);
  return text;
}

bool is_rows(const std::string& norm) { return norm == "layer_norm" || norm == "rms_norm"; }

Epilogue epilogue_named(const std::string& name) {
  for (Epilogue e : {Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu}) {
    if (name == to_string(e)) return e;
  }
  ADD_FAILURE() << "unknown epilogue " << name;
  return Epilogue::none;
}

// The memory of one call over x of (2, 4, 5, 7): GroupNorm with 2 groups, LayerNorm and RMSNorm over the trailing
// (5, 7) (8 rows of 35). Statistics and parameters have room for every norm's.
struct CallMemory {
  static constexpr int64_t kNumel = 280, kChannels = 4, kGroups = 2, kRows = 8, kParameters = 35;
  const std::vector<int64_t> shape = {2, 4, 5, 7};
  const std::vector<int64_t> normalized_shape = {5, 7};

  explicit CallMemory(const std::string& name) {
    test::Random rng(test::seed_for(name));
    for (std::vector<float>* t : {&x, &z, &y, &dy}) *t = test::random_vector(kNumel, rng, -1, 1);
    for (std::vector<float>* t : {&output, &dx, &dz}) *t = test::poisoned(kNumel);
    for (std::vector<float>* t : {&weight, &bias}) *t = test::random_vector(kParameters, rng, 0.5, 2);
    for (std::vector<float>* t : {&grad_weight, &grad_bias}) *t = test::poisoned(kParameters);
    for (std::vector<float>* t : {&mean, &invstd, &running_mean, &running_var}) {
      *t = test::random_vector(kRows, rng, 0.5, 2);
    }
  }

  // x, z (the residual), y (the backward's mask) and dy are inputs; output, dx and dz are written.
  std::vector<float> x, z, y, dy, output, dx, dz, weight, bias, grad_weight, grad_bias, mean, invstd, running_mean,
      running_var;
};

// A group of one: the synchronized calls over it are BatchNorm's. With `stop`, its collective throws, so that a call
// ends after its first kernel (statistics, backward_reduce), the variant a test of those asks for.
class GroupOfOne final : public Communicator {
 public:
  explicit GroupOfOne(bool stop) : stop_(stop) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allgather(std::span<const double> values, std::span<double> gathered) override {
    if (stop_) throw Error(kStopped);
    std::copy(values.begin(), values.end(), gathered.begin());
  }
  static constexpr const char* kStopped = "stopped at the collective";

 private:
  bool stop_;
};

// One call of the public API that asks for exactly what `v` computes.
std::string run_like(const VariantInfo& v) {
  CallMemory m(v.name);
  const Layout layout = v.layout == "nhwc" ? Layout::nhwc : Layout::nchw;
  const Epilogue epilogue = epilogue_named(v.epilogue);
  // SyncBatchNorm's split kernels run in its calls; the first of a call is the one before its collective.
  const bool split = v.direction == "statistics" || v.direction.starts_with("backward_");
  const bool backward = v.direction.starts_with("backward"), batch = v.norm == "batch_norm";
  const bool relu = epilogue == Epilogue::relu || epilogue == Epilogue::add_relu, add = epilogue == Epilogue::add_relu;
  // x and the tensors like it in the variant's dtype: 16-bit views over the float buffers (half their bytes; the
  // values do not matter here).
  const DType dtype = parse_kind<DType>(v.dtype).value();
  auto like_x = [&](std::vector<float>& data) {
    return TensorView::with_layout({data.data(), dtype}, m.shape, layout);
  };
  auto given = [](bool when, TensorView view) { return when ? std::optional<TensorView>(view) : std::nullopt; };
  auto parameter = [&](bool when, std::vector<float>& data) {
    return given(v.affine && when, is_rows(v.norm) ? TensorView(data.data(), m.normalized_shape)
                                                   : TensorView(data.data(), {CallMemory::kChannels}));
  };
  // The statistics (G, B) of each norm: (C, 1), (C, N), (num_groups, N), (1, rows).
  const int64_t statistics = batch                       ? CallMemory::kChannels
                             : v.norm == "instance_norm" ? 2 * CallMemory::kChannels
                             : v.norm == "group_norm"    ? 2 * CallMemory::kGroups
                                                         : CallMemory::kRows;

  detail::CallTensors c;
  c.input = like_x(m.x);
  c.output = backward ? given(relu, like_x(m.y)) : like_x(m.output);
  c.residual = given(add && !backward, like_x(m.z));
  c.weight = parameter(true, m.weight);
  c.bias = parameter(!backward || epilogue == Epilogue::silu, m.bias);  // the backward reads it for SiLU only
  c.running_mean = given(batch, TensorView(m.running_mean.data(), {CallMemory::kChannels}));
  c.running_var = given(batch, TensorView(m.running_var.data(), {CallMemory::kChannels}));
  c.save_mean = given(backward, TensorView(m.mean.data(), {statistics}));
  c.save_invstd = given(backward, TensorView(m.invstd.data(), {statistics}));
  c.grad_output = like_x(m.dy);
  c.grad_input = like_x(m.dx);
  c.grad_residual = given(add && backward, like_x(m.dz));
  c.grad_weight = parameter(backward, m.grad_weight);
  c.grad_bias = parameter(backward, m.grad_bias);

  return variant_run_by([&] {
    if (split) {
      GroupOfOne group(/*stop=*/v.direction != "backward_elementwise");
      const BatchNormOptions options{.epilogue = epilogue};
      try {
        if (backward) {
          sync_batch_norm_backward(detail::convert_tensors<BatchNormBackwardTensors>(c), group, options);
        } else {
          sync_batch_norm_forward(detail::convert_tensors<BatchNormForwardTensors>(c), group, options);
        }
      } catch (const Error& e) {
        if (std::string(e.what()) != GroupOfOne::kStopped) throw;
      }
    } else if (batch) {
      const BatchNormOptions options{.training = v.direction != "forward_inference", .epilogue = epilogue};
      if (backward) {
        batch_norm_backward(detail::convert_tensors<BatchNormBackwardTensors>(c), options);
      } else {
        batch_norm_forward(detail::convert_tensors<BatchNormForwardTensors>(c), options);
      }
    } else if (v.norm == "instance_norm") {
      if (backward) {
        instance_norm_backward(detail::convert_tensors<InstanceNormBackwardTensors>(c));
      } else {
        instance_norm_forward(detail::convert_tensors<InstanceNormForwardTensors>(c));
      }
    } else if (v.norm == "group_norm") {
      const GroupNormOptions options{.num_groups = CallMemory::kGroups, .epilogue = epilogue};
      if (backward) {
        group_norm_backward(detail::convert_tensors<GroupNormBackwardTensors>(c), options);
      } else {
        group_norm_forward(detail::convert_tensors<GroupNormForwardTensors>(c), options);
      }
    } else if (v.norm == "layer_norm") {
      const LayerNormOptions options{.normalized_shape = m.normalized_shape};
      if (backward) {
        layer_norm_backward(detail::convert_tensors<LayerNormBackwardTensors>(c), options);
      } else {
        layer_norm_forward(detail::convert_tensors<LayerNormForwardTensors>(c), options);
      }
    } else {
      const RMSNormOptions options{.normalized_shape = m.normalized_shape};
      if (backward) {
        rms_norm_backward(detail::convert_tensors<RMSNormBackwardTensors>(c), options);
      } else {
        rms_norm_forward(detail::convert_tensors<RMSNormForwardTensors>(c), options);
      }
    }
  }, /*kernel_may_refuse=*/v.schedule != "hand");
}

TEST(DispatchTest, SupportedIsasAreKnownAndBestFirst) {
  const std::vector<std::string> isas = supported_isas();
  ASSERT_FALSE(isas.empty()) << "no instruction set of the built kernels runs on this CPU";
  size_t previous = 0;
  for (size_t i = 0; i < isas.size(); i++) {
    auto known = std::find(kKnownIsas.begin(), kKnownIsas.end(), isas[i]);
    ASSERT_NE(known, kKnownIsas.end()) << isas[i];
    const size_t rank = static_cast<size_t>(known - kKnownIsas.begin());
    if (i > 0) {
      EXPECT_GT(rank, previous) << "supported_isas() is not best first";
    }
    previous = rank;
  }
}

// Each variant's name says what it computes (oneDNN's habit): <norm>[_<epilogue>]_<direction>[_<layout>]_<affine|
// plain>[_<dtype>]_<isa>[_<autoscheduler>], without a layout for LayerNorm and RMSNorm (rows), without an epilogue
// for none, without a dtype for float32 and without a schedule for hand (e.g. batch_norm_forward_training_nchw_affine_avx2_adams2019); and every
// variant of a supported instruction set runs here when max_isa allows it.
TEST(DispatchTest, VariantsDescribeThemselves) {
  const std::vector<std::string> isas = supported_isas();
  test::ScopedMaxIsa unlimited("");
  ASSERT_FALSE(variants().empty());
  for (const VariantInfo& v : variants()) {
    SCOPED_TRACE(v.name);
    EXPECT_NE(std::find(kKnownNorms.begin(), kKnownNorms.end(), v.norm), kKnownNorms.end()) << v.norm;
    EXPECT_NE(std::find(kKnownEpilogues.begin(), kKnownEpilogues.end(), v.epilogue), kKnownEpilogues.end());
    std::string expected = v.norm;
    if (v.epilogue != "none") expected += "_" + v.epilogue;
    expected += "_" + v.direction;
    if (is_rows(v.norm)) {
      EXPECT_EQ(v.layout, "nchw");
    } else {
      expected += "_" + v.layout;
    }
    EXPECT_TRUE(parse_kind<DType>(v.dtype)) << v.dtype;
    expected += v.affine ? "_affine" : "_plain";
    if (v.dtype != "float32") expected += "_" + v.dtype;
    expected += "_" + v.isa;
    if (v.schedule != "hand") {
      std::string schedule = v.schedule;
      for (char& ch : schedule) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      expected += "_" + schedule;
    }
    EXPECT_EQ(v.name, expected);
    const std::vector<std::string> schedules = built_schedules();
    EXPECT_NE(std::find(schedules.begin(), schedules.end(), v.schedule), schedules.end()) << v.schedule;
    const bool supported = std::find(isas.begin(), isas.end(), v.isa) != isas.end();
    EXPECT_EQ(v.runs_here, supported);
  }
}

TEST(DispatchTest, MaxIsaLimitsWhatRunsHere) {
  for (const std::string& isa : supported_isas()) {
    test::ScopedMaxIsa limit(isa);
    EXPECT_EQ(max_isa(), isa);
    const size_t limit_rank =
        static_cast<size_t>(std::find(kKnownIsas.begin(), kKnownIsas.end(), isa) - kKnownIsas.begin());
    for (const VariantInfo& v : variants()) {
      const size_t rank =
          static_cast<size_t>(std::find(kKnownIsas.begin(), kKnownIsas.end(), v.isa) - kKnownIsas.begin());
      if (rank < limit_rank) {
        EXPECT_FALSE(v.runs_here) << v.name << " runs above max_isa " << isa;
      }
    }
  }
  EXPECT_EQ(max_isa(), "");
}

TEST(DispatchTest, EveryVariantThatRunsHereIsChosen) {
  std::vector<VariantInfo> all;
  {
    test::ScopedMaxIsa unlimited("");
    all = variants();
  }
  int chosen = 0;
  for (const VariantInfo& v : all) {
    if (!v.runs_here) continue;
    SCOPED_TRACE(v.name);
    test::ScopedMaxIsa limit(v.isa);
    test::ScopedSchedule schedule(v.schedule);
    EXPECT_EQ(run_like(v), v.name);
    chosen++;
  }
  EXPECT_GT(chosen, 0);
}

// InstanceNorm with running statistics runs the batch kernels (docs/KERNELS.md), and the report says so: the
// affine ones, with weight 1 and bias 0, as the call has no parameters and BatchNorm no plain kernel.
TEST(DispatchTest, InstanceNormWithRunningStatisticsRunsTheBatchKernels) {
  CallMemory m("instance_norm_evaluation");
  const TensorView x(m.x.data(), m.shape), y(m.output.data(), m.shape), dy(m.dy.data(), m.shape),
      dx(m.dx.data(), m.shape);
  const TensorView mean(m.running_mean.data(), {CallMemory::kChannels}),
      var(m.running_var.data(), {CallMemory::kChannels});
  const InstanceNormOptions evaluation{.use_input_stats = false};
  instance_norm_forward({.input = x, .output = y, .running_mean = mean, .running_var = var}, evaluation);
  EXPECT_NE(last_dispatch_report().find("fusednorm: instance_norm forward_inference (batch_norm kernels): ran "
                                        "batch_norm_forward_inference_nchw_affine_"),
            std::string::npos)
      << last_dispatch_report();
  EXPECT_NE(last_dispatch_report().find("; no weight or bias: weight 1, bias 0)"), std::string::npos)
      << last_dispatch_report();
  instance_norm_backward({.grad_output = dy, .input = x, .grad_input = dx, .running_mean = mean, .running_var = var},
                         evaluation);
  EXPECT_NE(last_dispatch_report().find(
                "fusednorm: instance_norm backward (batch_norm kernels): ran batch_norm_backward_nchw_affine_"),
            std::string::npos)
      << last_dispatch_report();
}

// A call without weight and bias runs the plain kernel where the build has one (LayerNorm and RMSNorm, whose
// plain backward skips the parameter-gradient sums), and otherwise the affine kernel with weight 1 and bias 0,
// which the report says; last_dispatch() describes the call (affine false) either way.
TEST(DispatchTest, ACallWithoutParametersRunsThePlainKernelWhereBuiltElseTheAffineOne) {
  std::vector<VariantInfo> all;
  {
    test::ScopedMaxIsa unlimited("");
    all = variants();
  }
  std::set<std::string> plain_kernels;
  for (const VariantInfo& v : all) {
    if (!v.affine && v.schedule == "hand") plain_kernels.insert(v.kernel);
  }
  int affine_kernel_runs = 0, plain_kernel_runs = 0;
  for (const VariantInfo& v : all) {
    if (!v.affine || v.schedule != "hand" || !v.runs_here || v.direction.starts_with("backward_")) continue;
    SCOPED_TRACE(v.name);
    test::ScopedMaxIsa limit(v.isa);
    VariantInfo call = v;
    call.affine = false;
    const std::string plain = v.kernel.substr(0, v.kernel.rfind("_affine")) + "_plain" +
                              v.kernel.substr(v.kernel.rfind("_affine") + 7);
    const std::string ran = run_like(call);
    EXPECT_FALSE(last_dispatch().affine);
    if (plain_kernels.contains(plain)) {
      EXPECT_TRUE(ran.starts_with(plain + "_")) << ran;
      EXPECT_EQ(last_dispatch_report().find("weight 1"), std::string::npos) << last_dispatch_report();
      plain_kernel_runs++;
    } else {
      EXPECT_EQ(ran, v.name);
      EXPECT_NE(last_dispatch_report().find("; no weight or bias: weight 1, bias 0)"), std::string::npos)
          << last_dispatch_report();
      affine_kernel_runs++;
    }
  }
  EXPECT_GT(affine_kernel_runs, 0);
  EXPECT_GT(plain_kernel_runs, 0);
}

// The report names the variant that ran and every other candidate of the same direction with its reason;
// verbose level 1 prints one line per call, level 2 a line per candidate before it, and nothing when off.
TEST(DispatchTest, VerboseReportExplainsEveryCandidate) {
  // The instruction sets this CPU runs that the build has kernels for (the sanitizer presets build sse41 only).
  std::vector<std::string> isas;
  for (const std::string& isa : supported_isas()) {
    const std::vector<VariantInfo> all = variants();
    if (std::any_of(all.begin(), all.end(), [&](const VariantInfo& v) { return v.isa == isa; })) isas.push_back(isa);
  }
  ASSERT_FALSE(isas.empty());
  test::ScopedMaxIsa limit(isas.back());  // the lowest: every better one is passed over for max_isa
  const VariantInfo asked{.name = "batch_norm_forward_training_nhwc_affine_" + isas.back(),
                          .norm = "batch_norm",
                          .direction = "forward_training",
                          .layout = "nhwc",
                          .epilogue = "none",
                          .affine = true,
                          .dtype = "float32",
                          .isa = isas.back(),
                          .schedule = "hand",
                          .runs_here = true};
  set_verbose_level(2);
  ::testing::internal::CaptureStderr();
  const std::string ran = run_like(asked);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  set_verbose(false);
  const std::string report = last_dispatch_report();
  EXPECT_EQ(ran, "batch_norm_forward_training_nhwc_affine_" + isas.back());
  const DispatchInfo info = last_dispatch();
  std::string expected;
  for (const DispatchCandidate& c : info.passed_over) {
    expected += "fusednorm,candidate,batch_norm," + c.variant + "," + c.reason + "\n";
    EXPECT_NE((report + "\n").find("passed over " + c.variant + ": " + c.reason + "\n"), std::string::npos) << c.variant;
  }
  const std::string exec = "fusednorm,exec,cpu,batch_norm,forward_training,nhwc,float32,none," + ran +
                           ",hand,default," + shape_text(info.shape) + ",";
  EXPECT_EQ(printed.substr(0, expected.size() + exec.size()), expected + exec) << printed;
  EXPECT_EQ(std::count(printed.begin(), printed.end(), '\n'), info.passed_over.size() + 1) << printed;
  EXPECT_EQ(info.variant, ran);
  EXPECT_EQ(info.layout, "nhwc");
  EXPECT_EQ(info.choice, "default");
  // Level 1: the call's line alone.
  set_verbose_level(1);
  ::testing::internal::CaptureStderr();
  run_like(asked);
  const std::string one_line = ::testing::internal::GetCapturedStderr();
  set_verbose(false);
  EXPECT_TRUE(one_line.starts_with(exec)) << one_line;
  EXPECT_EQ(std::count(one_line.begin(), one_line.end(), '\n'), 1) << one_line;
  EXPECT_NE(report.find("passed over batch_norm_forward_training_nchw_affine_" + isas.back() +
                        ": layout nchw, the tensors are nhwc"),
            std::string::npos)
      << report;
  if (isas.size() > 1) {
    EXPECT_NE(report.find("passed over batch_norm_forward_training_nhwc_affine_" + isas.front() + ": " + isas.front() +
                          " is above the max_isa limit " + isas.back()),
              std::string::npos)
        << report;
  }
  EXPECT_NE(report.find("passed over batch_norm_relu_forward_training_nhwc_affine_" + isas.back() +
                        ": epilogue relu, the call asks for none"),
            std::string::npos)
      << report;
  // The candidates are the variants of the same norm and direction; the others are not mentioned.
  for (const VariantInfo& v : variants()) {
    const bool candidate = v.norm == "batch_norm" && v.direction == "forward_training";
    if (candidate && v.name != ran) {
      EXPECT_NE(report.find("passed over " + v.name + ": "), std::string::npos) << v.name << " missing from\n"
                                                                                << report;
    }
    if (!candidate) {
      EXPECT_EQ(report.find(v.name + ":"), std::string::npos) << v.name;
    }
  }
  ::testing::internal::CaptureStderr();
  run_like(asked);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "set_verbose(false) still printed";
}

// The hand schedule runs unless another is asked for; an autoscheduler's name runs only its variants, and a call
// it has no variant for throws, naming the schedule, rather than falling back to another schedule.
TEST(DispatchTest, SetScheduleRunsThatScheduleOrThrows) {
  EXPECT_EQ(schedule(), "hand");
  const std::vector<std::string> schedules = built_schedules();
  ASSERT_FALSE(schedules.empty());
  EXPECT_EQ(schedules.front(), "hand");
  EXPECT_THROW(set_schedule("Mullapudi2016x"), Error);
  EXPECT_EQ(schedule(), "hand");
  test::ScopedMaxIsa unlimited("");
  for (const std::string& name : schedules) {
    if (name == "hand") continue;
    SCOPED_TRACE(name);
    test::ScopedSchedule scoped(name);
    EXPECT_EQ(schedule(), name);
    for (const VariantInfo& v : variants()) {
      if (v.schedule != name || !v.runs_here || !is_rows(v.norm)) continue;
      // The same call without affine parameters: the schedule has no plain LayerNorm kernel (the hand schedule
      // has, so the call does not run the affine one either).
      VariantInfo plain = v;
      plain.affine = false;
      plain.schedule = "hand";  // run_like's leniency is for autoscheduled kernels' bounds errors only
      try {
        run_like(plain);
        ADD_FAILURE() << "a call without weight ran under schedule " << name << ": " << last_dispatch_report();
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("schedule " + name), std::string::npos) << e.what();
      }
      EXPECT_NE(last_dispatch_report().find("no variant fits"), std::string::npos) << last_dispatch_report();
      EXPECT_NE(last_dispatch_report().find(": schedule hand, dispatch runs " + name), std::string::npos)
          << last_dispatch_report();
      break;
    }
  }
  EXPECT_EQ(schedule(), "hand");
}

}  // namespace
}  // namespace fusednorm


// The variant table of docs/BUILD.md ("What gets built": norm x direction x epilogue -> layouts) lists exactly
// the variants this build has: a kernel added or dropped without the table, or the other way round, fails here.
// The table is of the hand schedule's variants, which dispatch runs; docs/BUILD.md lists the autoscheduled ones
// apart (generators/CMakeLists.txt, FUSEDNORM_BUILD_AUTOSCHEDULED).
TEST(DispatchTest, VariantTableListsExactlyTheBuiltVariants) {
  using Cell = std::tuple<std::string, std::string, std::string>;  // norm, direction, epilogue
  using Table = std::map<Cell, std::set<std::string>>;
  std::map<std::string, Table> built;  // by dtype
  Table documented;
  for (const fusednorm::VariantInfo& v : fusednorm::variants()) {
    if (v.schedule != "hand") continue;
    const bool rows = v.norm == "layer_norm" || v.norm == "rms_norm";
    built[v.dtype][{v.norm, v.direction, v.epilogue}].insert(rows ? "rows" : v.layout);
  }
  std::ifstream doc(FUSEDNORM_VARIANT_TABLE_DOC);
  ASSERT_TRUE(doc) << "cannot open " << FUSEDNORM_VARIANT_TABLE_DOC;
  const std::string marker = "<!-- variant-table: checked by tests/dispatch_test against fusednorm::variants() -->";
  std::string line;
  while (std::getline(doc, line) && line != marker) {
  }
  ASSERT_EQ(line, marker) << FUSEDNORM_VARIANT_TABLE_DOC << " has no line " << marker;
  std::vector<std::string> epilogues;
  while (std::getline(doc, line) && line.starts_with("|")) {
    std::vector<std::string> cells;
    std::stringstream row(line.substr(1));
    for (std::string cell; std::getline(row, cell, '|');) {
      cell.erase(0, cell.find_first_not_of(' '));
      cell.erase(cell.find_last_not_of(' ') + 1);
      cells.push_back(cell);
    }
    if (cells.at(0) == "norm") {
      epilogues.assign(cells.begin() + 2, cells.end());
      continue;
    }
    if (cells.at(0).starts_with("---")) continue;
    ASSERT_EQ(cells.size(), epilogues.size() + 2) << line;
    for (size_t e = 0; e < epilogues.size(); e++) {
      std::stringstream layouts(cells[e + 2]);
      for (std::string layout; std::getline(layouts, layout, ',');) {
        layout.erase(0, layout.find_first_not_of(' '));
        if (layout != "-") documented[{cells[0], cells[1], epilogues[e]}].insert(layout);
      }
    }
  }
  // Every documented cell is built in every dtype this build has (affine, and for LayerNorm and RMSNorm plain
  // too): dispatch's tests and tests/norm_conformance_test run each of them.
  ASSERT_TRUE(built.contains("float32"));
  for (const auto& [dtype, table] : built) {
    EXPECT_EQ(documented, table) << "dtype " << dtype;
  }
}

int main(int argc, char** argv) {
  // Reports come from last_dispatch_report(), not stderr: keep the environment from printing them.
  fusednorm::set_verbose(false);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
