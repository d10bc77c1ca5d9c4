// The CUDA kernels (include/fusednorm/cuda.h) against the float64 reference (tests/support/norm_reference.h):
// every CUDA variant fusednorm::cuda::variants() lists, over the shared shape lists (odd sizes, the real
// networks' shapes scaled down), each output poisoned with NaN on the device first and every element checked;
// hard numerics (a mean 1e4 times the standard deviation); bitwise repeatability; the stream argument; errors;
// SyncBatchNorm on device tensors over groups of threads; NcclCommunicator (fusednorm/nccl.h) in a group of one.
// Without a GPU (no libcuda, no device, or a build without FUSEDNORM_CUDA) every case but the availability ones and
// NCCL's argument and missing-GPU errors is skipped with the reason, and ctest reports it as skipped.
//
// Device memory comes from the driver directly (dlopen of libcuda.so.1): this machine needs no CUDA toolkit.
#include "fusednorm/cuda.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fusednorm/nccl.h"
#include "support/norm_reference.h"
#include "support/shapes.h"
#include "support/sync_batch.h"
#include "support/test_data.h"
#include "support/thread_group.h"

namespace fusednorm {
namespace {

using reference::Grouping;
using test::close;
using test::Random;

// The driver calls the test makes itself: device memory and copies in device 0's primary context, made current on
// the calling thread first (SyncBatchNorm's groups are threads).
class Driver {
 public:
  static Driver& get() {
    static Driver driver;
    return driver;
  }
  bool ok() const { return ok_; }
  uint64_t alloc(size_t bytes) {
    uint64_t p = 0;
    current();
    expect(mem_alloc_(&p, bytes), "cuMemAlloc");
    return p;
  }
  void free(uint64_t p) {
    current();
    mem_free_(p);
  }
  void upload(uint64_t to, const float* from, size_t floats) {
    current();
    expect(htod_(to, from, floats * sizeof(float)), "cuMemcpyHtoD");
  }
  void download(float* to, uint64_t from, size_t floats) {
    current();
    expect(dtoh_(to, from, floats * sizeof(float)), "cuMemcpyDtoH");
  }
  void* create_stream() {
    void* s = nullptr;
    current();
    expect(stream_create_(&s, 1u), "cuStreamCreate");
    return s;
  }

 private:
  Driver() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) return;
    auto sym = [&](const char* name) { return dlsym(lib, name); };
    auto init = reinterpret_cast<int (*)(unsigned)>(sym("cuInit"));
    auto device_get = reinterpret_cast<int (*)(int*, int)>(sym("cuDeviceGet"));
    auto retain = reinterpret_cast<int (*)(void**, int)>(sym("cuDevicePrimaryCtxRetain"));
    set_current_ = reinterpret_cast<int (*)(void*)>(sym("cuCtxSetCurrent"));
    mem_alloc_ = reinterpret_cast<int (*)(uint64_t*, size_t)>(sym("cuMemAlloc_v2"));
    mem_free_ = reinterpret_cast<int (*)(uint64_t)>(sym("cuMemFree_v2"));
    htod_ = reinterpret_cast<int (*)(uint64_t, const void*, size_t)>(sym("cuMemcpyHtoD_v2"));
    dtoh_ = reinterpret_cast<int (*)(void*, uint64_t, size_t)>(sym("cuMemcpyDtoH_v2"));
    stream_create_ = reinterpret_cast<int (*)(void**, unsigned)>(sym("cuStreamCreate"));
    if (!init || !device_get || !retain || !set_current_ || !mem_alloc_ || !mem_free_ || !htod_ || !dtoh_ ||
        !stream_create_) {
      return;
    }
    int device = 0;
    if (init(0) != 0 || device_get(&device, 0) != 0 || retain(&context_, device) != 0) return;
    ok_ = set_current_(context_) == 0;
  }
  void current() { expect(set_current_(context_), "cuCtxSetCurrent"); }
  static void expect(int result, const char* call) {
    if (result != 0) throw std::runtime_error(std::string(call) + " failed with CUresult " + std::to_string(result));
  }
  bool ok_ = false;
  void* context_ = nullptr;
  int (*set_current_)(void*) = nullptr;
  int (*mem_alloc_)(uint64_t*, size_t) = nullptr;
  int (*mem_free_)(uint64_t) = nullptr;
  int (*htod_)(uint64_t, const void*, size_t) = nullptr;
  int (*dtoh_)(void*, uint64_t, size_t) = nullptr;
  int (*stream_create_)(void**, unsigned) = nullptr;
};

