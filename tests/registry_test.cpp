// Registering kernels with dispatch (include/fusednorm/kernel_registry.h), as fusednorm_add_kernel() and the
// autoscheduled component do. One test, in order, in its own executable: the list of kernels closes at the first
// dispatch, so nothing may dispatch before it. A built-in kernel's entry points, registered under a new name,
// stand in for a generated one.
//
// - Refusals: bad fields, a taken name, argument types that are not one storage type for the tensors and float32
//   for the rest (the built-in kernel's metadata with one type changed) -- fusednorm::Error naming the kernel, the
//   field and what was expected, and nothing registered, not even the good kernels of the same call.
// - The registered kernel runs ahead of the built-in ones (dispatch's report names it), with the built-in
//   kernel's results against the float64 reference; registering it again changes nothing. Where the build has
//   16-bit kernels, a bfloat16 one registered the same way runs on bfloat16 tensors.
// - Registration after the first dispatch is refused.
#include <HalideRuntime.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
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
// Its bfloat16 twin, where the build has 16-bit kernels (avx2 on x86-64).
#if defined(FUSEDNORM_TEST_HALF_KERNELS)
#if defined(__x86_64__)
#define BUILT_IN_BFLOAT16(suffix) batch_norm_forward_training_nchw_affine_bfloat16_avx2##suffix
#else
#define BUILT_IN_BFLOAT16(suffix) batch_norm_forward_training_nchw_affine_bfloat16_neon##suffix
#endif
extern "C" int BUILT_IN_BFLOAT16(_argv)(void** args);
extern "C" const halide_filter_metadata_t* BUILT_IN_BFLOAT16(_metadata)();
#endif

namespace fusednorm {
namespace {

using ::testing::HasSubstr;

KernelRegistration good(const char* name = "registry_test_batch_norm") {
  return {name, "batch", "forward_training", "nchw", "none", true, "hand", &BUILT_IN(_argv), &BUILT_IN(_metadata)};
}

// The built-in kernel's metadata with argument `argument`'s element type replaced: a kernel of mixed types.
halide_filter_metadata_t retyped_metadata;
std::vector<halide_filter_argument_t> retyped_arguments;
const halide_filter_metadata_t* retyped() { return &retyped_metadata; }
KernelRegistration with_type(const char* name, std::string_view argument, halide_type_t type) {
  const halide_filter_metadata_t* built_in = BUILT_IN(_metadata)();
  retyped_arguments.assign(built_in->arguments, built_in->arguments + built_in->num_arguments);
  const auto found = std::find_if(retyped_arguments.begin(), retyped_arguments.end(),
                                  [&](const halide_filter_argument_t& a) { return a.name == argument; });
  EXPECT_NE(found, retyped_arguments.end()) << argument;
  if (found != retyped_arguments.end()) found->type = type;
  retyped_metadata = *built_in;
  retyped_metadata.arguments = retyped_arguments.data();
  KernelRegistration k = good(name);
  k.metadata = &retyped;
  return k;
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

  // Element types: x one of the storage types, z, y, dy, dx, dz x's, the statistics and parameters float32.
  const halide_type_t f16(halide_type_float, 16), bf16(halide_type_bfloat, 16), u8(halide_type_uint, 8);
  EXPECT_THAT(refusal({good(), with_type("bytes", "x", u8)}),
              HasSubstr("kernel bytes stores x as uint8, expected float32, bfloat16 or float16"));
  EXPECT_THAT(refusal({good(), with_type("mixed", "y", f16)}),
              HasSubstr("kernel mixed has y of type float16, expected float32 (x's type)"));
  EXPECT_THAT(refusal({good(), with_type("half_weight", "weight", bf16)}),
              HasSubstr("kernel half_weight has weight of type bfloat16, expected float32 (statistics and parameters "
                        "are float32)"));

  // None of the refused calls registered anything: the kernel registers now, and again without effect.
  const KernelRegistration kernel = good();
  register_kernels(&kernel, 1);
  register_kernels(&kernel, 1);
#if defined(FUSEDNORM_TEST_HALF_KERNELS)
  const KernelRegistration kernel_bfloat16{
      "registry_test_batch_norm_bfloat16", "batch", "forward_training", "nchw", "none", true, "hand",
      &BUILT_IN_BFLOAT16(_argv), &BUILT_IN_BFLOAT16(_metadata)};
  register_kernels(&kernel_bfloat16, 1);
#endif
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

#if defined(FUSEDNORM_TEST_HALF_KERNELS)
  // The bfloat16 one is listed as bfloat16 and runs on bfloat16 tensors: the reference sees x as rounded to
  // bfloat16, and y, stored in bfloat16, is held to the storage type's bound (tests/support/test_data.h).
  const auto mine_bfloat16 = std::find_if(listed.begin(), listed.end(), [](const VariantInfo& v) {
    return v.name == "registry_test_batch_norm_bfloat16";
  });
  ASSERT_NE(mine_bfloat16, listed.end());
  EXPECT_EQ(mine_bfloat16->dtype, "bfloat16");
  EXPECT_EQ(mine->dtype, "float32");
  if (mine_bfloat16->runs_here) {
    std::vector<float> x16 = x;
    test::round_to(DType::bfloat16, x16);
    std::vector<uint16_t> x_bits(x16.size()), y_bits(x16.size(), 0x7fc0);  // y: NaN until written
    std::transform(x16.begin(), x16.end(), x_bits.begin(), [](float v) { return test::to_bits(DType::bfloat16, v); });
    mean = test::poisoned(d.c);
    invstd = test::poisoned(d.c);
    batch_norm_forward({.input = TensorView(reinterpret_cast<bfloat16*>(x_bits.data()), shape),
                        .output = TensorView(reinterpret_cast<bfloat16*>(y_bits.data()), shape),
                        .weight = TensorView(weight.data(), {d.c}),
                        .bias = TensorView(bias.data(), {d.c}),
                        .save_mean = TensorView(mean.data(), {d.c}),
                        .save_invstd = TensorView(invstd.data(), {d.c})},
                       {.training = true});
    EXPECT_THAT(last_dispatch_report(), HasSubstr("ran registry_test_batch_norm_bfloat16 (schedule hand"));
    const reference::ForwardTraining want16 = reference::batch_norm_forward_training(
        x16.data(), d, weight.data(), bias.data(), nullptr, nullptr, 0.1, 1e-5);
    std::vector<float> y16(y_bits.size());
    std::transform(y_bits.begin(), y_bits.end(), y16.begin(),
                   [](uint16_t bits) { return test::from_bits(DType::bfloat16, bits); });
    EXPECT_TRUE(test::close("y (bfloat16)", y16, want16.y, test::storage_tolerance(DType::bfloat16)));
    EXPECT_TRUE(test::close("save_mean (bfloat16 x)", mean, want16.mean, 1e-5));
    EXPECT_TRUE(test::close("save_invstd (bfloat16 x)", invstd, want16.invstd, 1e-5));
  } else {
    std::printf("registry_test_batch_norm_bfloat16 (%s) does not run on this CPU: its call is not checked\n",
                mine_bfloat16->isa.c_str());
  }
#endif

  // After the first dispatch the list is fixed.
  const KernelRegistration late = good("registry_test_late");
  EXPECT_THAT(refusal({late}), HasSubstr("kernel registry_test_late registered after dispatch first ran"));
}

}  // namespace
}  // namespace fusednorm
