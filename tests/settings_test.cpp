// Malformed FUSEDNORM_MAX_ISA and FUSEDNORM_SCHEDULE (issue 13, row 4): every call that needs the setting throws
// fusednorm::Error naming the variable, its value and what was expected, until the setter replaces it; the setters
// themselves never throw for the environment's sake. One test, in order, in its own executable: main() sets both
// variables before the first call (they are read once).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "support/batch_norm_reference.h"
#include "support/test_data.h"

namespace fusednorm {
namespace {

using ::testing::HasSubstr;

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(SettingsTest, MalformedEnvironmentIsRefusedUntilTheSetterReplacesIt) {
  test::Random rng(test::seed_for_current_test());
  const reference::Dims d{2, 3, 5, Layout::nchw};
  std::vector<float> x = test::random_input(d, rng), y = test::poisoned(d.numel());
  auto forward = [&] {
    batch_norm_forward({.input = TensorView(x.data(), {2, 3, 5}), .output = TensorView(y.data(), {2, 3, 5})}, {});
  };

  const std::string isa_error = "FUSEDNORM_MAX_ISA: isa is 'avx9000', expected one of";
  EXPECT_THAT(error_of(forward), HasSubstr(isa_error));
  EXPECT_THAT(error_of(forward), HasSubstr("until set_max_isa() sets one"));
  EXPECT_THAT(error_of([] { variants(); }), HasSubstr(isa_error));
  EXPECT_THAT(error_of([] { max_isa(); }), HasSubstr(isa_error));
  for (float v : y) ASSERT_TRUE(std::isnan(v)) << "a refused call wrote y";

  set_max_isa("");  // recovers the instruction set; the schedule is still the environment's malformed one
  EXPECT_EQ(max_isa(), "");
  EXPECT_THAT(error_of(forward), HasSubstr("FUSEDNORM_SCHEDULE: schedule is 'fast', expected hand"));
  EXPECT_THAT(error_of([] { schedule(); }), HasSubstr("until set_schedule() sets one"));

  set_schedule("hand");
  EXPECT_EQ(schedule(), "hand");
  forward();
  const reference::ForwardTraining want =
      reference::batch_norm_forward_training(x.data(), d, nullptr, nullptr, nullptr, nullptr, 0.1, 1e-5);
  EXPECT_TRUE(test::close("y", y, want.y, 1e-5));
  EXPECT_FALSE(variants().empty());
}

}  // namespace
}  // namespace fusednorm

int main(int argc, char** argv) {
  setenv("FUSEDNORM_MAX_ISA", "avx9000", 1);
  setenv("FUSEDNORM_SCHEDULE", "fast", 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