// A float32 device array with its host copy.
class DeviceArray {
 public:
  explicit DeviceArray(const std::vector<float>& host) : size_(host.size()) {
    pointer_ = Driver::get().alloc(std::max<size_t>(size_, 1) * sizeof(float));
    Driver::get().upload(pointer_, host.data(), size_);
  }
  ~DeviceArray() { Driver::get().free(pointer_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  float* data() const { return reinterpret_cast<float*>(pointer_); }
  std::vector<float> host() const {
    std::vector<float> v(size_);
    Driver::get().download(v.data(), pointer_, size_);
    return v;
  }
  TensorView view(const std::vector<int64_t>& shape, Layout layout = Layout::nchw) const {
    return TensorView::with_layout(data(), shape, layout);
  }
  TensorView vector() const { return TensorView(data(), {static_cast<int64_t>(size_)}); }

 private:
  size_t size_;
  uint64_t pointer_ = 0;
};

std::unique_ptr<DeviceArray> device(const std::vector<float>& host) { return std::make_unique<DeviceArray>(host); }
std::unique_ptr<DeviceArray> poisoned_device(int64_t size) { return device(test::poisoned(size)); }

// dx against the reference, its error over the scale of the terms it is the difference of, invstd * |dy * weight|
// at most, when that is larger than dx itself. The CUDA kernels fuse products into FMAs (Halide's CUDA code
// generator does, as nvcc does by default), so where dx is a difference of nearly equal terms (a LayerNorm row of
// one element, GroupNorm groups of two) it carries their rounding, about 6e-8 of that scale, not of its own.
::testing::AssertionResult close_gradient(const std::vector<float>& got, const std::vector<double>& ref,
                                          const std::vector<float>& dy, const std::vector<float>& weight,
                                          const std::vector<double>& invstd) {
  double terms = 0, ref_max = 0;
  for (float v : dy) terms = std::max(terms, std::abs(static_cast<double>(v)));
  double weight_max = 0, invstd_max = 0;
  for (float v : weight) weight_max = std::max(weight_max, std::abs(static_cast<double>(v)));
  for (double v : invstd) invstd_max = std::max(invstd_max, v);
  terms *= weight_max * invstd_max;
  for (double r : ref) ref_max = std::max(ref_max, std::abs(r));
  const double scale = std::max({ref_max, terms, 1e-30});
  return test::close_over("dx", got, ref, test::kFloat32Tolerance, [&](size_t) { return scale; },
                          " (scale of the terms " + std::to_string(scale) + ")");
}

// Skips the case with the reason when there is no GPU to run it on.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason;
    if (!cuda::available(&reason)) GTEST_SKIP() << "no CUDA: " << reason;
    if (!Driver::get().ok()) GTEST_SKIP() << "no CUDA: the test's own driver calls failed";
  }
};

bool built(const std::string& norm, const std::string& direction, Layout layout, Epilogue epilogue) {
  for (const VariantInfo& v : cuda::variants()) {
    if (v.norm == norm && v.direction == direction && v.layout == to_string(layout) &&
        v.epilogue == to_string(epilogue)) {
      return true;
    }
  }
  return false;
}

constexpr Epilogue kBatchEpilogues[] = {Epilogue::none, Epilogue::relu, Epilogue::add_relu};
constexpr Layout kLayouts[] = {Layout::nchw, Layout::nhwc};

std::vector<shapes::NamedShape> channel_shapes() {
  std::vector<shapes::NamedShape> all = shapes::odd_sizes();
  for (const auto& s : shapes::resnet50_batch2()) all.push_back(s);
  for (const auto& s : shapes::cache_resident()) all.push_back(s);
  return all;
}

