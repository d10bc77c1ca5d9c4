// fusednorm_bench --tune: for each kernel (norm, direction, layout, epilogue, affine) with more than one variant
// that runs here, and each shape class, every variant is run on representative shapes of the class, checked
// against the float64 reference, and timed; the table of their times is what dispatch loads
// (runtime/tuning.h has the format, docs/TUNING.md the rules).
#include "bench/tune.h"

#include <HalideRuntime.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "bench/buffers.h"
#include "bench/timing.h"
#include "bench/verify.h"
#include "fusednorm/batch_norm.h"
#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm/group_norm.h"
#include "fusednorm/instance_norm.h"
#include "fusednorm/layer_norm.h"
#include "runtime/call_tensors.h"
#include "runtime/tuning.h"
#include "support/norm_reference.h"
#include "support/shapes.h"

namespace fusednorm::bench {
namespace {

constexpr double kTuneEps = 1e-5;
constexpr double kTuneMomentum = 0.1;
// Cold runs rotate through buffer sets up to this much memory, and flush the caches between runs beyond it.
constexpr int64_t kRotationBudgetBytes = int64_t{4} << 30;

// ---------------------------------------------------------------------------------------------------------
// Kernels and their candidates.

struct Kernel {
  std::string name;                     // VariantInfo::kernel
  VariantInfo what;                     // its first variant: norm, direction, layout, epilogue, affine
  std::vector<VariantInfo> candidates;  // the variants that run here, in dispatch's table order
};

// The kernels with more than one variant that runs here (under FUSEDNORM_MAX_ISA, if set), in table order. Not
// SyncBatchNorm's split kernels (statistics, backward_reduce, backward_elementwise): the tuner times a norm's own
// directions only, and dispatch runs the split kernels' untuned choice.
constexpr Direction kTunedDirections[] = {Direction::forward_training, Direction::forward_inference,
                                         Direction::backward};

bool is_tuned_direction(const std::string& name) {
  return std::any_of(std::begin(kTunedDirections), std::end(kTunedDirections),
                     [&](Direction d) { return name == detail::to_string(d); });
}

std::vector<Kernel> kernels_to_tune() {
  std::vector<Kernel> kernels;
  for (const VariantInfo& v : variants()) {
    if (!v.runs_here || !is_tuned_direction(v.direction)) continue;
    auto found = std::find_if(kernels.begin(), kernels.end(), [&](const Kernel& k) { return k.name == v.kernel; });
    if (found == kernels.end()) found = kernels.insert(kernels.end(), Kernel{v.kernel, v, {}});
    found->candidates.push_back(v);
  }
  std::erase_if(kernels, [](const Kernel& k) { return k.candidates.size() < 2; });
  return kernels;
}

bool is_rows(const std::string& norm) { return norm == "layer_norm" || norm == "rms_norm"; }

Epilogue epilogue_named(const std::string& name) {
  for (Epilogue e : {Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu}) {
    if (name == to_string(e)) return e;
  }
  throw Error(fmt::format("fusednorm_bench --tune: unknown epilogue '{}'", name));
}

Direction direction_named(const std::string& name) {
  for (Direction d : kTunedDirections) {
    if (name == detail::to_string(d)) return d;
  }
  throw Error(fmt::format("fusednorm_bench --tune: unknown direction '{}'", name));
}

// ---------------------------------------------------------------------------------------------------------
// Shapes and classes.

struct TuneShape {
  std::string name;
  std::vector<int64_t> shape;   // (N, C, *spatial), or (*rows, *normalized_shape)
  int64_t groups = 1;           // GroupNorm
  int64_t normalized_dims = 1;  // LayerNorm, RMSNorm
};

int64_t elements_of(const TuneShape& s) {
  int64_t n = 1;
  for (int64_t e : s.shape) n *= e;
  return n;
}

// The shapes of tests/support/shapes.h a norm can take, smallest lists first.
std::vector<TuneShape> shape_pool(const std::string& norm) {
  std::vector<TuneShape> pool;
  if (norm == "group_norm") {
    for (auto list :
         {shapes::cache_resident_group_norm(), shapes::unet_group_norm_small(), shapes::unet_group_norm()}) {
      for (const shapes::GroupNormShape& s : list) pool.push_back({s.name, s.shape, s.groups});
    }
  } else if (is_rows(norm)) {
    for (auto list : {shapes::cache_resident_rows(), shapes::transformer_rows_small(), shapes::transformer_rows()}) {
      for (const shapes::RowsShape& s : list) pool.push_back({s.name, s.shape, 1, s.normalized_dims});
    }
  } else {
    std::vector<std::vector<shapes::NamedShape>> lists = {shapes::cache_resident(), shapes::resnet50_batch2(),
                                                          shapes::resnet50_batch32()};
    if (norm == "batch_norm") {  // InstanceNorm needs spatial extent: more than one value per statistic
      lists.push_back(shapes::mlp_batch_norm_1d_small());
      lists.push_back(shapes::mlp_batch_norm_1d());
    }
    for (const auto& list : lists) {
      for (const shapes::NamedShape& s : list) pool.push_back({s.name, s.shape});
    }
  }
  return pool;
}

int64_t working_set(const Kernel& k, const TuneShape& s) {
  return detail::working_set_bytes(direction_named(k.what.direction), epilogue_named(k.what.epilogue), elements_of(s));
}

// The total L2 of the cores: the per-core (or per-cluster) L2 times how many there are, from sysfs; 1 MiB per
// core where sysfs does not say.
int64_t total_l2_bytes(int cores) {
  for (int index = 0; index < 8; index++) {
    const std::string dir = fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/", index);
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size"),
        shared_file(dir + "shared_cpu_list");
    int level = 0;
    std::string type, size, shared;
    if (!(level_file >> level) || !(type_file >> type) || !(size_file >> size) || level != 2 || type == "Instruction") {
      continue;
    }
    int64_t bytes = std::atoll(size.c_str());
    if (size.ends_with("K")) bytes <<= 10;
    if (size.ends_with("M")) bytes <<= 20;
    // "0-1" or "0,2": the CPUs sharing this L2.
    int sharing = 1;
    if (shared_file >> shared) {
      sharing = 0;
      for (size_t pos = 0; pos < shared.size();) {
        const size_t comma = shared.find(',', pos);
        const std::string part = shared.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        const size_t dash = part.find('-');
        sharing += dash == std::string::npos ? 1 : std::atoi(part.c_str() + dash + 1) - std::atoi(part.c_str()) + 1;
        pos = comma == std::string::npos ? shared.size() : comma + 1;
      }
    }
    if (bytes > 0) return bytes * std::max(1, cores / std::max(1, sharing));
  }
  return (int64_t{1} << 20) * cores;
}

// cache: the working set fits the cores' L2 together (fixed costs and compute dominate); llc: it fits the
// last-level cache; dram: it does not (memory bandwidth dominates).
std::vector<detail::TuningClass> shape_classes(const MachineInfo& machine) {
  const int64_t l2 = total_l2_bytes(machine.cores);
  const int64_t llc = std::max(machine.llc_bytes, 2 * l2);
  return {{"cache", l2}, {"llc", llc}, {"dram", -1}};
}

// The working set a class's shapes aim at: a quarter of the first class's bound, the geometric middle of a
// bounded class, 1.25 times the bound below the unbounded one (cold, yet not much more to fill and check).
double class_target(const std::vector<detail::TuningClass>& classes, size_t i) {
  const double low = i == 0 ? 0.0 : static_cast<double>(classes[i - 1].max_bytes);
  if (classes[i].max_bytes < 0) return 1.25 * low;
  const double high = static_cast<double>(classes[i].max_bytes);
  return i == 0 ? high / 4 : std::sqrt(low * high);
}

bool in_class(const std::vector<detail::TuningClass>& classes, size_t i, int64_t bytes) {
  const int64_t low = i == 0 ? 0 : classes[i - 1].max_bytes;
  return bytes > low && (classes[i].max_bytes < 0 || bytes <= classes[i].max_bytes);
}

// Up to `count` shapes of the pool in class i, those nearest the class's target first. Where the pool has none,
// the pool shape nearest the target with its leading extent (the batch, or the rows) scaled into the class.
std::vector<TuneShape> representative_shapes(const Kernel& k, const std::vector<detail::TuningClass>& classes, size_t i,
                                             size_t count) {
  const double target = class_target(classes, i);
  std::vector<TuneShape> pool = shape_pool(k.what.norm);
  auto distance = [&](const TuneShape& s) {
    return std::abs(std::log(static_cast<double>(working_set(k, s)) / target));
  };
  std::stable_sort(pool.begin(), pool.end(),
                   [&](const TuneShape& a, const TuneShape& b) { return distance(a) < distance(b); });
  std::vector<TuneShape> chosen;
  for (const TuneShape& s : pool) {
    if (chosen.size() < count && in_class(classes, i, working_set(k, s))) chosen.push_back(s);
  }
  if (chosen.empty() && !pool.empty()) {
    TuneShape scaled = pool.front();
    const double factor = target / static_cast<double>(working_set(k, scaled));
    scaled.shape[0] = std::max<int64_t>(1, std::llround(static_cast<double>(scaled.shape[0]) * factor));
    for (int step = 0; step < 64 && !in_class(classes, i, working_set(k, scaled)); step++) {
      scaled.shape[0] += factor > 1 ? 1 : -1;  // rounding near a bound
      if (scaled.shape[0] < 1) return {};
    }
    if (!in_class(classes, i, working_set(k, scaled))) return {};
    scaled.name += " scaled";
    chosen.push_back(scaled);
  }
  // The lists share names across batches (resnet50.stage4 at batch 2 and 32): the extents say which.
  for (TuneShape& s : chosen) {
    s.name += fmt::format("[{}{}]", fmt::join(s.shape, "x"), s.groups > 1 ? fmt::format(" g{}", s.groups) : "");
  }
  return chosen;
}

// ---------------------------------------------------------------------------------------------------------
// One kernel on one shape: its buffers, the float64 reference of its outputs, and a call through the public API.

struct TuneBuffers {
  AlignedBuffer x, z, dy, y, dx, dz;  // y: written by a forward, the ReLU mask read by a backward
};

struct TuneOutput {
  const char* name;
  std::span<const float> got;
  std::vector<double> want;
};

class Workload {
 public:
  Workload(const Kernel& k, const TuneShape& s, int sets) : k_(k), s_(s) {
    const std::string& norm = k.what.norm;
    backward_ = k.what.direction == "backward";
    inference_ = k.what.direction == "forward_inference";
    epilogue_ = epilogue_named(k.what.epilogue);
    layout_ = k.what.layout == "nhwc" ? Layout::nhwc : Layout::nchw;
    elements_ = elements_of(s);
    if (is_rows(norm)) {
      int64_t features = 1;
      for (size_t d = s.shape.size() - static_cast<size_t>(s.normalized_dims); d < s.shape.size(); d++) {
        features *= s.shape[d];
        normalized_shape_.push_back(s.shape[d]);
      }
      grouping_ = reference::Grouping::rows(norm == "rms_norm" ? reference::Norm::rms : reference::Norm::layer,
                                            elements_ / features, features);
    } else {
      int64_t spatial = 1;
      for (size_t d = 2; d < s.shape.size(); d++) spatial *= s.shape[d];
      const reference::Dims dims{s.shape[0], s.shape[1], spatial, layout_};
      grouping_ = norm == "batch_norm"      ? reference::Grouping::batch(dims)
                  : norm == "instance_norm" ? reference::Grouping::instance(dims)
                                            : reference::Grouping::group(dims, s.groups);
    }
    const reference::Dims& d = grouping_.d;
    const bool relu = epilogue_ == Epilogue::relu || epilogue_ == Epilogue::add_relu;
    const bool add = epilogue_ == Epilogue::add_relu;
    for (int i = 0; i < sets; i++) {
      TuneBuffers& b = sets_.emplace_back();
      b.x = AlignedBuffer(elements_);
      if (i == 0) {
        fill_activations(b.x.data(), d, 1);
      } else {
        std::copy_n(sets_[0].x.data(), elements_, b.x.data());  // the same values: rotation is for the cache
      }
      if (add && !backward_) b.z = filled(i, 2, -1.0f, 1.0f);
      if (backward_) {
        b.dy = filled(i, 3, -1.0f, 1.0f);
        if (relu) b.y = AlignedBuffer(elements_);  // the forward's y, set by prepare_reference()
        if (add) b.dz = AlignedBuffer(elements_);
        b.dx = AlignedBuffer(elements_);
      } else {
        b.y = AlignedBuffer(elements_);
      }
    }
    const int64_t parameters = d.c, statistics = grouping_.count();
    weight_ = random(parameters, 0.5f, 1.5f, 11);
    bias_ = random(parameters, -0.5f, 0.5f, 12);
    if (norm == "batch_norm") {
      running_mean_ = random(d.c, -1.0f, 1.0f, 13);
      running_var_ = random(d.c, 0.5f, 2.0f, 14);
    }
    mean_.assign(static_cast<size_t>(statistics), 0.0f);
    invstd_.assign(static_cast<size_t>(statistics), 0.0f);
    grad_weight_.assign(static_cast<size_t>(parameters), 0.0f);
    grad_bias_.assign(static_cast<size_t>(parameters), 0.0f);
  }

