// Dispatch: which variant a call runs, from dispatch's own report (last_dispatch_report(); the same text that
// FUSEDNORM_VERBOSE=1 or set_verbose(true) prints on stderr). batch_norm_test.cpp exercises every variant by
// construction (instruction set x layout x affine x direction); this checks that construction holds: with
// max_isa set to an instruction set, each call runs the variant of exactly that set, layout, affine and
// direction, and together the calls run every variant that variants() says runs here. A variant the
// dispatch can never choose (say, a second schedule of the same kernel) fails here, because no test would
// exercise it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

const std::vector<std::string> kKnownIsas = {"avx512", "avx2", "sse41"};

// The variant a call ran, from dispatch's report of it.
template <typename Call>
std::string variant_run_by(const Call& call) {
  call();
  const std::string report = last_dispatch_report();
  const size_t ran = report.find(" ran ");
  if (ran == std::string::npos) {
    ADD_FAILURE() << "dispatch reported no variant; report: " << report;
    return "";
  }
  const size_t begin = ran + 5;
  return report.substr(begin, report.find_first_of(" \n", begin) - begin);
}

// One call of `direction` over a small (2, 3, 5, 7) tensor in `layout`, with or without weight and bias.
std::string run_one(const std::string& direction, Layout layout, bool affine) {
  const std::vector<int64_t> shape = {2, 3, 5, 7};
  test::Random rng(test::seed_for(direction + to_string(layout)));
  std::vector<float> x = test::random_vector(210, rng, -1, 1), dy = test::random_vector(210, rng, -1, 1);
  std::vector<float> y = test::poisoned(210), dx = test::poisoned(210);
  std::vector<float> weight = test::random_vector(3, rng, 0.5, 2), bias = test::random_vector(3, rng, -1, 1);
  std::vector<float> mean = test::random_vector(3, rng, -1, 1), var = test::random_vector(3, rng, 0.5, 2);
  std::vector<float> grad_weight = test::poisoned(3), grad_bias = test::poisoned(3);
  BatchNormOptions options;
  options.training = direction != "forward_inference";
  return variant_run_by([&] {
    if (direction == "backward") {
      BatchNormBackwardTensors t;
      t.grad_output = TensorView::with_layout(dy.data(), shape, layout);
      t.input = TensorView::with_layout(x.data(), shape, layout);
      t.grad_input = TensorView::with_layout(dx.data(), shape, layout);
      t.save_mean = TensorView(mean.data(), {3});
      t.save_invstd = TensorView(var.data(), {3});
      if (affine) {
        t.weight = TensorView(weight.data(), {3});
        t.grad_weight = TensorView(grad_weight.data(), {3});
        t.grad_bias = TensorView(grad_bias.data(), {3});
      }
      batch_norm_backward(t, options);
    } else {
      BatchNormForwardTensors t;
      t.input = TensorView::with_layout(x.data(), shape, layout);
      t.output = TensorView::with_layout(y.data(), shape, layout);
      t.running_mean = TensorView(mean.data(), {3});
      t.running_var = TensorView(var.data(), {3});
      if (affine) {
        t.weight = TensorView(weight.data(), {3});
        t.bias = TensorView(bias.data(), {3});
      }
      batch_norm_forward(t, options);
    }
  });
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

// Each variant's name says its direction, layout and instruction set (oneDNN's habit), and every variant
// of a supported instruction set runs here when max_isa allows it.
TEST(DispatchTest, VariantsDescribeThemselves) {
  const std::vector<std::string> isas = supported_isas();
  test::ScopedMaxIsa unlimited("");
  ASSERT_FALSE(variants().empty());
  for (const VariantInfo& v : variants()) {
    SCOPED_TRACE(v.name);
    EXPECT_NE(v.name.find(v.direction), std::string::npos);
    EXPECT_NE(v.name.find(v.layout), std::string::npos);
    EXPECT_NE(v.name.find(v.isa), std::string::npos);
    const bool supported = std::find(isas.begin(), isas.end(), v.isa) != isas.end();
    EXPECT_EQ(v.runs_here, supported);
  }
}

TEST(DispatchTest, MaxIsaLimitsWhatRunsHere) {
  for (const std::string& isa : supported_isas()) {
    test::ScopedMaxIsa limit(isa);
    EXPECT_EQ(max_isa(), isa);
    const size_t limit_rank = static_cast<size_t>(std::find(kKnownIsas.begin(), kKnownIsas.end(), isa) -
                                                  kKnownIsas.begin());
    for (const VariantInfo& v : variants()) {
      const size_t rank = static_cast<size_t>(std::find(kKnownIsas.begin(), kKnownIsas.end(), v.isa) -
                                              kKnownIsas.begin());
      if (rank < limit_rank) {
        EXPECT_FALSE(v.runs_here) << v.name << " runs above max_isa " << isa;
      }
    }
  }
  EXPECT_EQ(max_isa(), "");
}

TEST(DispatchTest, EveryVariantThatRunsHereIsChosen) {
  std::set<std::string> chosen;
  for (const std::string& isa : supported_isas()) {
    test::ScopedMaxIsa limit(isa);
    for (const std::string direction : {"forward_training", "forward_inference", "backward"})
      for (Layout layout : {Layout::nchw, Layout::nhwc})
        for (bool affine : {true, false}) {
          SCOPED_TRACE(isa + " " + direction + " " + to_string(layout) + (affine ? " affine" : " plain"));
          const std::string name = run_one(direction, layout, affine);
          const std::vector<VariantInfo> all = variants();
          auto ran = std::find_if(all.begin(), all.end(), [&](const VariantInfo& v) { return v.name == name; });
          ASSERT_NE(ran, all.end()) << "dispatch ran " << name << ", which variants() does not list";
          EXPECT_EQ(ran->isa, isa);
          EXPECT_EQ(ran->direction, direction);
          EXPECT_EQ(ran->layout, to_string(layout));
          EXPECT_EQ(ran->affine, affine);
          chosen.insert(name);
        }
  }
  test::ScopedMaxIsa unlimited("");
  for (const VariantInfo& v : variants()) {
    if (v.runs_here) {
      EXPECT_TRUE(chosen.count(v.name)) << v.name << " runs here but dispatch never chose it";
    }
  }
}

// The report names the variant that ran and every other candidate of the same direction with its reason;
// verbose mode prints exactly that report on stderr, and nothing when off.
TEST(DispatchTest, VerboseReportExplainsEveryCandidate) {
  const std::vector<std::string> isas = supported_isas();
  test::ScopedMaxIsa limit(isas.back());  // the lowest: every better one is passed over for max_isa
  set_verbose(true);
  ::testing::internal::CaptureStderr();
  const std::string ran = run_one("forward_training", Layout::nhwc, true);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  set_verbose(false);
  const std::string report = last_dispatch_report();
  EXPECT_EQ(printed, report + "\n");
  EXPECT_EQ(ran, "batch_norm_forward_training_nhwc_affine_" + isas.back());
  EXPECT_NE(report.find("passed over batch_norm_forward_training_nchw_affine_" + isas.back() +
                        ": layout nchw, the tensors are nhwc"),
            std::string::npos)
      << report;
  EXPECT_NE(report.find("passed over batch_norm_forward_training_nhwc_plain_" + isas.back() +
                        ": not affine, the call has a weight or bias"),
            std::string::npos)
      << report;
  if (isas.size() > 1) {
    EXPECT_NE(report.find("passed over batch_norm_forward_training_nhwc_affine_" + isas.front() + ": " +
                          isas.front() + " is above the max_isa limit " + isas.back()),
              std::string::npos)
        << report;
  }
  for (const VariantInfo& v : variants()) {
    if (v.direction == "forward_training" && v.name != ran) {
      EXPECT_NE(report.find("passed over " + v.name + ": "), std::string::npos) << v.name << " missing from\n" << report;
    }
    if (v.direction != "forward_training") {
      EXPECT_EQ(report.find(v.name), std::string::npos) << v.name;
    }
  }
  ::testing::internal::CaptureStderr();
  run_one("forward_training", Layout::nhwc, true);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "set_verbose(false) still printed";
}

}  // namespace
}  // namespace fusednorm

int main(int argc, char** argv) {
  // Reports come from last_dispatch_report(), not stderr: keep the environment from printing them.
  fusednorm::set_verbose(false);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