// BatchNorm forward (training, then evaluation with the new running statistics) and backward, one epilogue and
// layout, on one shape; x is made by `make_x` (random by default).
void check_batch_norm(const std::vector<int64_t>& shape, Layout layout, Epilogue epilogue, Random& rng,
                      const std::string& label, double x_offset = 0.0) {
  SCOPED_TRACE(label);
  const reference::Dims d = test::dims_of(shape, layout);
  std::vector<float> x = test::random_input(d, rng);
  for (float& v : x) v = static_cast<float>(v + x_offset);
  const std::vector<float> z = test::random_input(d, rng), dy = test::random_input(d, rng);
  const std::vector<float> weight = test::random_vector(d.c, rng, 0.5, 2.0),
                           bias = test::random_vector(d.c, rng, -1, 1);
  const std::vector<float> running_mean = test::random_vector(d.c, rng, -1, 1);
  const std::vector<float> running_var = test::random_vector(d.c, rng, 0.5, 2.0);
  const bool add = epilogue == Epilogue::add_relu;
  const Grouping g = Grouping::batch(d);
  const reference::Affine affine{weight.data(), bias.data()};
  const reference::Running running{running_mean.data(), running_var.data(), 0.1, true};
  const reference::Forward ref =
      reference::forward(x.data(), g, affine, 1e-5, epilogue, add ? z.data() : nullptr, &running);

  auto dx_ = device(x), dz_ = device(z), dw = device(weight), db = device(bias);
  auto drm = device(running_mean), drv = device(running_var);
  auto dy_out = poisoned_device(d.numel()), dmean = poisoned_device(d.c), dinvstd = poisoned_device(d.c);
  BatchNormForwardTensors t{.input = dx_->view(shape, layout),
                            .output = dy_out->view(shape, layout),
                            .weight = dw->vector(),
                            .bias = db->vector(),
                            .running_mean = drm->vector(),
                            .running_var = drv->vector(),
                            .save_mean = dmean->vector(),
                            .save_invstd = dinvstd->vector()};
  if (add) t.residual = dz_->view(shape, layout);
  cuda::batch_norm_forward(t, {.epilogue = epilogue});
  const std::vector<float> y = dy_out->host();
  EXPECT_TRUE(close("y", y, ref.y));
  EXPECT_TRUE(test::close_statistic("save_mean", dmean->host(), ref.mean, ref.invstd));
  EXPECT_TRUE(close("save_invstd", dinvstd->host(), ref.invstd, test::kFloat32Tolerance, test::Scale::element));
  EXPECT_TRUE(test::close_statistic("running_mean", drm->host(), ref.running_mean, ref.invstd));
  EXPECT_TRUE(close("running_var", drv->host(), ref.running_var, test::kFloat32Tolerance, test::Scale::element));

  if (built("batch_norm", "forward_inference", layout, epilogue)) {
    auto dy_eval = poisoned_device(d.numel());
    BatchNormForwardTensors e{.input = dx_->view(shape, layout),
                              .output = dy_eval->view(shape, layout),
                              .weight = dw->vector(),
                              .bias = db->vector(),
                              .running_mean = drm->vector(),
                              .running_var = drv->vector()};
    if (add) e.residual = dz_->view(shape, layout);
    cuda::batch_norm_forward(e, {.training = false, .epilogue = epilogue});
    const std::vector<float> rm = drm->host(), rv = drv->host();
    std::vector<double> mean(rm.begin(), rm.end()), invstd;
    for (float v : rv) invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + 1e-5));
    EXPECT_TRUE(close(
        "y (evaluation)", dy_eval->host(),
        reference::normalize(x.data(), g, mean.data(), invstd.data(), affine, epilogue, add ? z.data() : nullptr)));
  }

  if (!built("batch_norm", "backward", layout, epilogue)) return;
  const std::vector<float> saved_mean = dmean->host(), saved_invstd = dinvstd->host();
  const std::vector<double> mean(saved_mean.begin(), saved_mean.end()),
      invstd(saved_invstd.begin(), saved_invstd.end());
  const reference::Backward gref =
      reference::backward(x.data(), dy.data(), g, mean.data(), invstd.data(), affine, true, epilogue, y.data());
  auto ddy = device(dy), ddx = poisoned_device(d.numel()), ddz = poisoned_device(d.numel());
  auto dgw = poisoned_device(d.c), dgb = poisoned_device(d.c);
  BatchNormBackwardTensors b{.grad_output = ddy->view(shape, layout),
                             .input = dx_->view(shape, layout),
                             .grad_input = ddx->view(shape, layout),
                             .weight = dw->vector(),
                             .save_mean = dmean->vector(),
                             .save_invstd = dinvstd->vector(),
                             .grad_weight = dgw->vector(),
                             .grad_bias = dgb->vector()};
  if (epilogue != Epilogue::none) b.output = dy_out->view(shape, layout);
  if (add) b.grad_residual = ddz->view(shape, layout);
  cuda::batch_norm_backward(b, {.epilogue = epilogue});
  EXPECT_TRUE(close("dx", ddx->host(), gref.dx));
  EXPECT_TRUE(close("grad_weight", dgw->host(), gref.dweight));
  EXPECT_TRUE(close("grad_bias", dgb->host(), gref.dbias));
  if (add) {
    EXPECT_TRUE(close("grad_residual", ddz->host(), gref.dz));
  }

  // The gradient in evaluation: the running statistics held fixed, invstd from the running variance.
  const std::vector<float> new_mean = drm->host(), new_var = drv->host();
  std::vector<double> fixed_mean(new_mean.begin(), new_mean.end()), fixed_invstd;
  for (float v : new_var) fixed_invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + 1e-5));
  const reference::Backward eref = reference::backward(x.data(), dy.data(), g, fixed_mean.data(), fixed_invstd.data(),
                                                       affine, false, epilogue, y.data());
  auto edx = poisoned_device(d.numel()), edz = poisoned_device(d.numel());
  auto egw = poisoned_device(d.c), egb = poisoned_device(d.c);
  BatchNormBackwardTensors e{.grad_output = ddy->view(shape, layout),
                             .input = dx_->view(shape, layout),
                             .grad_input = edx->view(shape, layout),
                             .weight = dw->vector(),
                             .running_mean = drm->vector(),
                             .running_var = drv->vector(),
                             .grad_weight = egw->vector(),
                             .grad_bias = egb->vector()};
  if (epilogue != Epilogue::none) e.output = dy_out->view(shape, layout);
  if (add) e.grad_residual = edz->view(shape, layout);
  cuda::batch_norm_backward(e, {.training = false, .epilogue = epilogue});
  EXPECT_TRUE(close("dx (evaluation)", edx->host(), eref.dx));
  EXPECT_TRUE(close("grad_weight (evaluation)", egw->host(), eref.dweight));
  EXPECT_TRUE(close("grad_bias (evaluation)", egb->host(), eref.dbias));
  if (add) {
    EXPECT_TRUE(close("grad_residual (evaluation)", edz->host(), eref.dz));
  }
}