  // Computes the reference outputs; for a backward, also its inputs from the forward (the statistics the forward
  // saves, in float32 as it saves them, and y for the ReLU mask).
  void prepare_reference() {
    const TuneBuffers& b = sets_[0];
    const reference::Affine affine = reference_affine();
    const float* z = b.z.size() > 0 ? b.z.data() : nullptr;
    if (inference_) {
      std::vector<double> mean(running_mean_.begin(), running_mean_.end()), invstd;
      for (float v : running_var_) invstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + kTuneEps));
      want_y_ = reference::normalize(b.x.data(), grouping_, mean.data(), invstd.data(), affine, epilogue_, z);
      return;
    }
    reference::Forward forward = reference::forward(b.x.data(), grouping_, affine, kTuneEps, epilogue_, z);
    if (!backward_) {
      want_y_ = std::move(forward.y);
      want_mean_ = std::move(forward.mean);
      want_invstd_ = std::move(forward.invstd);
      return;
    }
    std::vector<double> mean, invstd;
    for (size_t i = 0; i < forward.mean.size(); i++) {
      mean_[i] = static_cast<float>(forward.mean[i]);
      invstd_[i] = static_cast<float>(forward.invstd[i]);
      mean.push_back(mean_[i]);
      invstd.push_back(invstd_[i]);
    }
    if (sets_[0].y.size() > 0) {
      for (TuneBuffers& set : sets_) {
        for (int64_t i = 0; i < elements_; i++) set.y.data()[i] = static_cast<float>(forward.y[static_cast<size_t>(i)]);
      }
    }
    forward = {};
    backward_want_ = reference::backward(b.x.data(), b.dy.data(), grouping_,
                                         grouping_.centred() ? mean.data() : nullptr, invstd.data(), affine,
                                         /*through_statistics=*/true, epilogue_, b.y.size() > 0 ? b.y.data() : nullptr);
  }

