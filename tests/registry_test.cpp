// Registering kernels with dispatch (include/fusednorm/kernel_registry.h), as fusednorm_add_kernel() and the
// autoscheduled component do. One test, in order, in its own executable: the list of kernels closes at the first
// dispatch, so nothing may dispatch before it. A built-in kernel's entry points, registered under a new name,
// stand in for a generated one.
//
// - Refusals: bad fields, a taken name -- fusednorm::Error naming the kernel, the field and what was expected,
//   and nothing registered, not even the good kernels of the same call. (A float16 kernel's refusal needs a
//   float16 kernel, which the runtime does not build: examples/consumer has one, called raw.)
// - The registered kernel runs ahead of the built-in ones (dispatch's report names it), with the built-in
//   kernel's results against the float64 reference; registering it again changes nothing.
// - Registration after the first dispatch is refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm/kernel_registry.h"
#include "support/batch_norm_reference.h"
#include "support/test_data.h"

// The baseline instruction set's BatchNorm training forward, NCHW, affine, built into the runtime.
#if defined(__x86_64__)
#define BUILT_IN(suffix) batch_norm_forward_training_nchw_affine_sse41##suffix
#define BUILT_IN_NAME "batch_norm_forward_training_nchw_affine_sse41"
#else
#define BUILT_IN(suffix) batch_norm_forward_training_nchw_affine_neon##suffix
#define BUILT_IN_NAME "batch_norm_forward_training_nchw_affine_neon"
#endif
extern "C" int BUILT_IN(_argv)(void** args);
extern "C" const halide_filter_metadata_t* BUILT_IN(_metadata)();

namespace fusednorm {
namespace {

using ::testing::HasSubstr;

KernelRegistration good(const char* name = "registry_test_batch_norm") {
  return {name, "batch", "forward_training", "nchw", "none", true, "hand", &BUILT_IN(_argv), &BUILT_IN(_metadata)};
}

std::string refusal(const std::vector<KernelRegistration>& kernels) {
  try {
    register_kernels(kernels.data(), kernels.size());
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(RegistryTest, RefusesBadKernelsThenRunsTheRegisteredOneAheadOfTheBuiltIn) {
  KernelRegistration bad_norm = good("bad_norm");
  bad_norm.norm = "batchnorm";
  KernelRegistration bad_layout = good("bad_layout");
  bad_layout.norm = "layer";
  bad_layout.layout = "nhwc";
  KernelRegistration bad_direction = good("bad_direction");
  bad_direction.norm = "group";
  bad_direction.direction = "forward_inference";
  KernelRegistration no_call = good("no_call");
  no_call.call_argv = nullptr;
  KernelRegistration bad_epilogue = good("bad_epilogue");
  bad_epilogue.epilogue = nullptr;

  // Each refusal names the kernel, the field, the value and what was expected; the good kernel beside it in the
  // same call is not registered either.
  EXPECT_THAT(refusal({good(), bad_norm}), HasSubstr("kernel bad_norm has norm 'batchnorm', expected one of batch"));
  EXPECT_THAT(refusal({good(), bad_layout}), HasSubstr("kernel bad_layout has layout nhwc with norm layer, expected "
                                                       "nchw"));
  EXPECT_THAT(refusal({good(), bad_direction}), HasSubstr("kernel bad_direction has direction forward_inference "
                                                          "with norm group, expected norm batch"));
  EXPECT_THAT(refusal({good(), no_call}), HasSubstr("kernel no_call has no call_argv"));
  EXPECT_THAT(refusal({good(), bad_epilogue}), HasSubstr("kernel bad_epilogue has epilogue '(null)', expected"));
  // A name of a built-in kernel, and one name for two different kernels.
  KernelRegistration taken = good(BUILT_IN_NAME);
  EXPECT_THAT(refusal({taken}), HasSubstr("is already a name of another kernel"));
  KernelRegistration twin = good();
  twin.call_argv = [](void**) { return 0; };
  EXPECT_THAT(refusal({good(), twin}), HasSubstr("kernel registry_test_batch_norm is already a name"));

  // None of the refused calls registered anything: the kernel registers now, and again without effect.
  const KernelRegistration kernel = good();
  register_kernels(&kernel, 1);
  register_kernels(&kernel, 1);
  const std::vector<VariantInfo> listed = variants();  // closes the list
  EXPECT_EQ(std::count_if(listed.begin(), listed.end(), [](const VariantInfo& v) { return v.name == "bad_norm"; }), 0);
  const auto mine = std::find_if(listed.begin(), listed.end(),
                                 [](const VariantInfo& v) { return v.name == "registry_test_batch_norm"; });
  ASSERT_NE(mine, listed.end());
  EXPECT_EQ(std::count_if(listed.begin(), listed.end(),
                          [](const VariantInfo& v) { return v.name == "registry_test_batch_norm"; }),
            1);
  EXPECT_EQ(mine->norm, "batch_norm");
  EXPECT_EQ(mine->schedule, "hand");
  EXPECT_TRUE(mine->runs_here);

  // The functional API runs it, ahead of the built-in kernels of better instruction sets, and its results are the
  // kernel's: checked everywhere against the float64 reference.
  test::Random rng(test::seed_for_current_test());
  const reference::Dims d{3, 5, 7 * 9, Layout::nchw};
  const std::vector<float> x = test::random_input(d, rng);
  std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 1.5), bias = test::random_vector(d.c, rng, -1, 1);
  std::vector<float> y = test::poisoned(d.numel()), mean = test::poisoned(d.c), invstd = test::poisoned(d.c);
  const std::vector<int64_t> shape{3, 5, 7, 9};
  batch_norm_forward({.input = TensorView(const_cast<float*>(x.data()), shape),
                      .output = TensorView(y.data(), shape),
                      .weight = TensorView(weight.data(), {d.c}),
                      .bias = TensorView(bias.data(), {d.c}),
                      .save_mean = TensorView(mean.data(), {d.c}),
                      .save_invstd = TensorView(invstd.data(), {d.c})},
                     {.training = true});
  EXPECT_THAT(last_dispatch_report(), HasSubstr("ran registry_test_batch_norm (schedule hand)"));
  const reference::ForwardTraining want =
      reference::batch_norm_forward_training(x.data(), d, weight.data(), bias.data(), nullptr, nullptr, 0.1, 1e-5);
  EXPECT_TRUE(test::close("y", y, want.y, 1e-5));
  EXPECT_TRUE(test::close("save_mean", mean, want.mean, 1e-5));
  EXPECT_TRUE(test::close("save_invstd", invstd, want.invstd, 1e-5));

  // After the first dispatch the list is fixed.
  const KernelRegistration late = good("registry_test_late");
  EXPECT_THAT(refusal({late}), HasSubstr("kernel registry_test_late registered after dispatch first ran"));
}

}  // namespace
}  // namespace fusednorm