TEST(CudaAvailability, SaysWhyNot) {
  std::string reason;
  const bool available = cuda::available(&reason);
  EXPECT_EQ(available, reason.empty()) << reason;
  if (!available) {
    // The entry points refuse with the same reason, before touching the tensors.
    std::vector<float> x(8), y(8);
    try {
      cuda::batch_norm_forward({.input = TensorView(x.data(), {4, 2}), .output = TensorView(y.data(), {4, 2})});
      ADD_FAILURE() << "expected fusednorm::Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
    }
  }
}

TEST_F(CudaTest, BatchNormEveryVariant) {
  for (Layout layout : kLayouts) {
    for (Epilogue epilogue : kBatchEpilogues) {
      if (!built("batch_norm", "forward_training", layout, epilogue)) continue;
      for (const auto& s : channel_shapes()) {
        Random rng(test::seed_for(s.name + to_string(layout) + to_string(epilogue)));
        check_batch_norm(s.shape, layout, epilogue, rng, s.name + " " + to_string(layout) + " " + to_string(epilogue));
      }
    }
  }
}

TEST_F(CudaTest, BatchNormHardNumerics) {
  // A mean 1e4 times the standard deviation: the shifted sums keep float32 accuracy (docs/USAGE.md, "Numerics").
  for (Layout layout : kLayouts) {
    Random rng(test::seed_for("hard" + std::string(to_string(layout))));
    check_batch_norm({4, 17, 13, 17}, layout, Epilogue::none, rng, "mean 1e4 sigma", 1e4 * 1.2);
  }
}

TEST_F(CudaTest, GroupNormEveryVariant) {
  std::vector<shapes::GroupNormShape> all = shapes::group_norm_odd_sizes();
  for (const auto& s : shapes::unet_group_norm_small()) all.push_back(s);
  for (Layout layout : kLayouts) {
    if (!built("group_norm", "forward_training", layout, Epilogue::none)) continue;
    for (const auto& s : all) {
      SCOPED_TRACE(s.name + " " + to_string(layout));
      Random rng(test::seed_for(s.name + to_string(layout)));
      const reference::Dims d = test::dims_of(s.shape, layout);
      const std::vector<float> x = test::random_input(d, rng), dy = test::random_input(d, rng);
      const std::vector<float> w = test::random_vector(d.c, rng, 0.5, 2), b = test::random_vector(d.c, rng, -1, 1);
      const Grouping g = Grouping::group(d, s.groups);
      const reference::Affine affine{w.data(), b.data()};
      const reference::Forward ref = reference::forward(x.data(), g, affine, 1e-5);
      const int64_t stats = d.n * s.groups;
      auto dx_ = device(x), dw = device(w), db = device(b), dy_out = poisoned_device(d.numel());
      auto dmean = poisoned_device(stats), dinvstd = poisoned_device(stats);
      cuda::group_norm_forward({.input = dx_->view(s.shape, layout),
                                .output = dy_out->view(s.shape, layout),
                                .weight = dw->vector(),
                                .bias = db->vector(),
                                .save_mean = dmean->vector(),
                                .save_invstd = dinvstd->vector()},
                               {.num_groups = s.groups});
      EXPECT_TRUE(close("y", dy_out->host(), ref.y));
      EXPECT_TRUE(test::close_statistic("save_mean", dmean->host(), ref.mean, ref.invstd));
      EXPECT_TRUE(close("save_invstd", dinvstd->host(), ref.invstd, test::kFloat32Tolerance, test::Scale::element));
      if (!built("group_norm", "backward", layout, Epilogue::none)) continue;
      const std::vector<float> sm = dmean->host(), si = dinvstd->host();
      const std::vector<double> mean(sm.begin(), sm.end()), invstd(si.begin(), si.end());
      const reference::Backward gref =
          reference::backward(x.data(), dy.data(), g, mean.data(), invstd.data(), affine, true);
      auto ddy = device(dy), ddx = poisoned_device(d.numel()), dgw = poisoned_device(d.c), dgb = poisoned_device(d.c);
      cuda::group_norm_backward({.grad_output = ddy->view(s.shape, layout),
                                 .input = dx_->view(s.shape, layout),
                                 .grad_input = ddx->view(s.shape, layout),
                                 .save_mean = dmean->vector(),
                                 .save_invstd = dinvstd->vector(),
                                 .weight = dw->vector(),
                                 .grad_weight = dgw->vector(),
                                 .grad_bias = dgb->vector()},
                                {.num_groups = s.groups});
      EXPECT_TRUE(close_gradient(ddx->host(), gref.dx, dy, w, invstd));
      EXPECT_TRUE(close("grad_weight", dgw->host(), gref.dweight));
      EXPECT_TRUE(close("grad_bias", dgb->host(), gref.dbias));
    }
  }
}