  // NaN in every output of set 0, so that one the kernel did not write fails the check.
  void poison() {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    TuneBuffers& b = sets_[0];
    for (AlignedBuffer* out : {backward_ ? &b.dx : &b.y, &b.dz}) std::fill_n(out->data(), out->size(), nan);
    for (std::vector<float>* v : {&grad_weight_, &grad_bias_}) std::fill(v->begin(), v->end(), nan);
    if (!backward_) {
      for (std::vector<float>* v : {&mean_, &invstd_}) std::fill(v->begin(), v->end(), nan);
    }
  }

  // What set 0's call wrote, each with its reference.
  std::vector<TuneOutput> outputs() const {
    const TuneBuffers& b = sets_[0];
    std::vector<TuneOutput> out;
    auto all = [&](const AlignedBuffer& buffer) { return std::span<const float>(buffer.data(), elements_); };
    if (!backward_) {
      out.push_back({"y", all(b.y), want_y_});
      if (!inference_) {
        if (grouping_.centred()) out.push_back({"save_mean", mean_, want_mean_});
        out.push_back({"save_invstd", invstd_, want_invstd_});
      }
      return out;
    }
    out.push_back({"dx", all(b.dx), backward_want_.dx});
    if (k_.what.affine) {
      out.push_back({"grad_weight", grad_weight_, backward_want_.dweight});
      if (k_.what.norm != "rms_norm") out.push_back({"grad_bias", grad_bias_, backward_want_.dbias});
    }
    if (epilogue_ == Epilogue::add_relu) out.push_back({"dz", all(b.dz), backward_want_.dz});
    return out;
  }

  // One call of the public API asking for exactly this kernel, on buffer set `set`.
  void run(int set) {
    TuneBuffers& b = sets_[static_cast<size_t>(set)];
    const std::string& norm = k_.what.norm;
    auto like_x = [&](const AlignedBuffer& buffer) {
      return is_rows(norm) ? TensorView(buffer.data(), s_.shape)
                           : TensorView::with_layout(buffer.data(), s_.shape, layout_);
    };
    auto parameter = [&](std::vector<float>& v) {
      return is_rows(norm) ? TensorView(v.data(), normalized_shape_)
                           : TensorView(v.data(), {static_cast<int64_t>(v.size())});
    };
    auto vector = [](std::vector<float>& v) { return TensorView(v.data(), {static_cast<int64_t>(v.size())}); };
    const bool affine = k_.what.affine, add = epilogue_ == Epilogue::add_relu;
    detail::CallTensors c;
    c.input = like_x(b.x);
    if (b.y.size() > 0) c.output = like_x(b.y);
    if (add && !backward_) c.residual = like_x(b.z);
    if (affine) {
      c.weight = parameter(weight_);
      if (!backward_ || epilogue_ == Epilogue::silu) c.bias = parameter(bias_);  // the backward reads it for SiLU
    }
    if (norm == "batch_norm") {
      c.running_mean = vector(running_mean_);
      c.running_var = vector(running_var_);
    }
    if (!inference_) {
      if (grouping_.centred()) c.save_mean = vector(mean_);
      c.save_invstd = vector(invstd_);
    }
    if (backward_) {
      c.grad_output = like_x(b.dy);
      c.grad_input = like_x(b.dx);
      if (add) c.grad_residual = like_x(b.dz);
      if (affine) {
        c.grad_weight = parameter(grad_weight_);
        if (norm != "rms_norm") c.grad_bias = parameter(grad_bias_);
      }
    }
    if (norm == "batch_norm") {
      // Training with the saved statistics; the running ones are read by the inference only.
      const BatchNormOptions options{
          .training = !inference_, .eps = kTuneEps, .momentum = kTuneMomentum, .epilogue = epilogue_};
      if (backward_) {
        c.running_mean.reset();
        c.running_var.reset();
        batch_norm_backward(detail::convert_tensors<BatchNormBackwardTensors>(c), options);
      } else {
        batch_norm_forward(detail::convert_tensors<BatchNormForwardTensors>(c), options);
      }
    } else if (norm == "instance_norm") {
      const InstanceNormOptions options{.eps = kTuneEps};
      if (backward_) {
        instance_norm_backward(detail::convert_tensors<InstanceNormBackwardTensors>(c), options);
      } else {
        instance_norm_forward(detail::convert_tensors<InstanceNormForwardTensors>(c), options);
      }
    } else if (norm == "group_norm") {
      const GroupNormOptions options{.num_groups = s_.groups, .eps = kTuneEps, .epilogue = epilogue_};
      if (backward_) {
        group_norm_backward(detail::convert_tensors<GroupNormBackwardTensors>(c), options);
      } else {
        group_norm_forward(detail::convert_tensors<GroupNormForwardTensors>(c), options);
      }
    } else if (norm == "layer_norm") {
      const LayerNormOptions options{.normalized_shape = normalized_shape_, .eps = kTuneEps};
      if (backward_) {
        layer_norm_backward(detail::convert_tensors<LayerNormBackwardTensors>(c), options);
      } else {
        layer_norm_forward(detail::convert_tensors<LayerNormForwardTensors>(c), options);
      }
    } else {
      const RMSNormOptions options{.normalized_shape = normalized_shape_, .eps = kTuneEps};
      if (backward_) {
        rms_norm_backward(detail::convert_tensors<RMSNormBackwardTensors>(c), options);
      } else {
        rms_norm_forward(detail::convert_tensors<RMSNormForwardTensors>(c), options);
      }
    }
  }