TEST_F(CudaTest, LayerNormAndRMSNormEveryVariant) {
  std::vector<shapes::RowsShape> all = shapes::rows_odd_sizes();
  for (const auto& s : shapes::transformer_rows_small()) all.push_back(s);
  for (const auto& s : shapes::cache_resident_rows()) all.push_back(s);
  for (bool rms : {false, true}) {
    if (!built(rms ? "rms_norm" : "layer_norm", "forward_training", Layout::nchw, Epilogue::none)) continue;
    for (const auto& s : all) {
      SCOPED_TRACE(s.name + (rms ? " rms" : " layer"));
      Random rng(test::seed_for(s.name + (rms ? "rms" : "layer")));
      const std::vector<int64_t> normalized(s.shape.end() - s.normalized_dims, s.shape.end());
      int64_t features = 1, rows = 1;
      for (int64_t e : normalized) features *= e;
      for (size_t i = 0; i < s.shape.size() - static_cast<size_t>(s.normalized_dims); i++) rows *= s.shape[i];
      const reference::Dims d{rows, features, 1, Layout::nchw};
      const std::vector<float> x = test::random_input(d, rng), dy = test::random_input(d, rng);
      const std::vector<float> w = test::random_vector(features, rng, 0.5, 2),
                               b = test::random_vector(features, rng, -1, 1);
      const Grouping g = Grouping::rows(rms ? reference::Norm::rms : reference::Norm::layer, rows, features);
      const reference::Affine affine{w.data(), rms ? nullptr : b.data()};
      const double eps = 1e-5;
      const reference::Forward ref = reference::forward(x.data(), g, affine, eps);
      auto dx_ = device(x), dw = device(w), db = device(b), dy_out = poisoned_device(d.numel());
      auto dmean = poisoned_device(rows), dinvstd = poisoned_device(rows);
      const TensorView wv(dw->data(), normalized), bv(db->data(), normalized);
      if (rms) {
        cuda::rms_norm_forward({.input = dx_->view(s.shape),
                                .output = dy_out->view(s.shape),
                                .weight = wv,
                                .save_invstd = dinvstd->vector()},
                               {.normalized_shape = normalized, .eps = eps});
      } else {
        cuda::layer_norm_forward({.input = dx_->view(s.shape),
                                  .output = dy_out->view(s.shape),
                                  .weight = wv,
                                  .bias = bv,
                                  .save_mean = dmean->vector(),
                                  .save_invstd = dinvstd->vector()},
                                 {.normalized_shape = normalized, .eps = eps});
      }
      EXPECT_TRUE(close("y", dy_out->host(), ref.y));
      EXPECT_TRUE(close("save_invstd", dinvstd->host(), ref.invstd, test::kFloat32Tolerance, test::Scale::element));
      if (!built(rms ? "rms_norm" : "layer_norm", "backward", Layout::nchw, Epilogue::none)) continue;
      const std::vector<float> si = dinvstd->host();
      std::vector<double> mean, invstd(si.begin(), si.end());
      if (!rms) {
        const std::vector<float> sm = dmean->host();
        mean.assign(sm.begin(), sm.end());
      }
      const reference::Backward gref =
          reference::backward(x.data(), dy.data(), g, rms ? nullptr : mean.data(), invstd.data(), affine, true);
      auto ddy = device(dy), ddx = poisoned_device(d.numel());
      auto dgw = poisoned_device(features), dgb = poisoned_device(features);
      const TensorView gw(dgw->data(), normalized), gb(dgb->data(), normalized);
      if (rms) {
        cuda::rms_norm_backward({.grad_output = ddy->view(s.shape),
                                 .input = dx_->view(s.shape),
                                 .grad_input = ddx->view(s.shape),
                                 .save_invstd = dinvstd->vector(),
                                 .weight = wv,
                                 .grad_weight = gw},
                                {.normalized_shape = normalized, .eps = eps});
      } else {
        cuda::layer_norm_backward({.grad_output = ddy->view(s.shape),
                                   .input = dx_->view(s.shape),
                                   .grad_input = ddx->view(s.shape),
                                   .save_mean = dmean->vector(),
                                   .save_invstd = dinvstd->vector(),
                                   .weight = wv,
                                   .grad_weight = gw,
                                   .grad_bias = gb},
                                  {.normalized_shape = normalized, .eps = eps});
        EXPECT_TRUE(close("grad_bias", dgb->host(), gref.dbias));
      }
      EXPECT_TRUE(close_gradient(ddx->host(), gref.dx, dy, w, invstd));
      EXPECT_TRUE(close("grad_weight", dgw->host(), gref.dweight));
    }
  }
}