  int64_t tensor_bytes() const { return elements_ * static_cast<int64_t>(sizeof(float)); }

 private:
  AlignedBuffer filled(int set, uint64_t stream, float low, float high) const {
    AlignedBuffer buffer(elements_);
    fill_uniform(buffer.data(), elements_, low, high, 1000 * static_cast<uint64_t>(set) + stream);
    return buffer;
  }
  static std::vector<float> random(int64_t count, float low, float high, uint64_t seed) {
    std::vector<float> v(static_cast<size_t>(count));
    fill_uniform(v.data(), count, low, high, seed);
    return v;
  }
  reference::Affine reference_affine() const {
    if (!k_.what.affine) return {};
    return {weight_.data(), k_.what.norm == "rms_norm" ? nullptr : bias_.data()};
  }

  const Kernel& k_;
  const TuneShape& s_;
  bool backward_ = false, inference_ = false;
  Epilogue epilogue_ = Epilogue::none;
  Layout layout_ = Layout::nchw;
  int64_t elements_ = 0;
  std::vector<int64_t> normalized_shape_;
  reference::Grouping grouping_{};
  std::vector<TuneBuffers> sets_;
  std::vector<float> weight_, bias_, running_mean_, running_var_, mean_, invstd_, grad_weight_, grad_bias_;
  std::vector<double> want_y_, want_mean_, want_invstd_;
  reference::Backward backward_want_;
};

// ---------------------------------------------------------------------------------------------------------
// The tuning run.

// Makes dispatch run exactly `v`: its schedule, and its instruction set as the best allowed.
void select(const VariantInfo& v) {
  set_schedule(v.schedule);
  set_max_isa(v.isa);
}

// "Adams2019/avx2", "hand/avx512": a candidate in the summary.
std::string short_name(const VariantInfo& v) { return v.schedule + "/" + v.isa; }

struct CandidateResult {
  std::vector<double> medians_ms;  // per shape
  std::string out;                 // why it is out; "" while it is in
  double others_share = 0;         // the most other processes used of the CPUs while it was timed

  double geomean_ms() const {
    double log_sum = 0;
    for (double ms : medians_ms) log_sum += std::log(ms);
    return std::exp(log_sum / static_cast<double>(medians_ms.size()));
  }
};

std::string one_line(std::string text, size_t limit = 200) {
  std::replace_if(
      text.begin(), text.end(), [](char c) { return c == '\n' || c == '\t' || c == '\r'; }, ' ');
  return text.size() > limit ? text.substr(0, limit) + "..." : text;
}

std::string hostname() {
  char name[256] = {};
  return gethostname(name, sizeof(name) - 1) == 0 && name[0] ? name : "unknown";
}

class Tuner {
 public:
  Tuner(const Options& options, const MachineInfo& machine, int threads)
      : options_(options),
        machine_(machine),
        threads_(threads),
        plan_(options.reps > 0 ? fixed_reps_plan(options.reps)
              : options.quick  ? quick_plan()
                               : tuning_plan()),
        classes_(shape_classes(machine)) {
    table_.classes = classes_;
  }