TEST_F(CudaTest, BitwiseRepeatableOnAStream) {
  // The reductions have a fixed order (no atomics): two runs give the same bits, on a stream of the caller's.
  void* stream = Driver::get().create_stream();
  const std::vector<int64_t> shape{8, 64, 28, 28};
  Random rng(test::seed_for_current_test());
  const reference::Dims d = test::dims_of(shape, Layout::nchw);
  auto x = device(test::random_input(d, rng)), w = device(test::random_vector(d.c, rng, 0.5, 2));
  auto b = device(test::random_vector(d.c, rng, -1, 1));
  std::vector<std::vector<float>> results;
  for (int run = 0; run < 2; run++) {
    auto y = poisoned_device(d.numel());
    cuda::batch_norm_forward(
        {.input = x->view(shape), .output = y->view(shape), .weight = w->vector(), .bias = b->vector()}, {}, stream);
    cuda::synchronize(stream);
    results.push_back(y->host());
  }
  EXPECT_EQ(results[0], results[1]);
}

TEST_F(CudaTest, ErrorsNameTheArgument) {
  const std::vector<int64_t> shape{4, 3, 5, 5};
  auto x = device(std::vector<float>(300, 1.0f)), y = poisoned_device(300), w = device(std::vector<float>(3, 1.0f));
  // Shared checks (norm_common): the CPU path's message.
  try {
    cuda::batch_norm_forward(
        {.input = x->view(shape), .output = y->view({4, 3, 5, 4}), .weight = w->vector(), .bias = w->vector()});
    ADD_FAILURE() << "expected fusednorm::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("output has shape [4, 3, 5, 4], expected [4, 3, 5, 5]"), std::string::npos)
        << e.what();
  }
  // CUDA's own: float32 only.
  const TensorView x16({reinterpret_cast<void*>(x->data()), DType::bfloat16}, shape);
  const TensorView y16({reinterpret_cast<void*>(y->data()), DType::bfloat16}, shape);
  try {
    cuda::batch_norm_forward({.input = x16, .output = y16, .weight = w->vector(), .bias = w->vector()});
    ADD_FAILURE() << "expected fusednorm::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("input has dtype bfloat16, expected float32 on CUDA"), std::string::npos)
        << e.what();
  }
}

// Calls without weight and bias, as PyTorch's affine=False layers make them: the CUDA kernels are affine only, and
// dispatch runs them with weight 1 and bias 0 from the device pool (the parameter gradients into it too).
TEST_F(CudaTest, CallsWithoutParametersRunTheAffineKernels) {
  const std::vector<int64_t> shape{3, 5, 7, 9};
  for (Layout layout : kLayouts) {
    SCOPED_TRACE(to_string(layout));
    Random rng(test::seed_for(std::string("plain") + to_string(layout)));
    const reference::Dims d = test::dims_of(shape, layout);
    const std::vector<float> x = test::random_input(d, rng), dy = test::random_input(d, rng);
    const reference::Affine none{};
    for (bool group : {false, true}) {
      SCOPED_TRACE(group ? "group_norm, 5 groups" : "batch_norm");
      const std::string norm = group ? "group_norm" : "batch_norm";
      if (!built(norm, "forward_training", layout, Epilogue::none)) continue;
      const Grouping g = group ? Grouping::group(d, 5) : Grouping::batch(d);
      const reference::Forward ref = reference::forward(x.data(), g, none, 1e-5);
      const int64_t stats = group ? d.n * 5 : d.c;
      auto dx_ = device(x), y = poisoned_device(d.numel()), mean = poisoned_device(stats),
           invstd = poisoned_device(stats);
      if (group) {
        cuda::group_norm_forward({.input = dx_->view(shape, layout),
                                  .output = y->view(shape, layout),
                                  .save_mean = mean->vector(),
                                  .save_invstd = invstd->vector()},
                                 {.num_groups = 5});
      } else {
        cuda::batch_norm_forward({.input = dx_->view(shape, layout),
                                  .output = y->view(shape, layout),
                                  .save_mean = mean->vector(),
                                  .save_invstd = invstd->vector()});
      }
      EXPECT_TRUE(close("y", y->host(), ref.y));
      EXPECT_NE(last_dispatch_report().find("weight 1, bias 0"), std::string::npos) << last_dispatch_report();
      const std::vector<float> sm = mean->host(), si = invstd->host();
      const std::vector<double> m(sm.begin(), sm.end()), s(si.begin(), si.end());
      if (!built(norm, "backward", layout, Epilogue::none)) continue;
      const reference::Backward gref = reference::backward(x.data(), dy.data(), g, m.data(), s.data(), none, true);
      auto ddy = device(dy), ddx = poisoned_device(d.numel());
      if (group) {
        cuda::group_norm_backward({.grad_output = ddy->view(shape, layout),
                                   .input = dx_->view(shape, layout),
                                   .grad_input = ddx->view(shape, layout),
                                   .save_mean = mean->vector(),
                                   .save_invstd = invstd->vector()},
                                  {.num_groups = 5});
      } else {
        cuda::batch_norm_backward({.grad_output = ddy->view(shape, layout),
                                   .input = dx_->view(shape, layout),
                                   .grad_input = ddx->view(shape, layout),
                                   .save_mean = mean->vector(),
                                   .save_invstd = invstd->vector()});
      }
      EXPECT_TRUE(close_gradient(ddx->host(), gref.dx, dy, std::vector<float>(1, 1.0f), s));
    }
  }
}