  int run() {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Kernel> kernels = kernels_to_tune();
    const std::string path =
        std::filesystem::absolute(options_.tuning_path.empty() ? "tuning.tsv" : options_.tuning_path).string();
    print_header(kernels.size());
    // The untuned candidates are what is timed: no table of an earlier run takes part (FUSEDNORM_TUNING).
    clear_tuning();
    const std::string max_isa_before = max_isa();
    size_t tuned = 0;
    for (const Kernel& k : kernels) {
      for (size_t i = 0; i < classes_.size(); i++) {
        if (!options_.tune_dram && classes_[i].max_bytes < 0) continue;  // DRAM-sized shapes only with --dram
        if (fmt::format("{}/{}", k.name, classes_[i].name).find(options_.filter) == std::string::npos) continue;
        tuned += tune(k, i);
      }
    }
    set_schedule("hand");
    set_max_isa(max_isa_before);
    if (tuned == 0) {
      fmt::print(stderr, "fusednorm_bench --tune: --filter '{}' selects no kernel and class\n", options_.filter);
      return 2;
    }
    write(path);
    fmt::print("\nTuning table: {} ({} kernel x class entries)\n", path, tuned);
    fmt::print(
        "Use it: FUSEDNORM_TUNING={} <program>, or fusednorm::load_tuning(\"{}\"); FUSEDNORM_VERBOSE=1 "
        "shows each tuned choice.\n",
        path, path);
    fmt::print("Took {:.0f} s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return 0;
  }

 private:
  static TimingPlan tuning_plan() {
    TimingPlan plan;
    plan.warmup_runs = 2;
    plan.warmup_seconds = 0.02;
    plan.min_reps = 5;
    plan.min_seconds = 0.1;
    plan.retries_when_disturbed = 1;
    return plan;
  }

  void print_header(size_t kernels) const {
    std::vector<std::string> described;
    for (size_t i = 0; i < classes_.size(); i++) {
      if (!options_.tune_dram && classes_[i].max_bytes < 0) continue;
      described.push_back(table_describe(i));
    }
    const std::string classes = fmt::format("{}", fmt::join(described, ", "));
    fmt::print("FusedNorm tuning{}{}\n", options_.quick ? " (--quick: one shape per class, short timing)" : "",
               options_.tune_dram ? "" : " (no dram class: --dram)");
    fmt::print("  machine  {}, {} cores, L2 {} in all, last-level cache {} ({})\n", machine_.cpu_model, machine_.cores,
               mebibytes(classes_[0].max_bytes), mebibytes(machine_.llc_bytes), machine_.llc_source);
    fmt::print("  threads  {}\n", threads_);
    fmt::print("  kernels  {} with more than one variant that runs here{}\n", kernels,
               options_.filter.empty() ? "" : fmt::format(" (--filter '{}' on <kernel>/<class>)", options_.filter));
    fmt::print("  classes  {} (working set: the x-shaped tensors a call reads and writes)\n", classes);
    fmt::print(
        "  checked  every candidate on every shape against the float64 reference first: max |out - ref| / "
        "max |ref| < {:g}; one that refuses a shape or fails is out of the class\n",
        kTolerance);
    fmt::print("  timing   median per shape, geometric mean over the class's shapes; cache and llc hot, dram cold\n\n");
    fmt::print("{:<48} {:<6} {:<22} {:>10} {:>10} {:>8}  {}\n", "kernel", "class", "fastest", "ms", "default ms",
               "speedup", "shapes");
    std::fflush(stdout);
  }

  std::string table_describe(size_t i) const {
    detail::TuningTable t;
    t.classes = classes_;
    return t.describe_class(i);
  }

  // The regime of class i's runs: the working set sits in cache for the bounded classes (hot, one buffer set);
  // the unbounded class is cold: runs rotate through sets whose working sets add up to twice the last-level
  // cache, or the caches are flushed between runs where that takes too much memory.
  CacheRegime regime(size_t i, int64_t working_set, int64_t set_bytes) const {
    CacheRegime r;
    if (classes_[i].max_bytes >= 0) return r;
    const int64_t sets = std::max<int64_t>(2, (2 * machine_.llc_bytes + working_set - 1) / working_set);
    if (sets * set_bytes <= kRotationBudgetBytes) {
      r.mode = CacheRegime::Mode::rotate;
      r.buffer_sets = static_cast<int>(sets);
    } else {
      r.mode = CacheRegime::Mode::flush;
      r.flush_buffer = std::make_shared<AlignedBuffer>(2 * machine_.llc_bytes / static_cast<int64_t>(sizeof(float)));
    }
    return r;
  }

  // Times every candidate of kernel k on class i's shapes; returns whether an entry was made.
  bool tune(const Kernel& k, size_t i) {
    // Two shapes per class, one with --quick and for dram (each there fills and checks hundreds of megabytes).
    const bool unbounded = classes_[i].max_bytes < 0;
    const std::vector<TuneShape> shapes = representative_shapes(k, classes_, i, options_.quick || unbounded ? 1 : 2);
    if (shapes.empty()) {
      fmt::print("{:<48} {:<6} no shape of tests/support/shapes.h fits the class\n", k.name, classes_[i].name);
      return false;
    }
    std::vector<CandidateResult> results(k.candidates.size());
    std::string shape_names;
    for (const TuneShape& s : shapes) {
      shape_names += fmt::format("{}{}", shape_names.empty() ? "" : ",", s.name);
      const int64_t ws = working_set(k, s);
      const int64_t tensors = ws / (elements_of(s) * static_cast<int64_t>(sizeof(float)));
      // The sets' buffers: the working set's tensors, and y besides for a backward with the ReLU mask.
      const CacheRegime r = regime(i, ws, (tensors + 1) * elements_of(s) * static_cast<int64_t>(sizeof(float)));
      status(fmt::format("{} {} {}: filling {} buffer set(s), computing the float64 reference", k.name,
                         classes_[i].name, s.name, r.buffer_sets));
      Workload w(k, s, r.buffer_sets);
      w.prepare_reference();
      for (size_t c = 0; c < k.candidates.size(); c++) {
        CandidateResult& result = results[c];
        if (!result.out.empty()) continue;
        const VariantInfo& v = k.candidates[c];
        status(fmt::format("{} {} {}: {}", k.name, classes_[i].name, s.name, short_name(v)));
        select(v);
        w.poison();
        try {
          w.run(0);
        } catch (const Error& e) {
          result.out = fmt::format("refused {}: {}", s.name, one_line(e.what()));
          continue;
        }
        if (const std::string ran = last_dispatch().variant; ran != v.name) {
          throw Error(fmt::format("fusednorm_bench --tune: dispatch ran {}, expected {}: {}", ran, v.name,
                                  last_dispatch_report()));
        }
        for (const TuneOutput& out : w.outputs()) {
          const double error = relative_error(out.got, out.want);
          if (!(error < kTolerance)) {
            result.out =
                fmt::format("wrong {}: {} has error {:.3g}, tolerance {:g}", s.name, out.name, error, kTolerance);
            break;
          }
        }
        if (!result.out.empty()) continue;
        // dram runs take tens of milliseconds each and vary little: fewer of them.
        const TimingPlan& plan = unbounded && options_.reps == 0 ? dram_plan_ : plan_;
        const Timing t = time_runs([&](int set) { w.run(set); }, r, plan, machine_.cores);
        result.medians_ms.push_back(t.median_ms);
        result.others_share = std::max(result.others_share, t.others_cpu_share.value_or(0));
      }
    }
    clear_status();
    record(k, i, shapes.size(), shape_names, results);
    return true;
  }

  void record(const Kernel& k, size_t i, size_t shape_count, const std::string& shape_names,
              const std::vector<CandidateResult>& results) {
    std::optional<size_t> fastest, hand;
    for (size_t c = 0; c < results.size(); c++) {
      if (!results[c].out.empty() || results[c].medians_ms.size() != shape_count) continue;
      if (!fastest || results[c].geomean_ms() < results[*fastest].geomean_ms()) fastest = c;
      if (!hand && k.candidates[c].schedule == "hand") hand = c;  // best instruction set first: the default
    }
    for (size_t c = 0; c < results.size(); c++) {
      detail::TuningRow row{k.name, classes_[i].name, k.candidates[c].name, std::nullopt, results[c].out, shape_names};
      if (results[c].out.empty()) {
        row.ms = results[c].geomean_ms();
        row.result = c == fastest ? "fastest" : "ok";
      }
      table_.rows.push_back(std::move(row));
    }
    std::string disturbed;
    for (const CandidateResult& r : results) {
      if (r.others_share > kDisturbedShare)
        disturbed = fmt::format("  (others used up to {:.0f}% of the CPUs)", 100 * r.others_share);
    }
    if (!fastest) {
      fmt::print("{:<48} {:<6} every candidate is out (see the table)  {}\n", k.name, classes_[i].name, shape_names);
      return;
    }
    const double best = results[*fastest].geomean_ms();
    const double default_ms = hand ? results[*hand].geomean_ms() : std::numeric_limits<double>::quiet_NaN();
    fmt::print("{:<48} {:<6} {:<22} {:>10.4g} {:>10.4g} {:>7.2f}x  {}{}\n", k.name, classes_[i].name,
               short_name(k.candidates[*fastest]), best, default_ms, default_ms / best, shape_names, disturbed);
    for (size_t c = 0; c < results.size(); c++) {
      if (!results[c].out.empty())
        fmt::print("    out: {}: {}\n", short_name(k.candidates[c]), one_line(results[c].out, 150));
    }
    std::fflush(stdout);
  }

  void write(const std::string& path) {
    table_.header = {
        {"machine", hostname()},
        {"cpu", fmt::format("{}, {} cores, L2 {} in all, last-level cache {}", machine_.cpu_model, machine_.cores,
                            mebibytes(classes_[0].max_bytes), mebibytes(machine_.llc_bytes))},
        {"date", machine_.date},
        {"halide", fmt::format("{}.{}.{}", HALIDE_VERSION_MAJOR, HALIDE_VERSION_MINOR, HALIDE_VERSION_PATCH)},
        {"threads", std::to_string(threads_)},
    };
    std::ofstream file(path);
    if (!file) throw Error(fmt::format("fusednorm_bench --tune: cannot write '{}'", path));
    write_tuning_table_with_note(file);
    if (!file) throw Error(fmt::format("fusednorm_bench --tune: writing '{}' failed", path));
  }

  void write_tuning_table_with_note(std::ofstream& file) const {
    std::ostringstream text;
    detail::write_tuning_table(text, table_);
    std::string body = text.str();
    // A comment after the first line: how the table was made.
    const size_t first = body.find('\n') + 1;
    body.insert(
        first,
        fmt::format("# fusednorm_bench --tune{}{}{}: {}, {}\n", options_.quick ? " --quick" : "",
                    options_.tune_dram ? " --dram" : "", options_.filter.empty() ? "" : " --filter " + options_.filter,
                    options_.tune_dram ? "classes cache, llc and dram" : "classes cache and llc (no dram rows)",
                    options_.quick ? "one shape per class, short timing" : "two shapes per class (one for dram)"));
    file << body;
  }

  void status(const std::string& what) const {
    if (terminal_) fmt::print(stderr, "\r\033[K{}", what);
  }
  void clear_status() const {
    if (terminal_) fmt::print(stderr, "\r\033[K");
  }

  const Options& options_;
  const MachineInfo& machine_;
  int threads_;
  TimingPlan plan_;
  TimingPlan dram_plan_ = fixed_reps_plan(3);
  std::vector<detail::TuningClass> classes_;
  detail::TuningTable table_;
  bool terminal_ = isatty(fileno(stderr));
};

}  // namespace

int run_tuning(const Options& options, const MachineInfo& machine, int threads) {
  return Tuner(options, machine, threads).run();
}

}  // namespace fusednorm::bench