// NcclCommunicator (fusednorm/nccl.h). Its arguments are checked before CUDA or NCCL is loaded, on every machine.
void expect_error_containing(const std::function<void()>& call, const std::string& text) {
  try {
    call();
    ADD_FAILURE() << "expected fusednorm::Error containing: " << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

// Device copies of a call's host views, for SyncBatchNorm's shared checks (tests/support/sync_batch.h), which read
// host memory: in() copies a view to the device, out() too and copy_back() copies it back over the host view (the
// members' outputs and state; their shared inputs are only read, by every member's thread).
class DeviceCopies {
 public:
  std::optional<TensorView> in(const std::optional<TensorView>& host) { return copy(host, false); }
  std::optional<TensorView> out(const std::optional<TensorView>& host) { return copy(host, true); }
  void copy_back() {
    cuda::synchronize();
    for (const auto& [host, copy] : written_) {
      const std::vector<float> values = copy->host();
      std::copy(values.begin(), values.end(), host.data<float>());
    }
  }

 private:
  std::optional<TensorView> copy(const std::optional<TensorView>& host, bool written) {
    if (!host) return std::nullopt;
    const float* data = host->data<float>();
    std::unique_ptr<DeviceArray> on_device = device(std::vector<float>(data, data + host->numel()));
    const TensorView view(on_device->data(), host->shape(), host->strides());
    (written ? written_ : read_).emplace_back(*host, std::move(on_device));
    return view;
  }
  std::vector<std::pair<TensorView, std::unique_ptr<DeviceArray>>> read_, written_;
};

// fusednorm::cuda's SyncBatchNorm on device copies of the batch's tensors.
test::SyncCalls cuda_sync_calls() {
  test::SyncCalls calls;
  calls.forward = [](const BatchNormForwardTensors& t, Communicator& group, const BatchNormOptions& options) {
    DeviceCopies on_device;
    BatchNormForwardTensors d{*on_device.in(t.input), *on_device.out(t.output)};
    d.weight = on_device.in(t.weight);
    d.bias = on_device.in(t.bias);
    d.running_mean = on_device.out(t.running_mean);
    d.running_var = on_device.out(t.running_var);
    d.num_batches_tracked = t.num_batches_tracked;
    d.save_mean = on_device.out(t.save_mean);
    d.save_invstd = on_device.out(t.save_invstd);
    d.residual = on_device.in(t.residual);
    cuda::sync_batch_norm_forward(d, group, options);
    on_device.copy_back();
  };
  calls.backward = [](const BatchNormBackwardTensors& t, Communicator& group, const BatchNormOptions& options) {
    DeviceCopies on_device;
    BatchNormBackwardTensors d{*on_device.in(t.grad_output), *on_device.in(t.input), *on_device.out(t.grad_input)};
    d.weight = on_device.in(t.weight);
    d.save_mean = on_device.in(t.save_mean);
    d.save_invstd = on_device.in(t.save_invstd);
    d.running_mean = on_device.in(t.running_mean);
    d.running_var = on_device.in(t.running_var);
    d.grad_weight = on_device.out(t.grad_weight);
    d.grad_bias = on_device.out(t.grad_bias);
    d.output = on_device.in(t.output);
    d.grad_residual = on_device.out(t.grad_residual);
    cuda::sync_batch_norm_backward(d, group, options);
    on_device.copy_back();
  };
  return calls;
}

// SyncBatchNorm on device tensors over groups of threads of this process (one GPU), against the float64 reference
// over the whole batch as sync_batch_norm_test's CPU groups are: uneven splits with an empty member, every epilogue,
// both layouts, and the hard numerics.
TEST_F(CudaTest, SyncBatchNormOnDeviceTensors) {
  for (Layout layout : kLayouts) {
    for (Epilogue epilogue : kBatchEpilogues) {
      for (int members : {1, 3}) {
        for (const test::Split& split : test::splits(members)) {
          SCOPED_TRACE(std::string(to_string(layout)) + " " + to_string(epilogue) + " shape " +
                       ::testing::PrintToString(split.shape) + " split " + ::testing::PrintToString(split.members));
          Random rng(test::seed_for(::testing::PrintToString(split.shape) + to_string(layout) + to_string(epilogue)));
          test::Batch b(split.shape, layout, split.members, epilogue, rng);
          test::expect_matches_whole_batch(b, test::options_for(epilogue), test::kFloat32Tolerance, test::on_threads,
                                           cuda_sync_calls());
        }
      }
    }
    SCOPED_TRACE(std::string(to_string(layout)) + " mean 1e4 sigma");
    Random rng(test::seed_for("sync hard" + std::string(to_string(layout))));
    test::Batch b({9, 5, 7, 3}, layout, test::uneven_split(9, 3), Epilogue::none, rng);
    test::make_hard(b, rng);
    test::expect_matches_whole_batch(b, test::hard_options(Epilogue::none), test::kHardStatisticTolerance,
                                     test::on_threads, cuda_sync_calls());
  }
}

TEST(CudaAvailability, SyncBatchNormSaysWhyNot) {
  std::string reason;
  if (cuda::available(&reason)) GTEST_SKIP() << "CUDA is available: SyncBatchNormOnDeviceTensors covers it";
  test::ThreadGroup group(1);
  test::ThreadMember member(group, 0);
  std::vector<float> x(8), y(8);
  try {
    cuda::sync_batch_norm_forward({.input = TensorView(x.data(), {4, 2}), .output = TensorView(y.data(), {4, 2})},
                                  member);
    ADD_FAILURE() << "expected fusednorm::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), Error::Kind::device);
    EXPECT_EQ(what.rfind("sync_batch_norm: CUDA is not available: ", 0), 0u) << what;
    EXPECT_NE(what.find(reason), std::string::npos) << what;
  }
}

TEST(NcclTest, ArgumentsAreCheckedBeforeAnythingLoads) {
  const NcclUniqueId id{};
  expect_error_containing([&] { NcclCommunicator(id, 1, 1); },
                          "NcclCommunicator: rank is 1, expected 0 to size - 1 = 0");
  expect_error_containing([&] { NcclCommunicator(id, -1, 2); }, "NcclCommunicator: rank is -1");
  expect_error_containing([&] { NcclCommunicator(id, 0, 0); }, "NcclCommunicator: size is 0, expected at least 1");
}

// Whether this machine has what a group needs: a GPU and libnccl.so.2 (PyTorch's wheel carries one:
// scripts/gpu_check.sh puts it on the library path).
bool nccl_usable(std::string* reason) {
  if (!cuda::available(reason)) return false;
  void* library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char* why = dlerror();
    *reason = why ? why : "libnccl.so.2 does not load";
    return false;
  }
  dlclose(library);
  return true;
}

TEST(NcclTest, WithoutAGpuOrNcclTheErrorSaysWhich) {
  std::string reason;
  if (nccl_usable(&reason)) GTEST_SKIP() << "this machine has a GPU and NCCL: GroupOfOne covers them";
  try {
    nccl_unique_id();
    ADD_FAILURE() << "expected fusednorm::Error (" << reason << ")";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), Error::Kind::device);
    EXPECT_EQ(what.rfind("nccl_unique_id: ", 0), 0u) << what;
    EXPECT_NE(what.find(reason), std::string::npos) << what << " does not say: " << reason;
  }
}

// A group of one on the GPU: the allgather returns what it was given, and SyncBatchNorm over it matches the float64
// reference of the batch as sync_batch_norm_test's groups do (CPU tensors: the collective is what is under test).
TEST(NcclTest, GroupOfOne) {
  std::string reason;
  if (!nccl_usable(&reason)) GTEST_SKIP() << "no GPU or no NCCL: " << reason;
  NcclCommunicator group(nccl_unique_id(), 0, 1);
  EXPECT_EQ(group.rank(), 0);
  EXPECT_EQ(group.size(), 1);
  const std::vector<double> values{1.5, -2.0, 3e300, std::numeric_limits<double>::denorm_min()};
  std::vector<double> gathered(values.size(), std::numeric_limits<double>::quiet_NaN());
  group.allgather(values, gathered);
  EXPECT_EQ(gathered, values);
  std::vector<double> too_small(values.size() - 1);
  expect_error_containing([&] { group.allgather(values, too_small); },
                          "NcclCommunicator::allgather: gathered holds 3 values, expected size() x values = 1 x 4");
  Random rng(test::seed_for_current_test());
  for (Layout layout : {Layout::nchw, Layout::nhwc}) {
    SCOPED_TRACE(to_string(layout));
    test::Batch b({5, 3, 4, 6}, layout, {5}, Epilogue::relu, rng);
    test::expect_matches_whole_batch(b, test::options_for(Epilogue::relu), test::kFloat32Tolerance,
                                     [&](test::Batch&, const test::MemberCall& call) { call(group); });
    SCOPED_TRACE("device tensors");
    test::Batch on_device({5, 3, 4, 6}, layout, {5}, Epilogue::relu, rng);
    test::expect_matches_whole_batch(on_device, test::options_for(Epilogue::relu), test::kFloat32Tolerance,
                                     [&](test::Batch&, const test::MemberCall& call) { call(group); },
                                     cuda_sync_calls());
  }
}

}  // namespace
}  // namespace fusednorm
