#include "runtime/plan.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "runtime/backend.h"
#include "runtime/tuning.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace fusednorm {

const char* to_string(Epilogue epilogue) { return name(epilogue); }

namespace detail {

const char* to_string(Norm norm) {
  switch (norm) {
    case Norm::batch: return "batch_norm";
    case Norm::instance: return "instance_norm";
    case Norm::group: return "group_norm";
    case Norm::layer: return "layer_norm";
    case Norm::rms: return "rms_norm";
  }
  return "?";
}

const char* to_string(Direction direction) { return name(direction); }

const char* to_string(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::sse41: return "sse41";
    case Isa::neon: return "neon";
    case Isa::cuda: return "cuda";
  }
  return "?";
}

namespace {

// The instruction sets of the architecture this runtime is built for, best first: the kernels beside it are of
// the same one (generators/CMakeLists.txt).
#if defined(__x86_64__)
constexpr Isa kAllIsas[] = {Isa::avx512, Isa::avx2, Isa::sse41};
#elif defined(__aarch64__)
constexpr Isa kAllIsas[] = {Isa::neon};
#else
#error "FusedNorm's runtime is built for x86-64 or arm-64"
#endif

#if defined(__x86_64__)
// F16C (CPUID leaf 1, ECX bit 29): GCC's __builtin_cpu_supports knows it, clang 14's does not. Asked once:
// CPUID traps to the hypervisor in a virtual machine, and planning asks for every variant it considers (27% of
// a 16-bit conformance case's time on the 2-core development VM when it asked each time).
bool cpu_has_f16c() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  }();
  return has;
}
#endif

// The features Halide's targets assume (see generators/CMakeLists.txt): avx512 is Halide's avx512_skylake;
// neon is Halide's arm-64 baseline, Advanced SIMD, which every AArch64 Linux CPU has.
bool cpu_supports(Isa isa) {
#if defined(__x86_64__)
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && cpu_supports(Isa::avx2);
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c() &&
             cpu_supports(Isa::sse41);
    case Isa::sse41: return __builtin_cpu_supports("sse4.1");
    case Isa::neon:
    case Isa::cuda: return false;
  }
  return false;
#else
  return isa == Isa::neon;
#endif
}

// "a, b or c".
std::string one_of(const std::vector<std::string>& words) {
  if (words.size() < 2) return words.empty() ? "" : words.front();
  return fmt::format("{} or {}", fmt::join(words.begin(), words.end() - 1, ", "), words.back());
}

Isa parse_isa(const std::string& text, const char* source) {
  std::vector<std::string> known;
  for (Isa isa : kAllIsas) {
    if (text == to_string(isa)) return isa;
    known.emplace_back(to_string(isa));
  }
  throw Error(fmt::format("{}: isa is '{}', expected one of {} (or empty for the best available)", source, text,
                         fmt::join(known, ", ")));
}

int parse_schedule(const std::string& text, const char* source) {
  if (text.empty()) return 0;
  const std::vector<std::string>& names = built_schedule_names();
  auto found = std::find(names.begin(), names.end(), text);
  if (found != names.end()) return static_cast<int>(found - names.begin());
  throw Error(fmt::format("{}: schedule is '{}', expected {} (the schedules this build has variants of; empty for "
                          "hand)",
                          source, text, one_of(names)));
}

// The settings dispatch follows, from set_max_isa / set_schedule or, until those are called, the environment
// (FUSEDNORM_MAX_ISA, FUSEDNORM_SCHEDULE, read once). A malformed variable is kept as an error that every call
// which needs the setting throws, until the setter replaces it (as a malformed FUSEDNORM_TUNING is).
struct Setting {
  int index;          // max_isa: -1 (no limit) or an Isa; schedule: an index into built_schedule_names()
  std::string error;  // the environment's value was malformed: this message, until the setter is called
};

std::mutex settings_mutex;
Setting max_isa_setting{-1, ""}, schedule_setting{0, ""};
bool environment_read = false;  // under settings_mutex
// Bumped by every change of a setting; a thread's plans are of the generation it read them in. 0: never read.
std::atomic<uint64_t> settings_generation{1};

// Under settings_mutex: reads the environment once; a setter calls it first, so that the environment cannot
// override it later.
void read_environment() {
  if (environment_read) return;
  environment_read = true;
  auto from = [](const char* variable, const char* setter, Setting& setting, auto parse) {
    const char* value = std::getenv(variable);
    if (!value || !*value) return;
    try {
      setting.index = parse(value, variable);
    } catch (const Error& e) {
      setting.error = fmt::format("{}; every call that needs it throws this until {}() sets one", e.what(), setter);
    }
  };
  from("FUSEDNORM_MAX_ISA", "set_max_isa", max_isa_setting,
       [](const char* v, const char* source) { return static_cast<int>(parse_isa(v, source)); });
  from("FUSEDNORM_SCHEDULE", "set_schedule", schedule_setting, parse_schedule);
}

int checked(const Setting& setting) {
  if (!setting.error.empty()) throw Error(setting.error);
  return setting.index;
}

bool allowed(Isa isa, const Settings& settings) {
  return isa == Isa::cuda || settings.max_isa < 0 || static_cast<int>(isa) >= settings.max_isa;
}

bool runs_here(const KernelVariant& v, const Settings& settings) {
  return (v.backend == Backend::cuda || cpu_supports(v.isa)) && allowed(v.isa, settings);
}

// "12.3 MiB", "96.0 KiB", "24 bytes": the working sets in reports.
std::string format_bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(bytes) / (1 << 10));
  return fmt::format("{} bytes", bytes);
}

std::atomic<int> verbose_override{-1};  // -1: follow FUSEDNORM_VERBOSE

int verbose_from_environment() {
  static const int level = [] {
    const char* value = std::getenv("FUSEDNORM_VERBOSE");
    if (!value || !*value) return 0;
    char* end = nullptr;
    const long parsed = std::strtol(value, &end, 10);
    if (*end != '\0') return 1;  // any other text turns it on, as before levels existed
    return static_cast<int>(std::clamp(parsed, 0L, 2L));
  }();
  return level;
}

// The plans a thread has made, and the settings they were made under.
struct PlanKey {
  const char* function;
  uint32_t packed;
  bool operator==(const PlanKey&) const = default;
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    return std::hash<const void*>()(k.function) ^ (static_cast<size_t>(k.packed) * 0x9E3779B97F4A7C15ull);
  }
};

PlanKey key_of(const PlanRequest& r, Backend backend, size_t shape_class) {
  uint32_t packed = static_cast<uint32_t>(r.norm);
  packed = packed * 8 + static_cast<uint32_t>(r.direction);
  packed = packed * 2 + static_cast<uint32_t>(r.layout);
  packed = packed * 4 + static_cast<uint32_t>(r.epilogue);
  packed = packed * 2 + (r.affine ? 1u : 0u);
  packed = packed * 4 + static_cast<uint32_t>(r.dtype);
  packed = packed * 2 + static_cast<uint32_t>(backend);
  packed = packed * 256 + static_cast<uint32_t>(std::min<size_t>(shape_class, 255));
  return {r.function, packed};
}

// The last call on this thread, for last_dispatch() and the verbose line.
struct LastCall {
  std::shared_ptr<const Plan> plan;  // null before the first call
  const KernelVariant* ran = nullptr;
  std::string refusal;  // the tuned kernel's error, when it refused the call and the untuned one ran
  int64_t elements = 0;
  std::vector<int64_t> shape;
};

struct ThreadPlans {
  int64_t made = 0;
  uint64_t generation = 0;  // of `settings`; 0: not read yet
  Settings settings;
  std::unordered_map<PlanKey, std::shared_ptr<const Plan>, PlanKeyHash> plans;
  LastCall last;
};

ThreadPlans& thread_plans() {
  thread_local ThreadPlans t;
  return t;
}

// The settings of this thread's plans, read again (under the lock) when another thread changed them since.
const Settings& current_settings(ThreadPlans& t) {
  const uint64_t generation = settings_generation.load(std::memory_order_acquire);
  if (t.generation == generation) return t.settings;
  Settings s;
  {
    std::lock_guard lock(settings_mutex);
    read_environment();
    s.max_isa = checked(max_isa_setting);
    s.schedule = &built_schedule_names()[static_cast<size_t>(checked(schedule_setting))];
  }
  s.table = current_tuning();  // throws where FUSEDNORM_TUNING names a malformed file
  t.plans.clear();
  t.settings = std::move(s);
  t.generation = generation;
  return t.settings;
}

// The variants of the request's norm and direction on the backend; the others compute something else entirely.
bool is_candidate(const KernelVariant& v, const PlanRequest& r) {
  return v.norm == r.norm && v.direction == r.direction;
}

// A candidate of the request's very kernel: the same computation, whatever its instruction set and schedule.
bool same_kernel(const KernelVariant& v, const PlanRequest& r) {
  return is_candidate(v, r) && v.layout == r.layout && v.epilogue == r.epilogue && v.affine == r.affine &&
         v.dtype == r.dtype;
}

std::optional<PassedOver> isa_reason(const KernelVariant& v, const Settings& settings) {
  if (v.backend == Backend::cpu && !cpu_supports(v.isa)) return PassedOver::isa_unsupported;
  if (!allowed(v.isa, settings)) return PassedOver::isa_above_limit;
  return std::nullopt;
}

// Why `v` does not fit the request without a table; none when it does.
std::optional<PassedOver> untuned_reason(const KernelVariant& v, const PlanRequest& r, const Settings& s) {
  if (v.schedule != *s.schedule) return PassedOver::schedule;
  if (v.layout != r.layout) return PassedOver::layout;
  if (v.epilogue != r.epilogue) return PassedOver::epilogue;
  if (v.affine != r.affine) return PassedOver::affine;
  if (v.dtype != r.dtype) return PassedOver::dtype;
  return isa_reason(v, s);
}

const TuningTable::Candidate* ranked(const Plan& p, const KernelVariant& v) {
  if (!p.settings.table || !p.kernel_like) return nullptr;
  const std::vector<TuningTable::Candidate>* list = p.settings.table->candidates(*p.kernel_like, p.shape_class);
  if (!list) return nullptr;
  for (const TuningTable::Candidate& c : *list) {
    if (c.variant == &v) return &c;
  }
  return nullptr;
}

std::shared_ptr<Plan> decide(const PlanRequest& request, const BackendContext& backend, const Settings& settings,
                             size_t shape_class) {
  auto plan = std::make_shared<Plan>();
  Plan& p = *plan;
  p.request = request;
  p.backend = backend.backend();
  p.settings = settings;
  if (p.backend != Backend::cpu) p.settings.table.reset();  // a tuning table ranks this machine's CPU kernels
  p.shape_class = p.settings.table ? shape_class : 0;
  const std::span<const KernelVariant> all = backend.variants();
  // A call without parameters runs the plain kernel where the backend has one, else the affine kernel.
  PlanRequest match = request;
  match.affine = request.affine || std::none_of(all.begin(), all.end(), [&](const KernelVariant& v) {
    return same_kernel(v, request);
  });
  p.affine_kernel = match.affine;
  for (const KernelVariant& v : all) {
    if (!is_candidate(v, match)) continue;
    if (!p.kernel_like && same_kernel(v, match)) p.kernel_like = &v;
    if (!p.untuned && !untuned_reason(v, match, p.settings)) p.untuned = &v;
  }
  if (p.settings.table && p.kernel_like && *p.settings.schedule == "hand") {
    if (const auto* list = p.settings.table->candidates(*p.kernel_like, p.shape_class)) {
      for (const TuningTable::Candidate& c : *list) {
        if (runs_here(*c.variant, p.settings)) {
          p.tuned = c.variant;
          break;
        }
      }
    }
  }
  const KernelVariant* ran = p.tuned ? p.tuned : p.untuned;
  for (const KernelVariant& v : all) {
    if (!is_candidate(v, match) || &v == ran) continue;
    PassedOver reason = PassedOver::better_isa;
    if (p.tuned && same_kernel(v, match)) {
      // The table ranks every schedule and instruction set of the kernel: only they and max_isa decide.
      if (isa_reason(v, p.settings)) {
        reason = PassedOver::tuned_isa;
      } else {
        reason = ranked(p, v) ? PassedOver::tuned_slower : PassedOver::tuned_not_ranked;
      }
    } else if (std::optional<PassedOver> why = untuned_reason(v, match, p.settings)) {
      reason = *why;
    }
    p.passed_over.push_back({&v, reason});
  }
  if (p.untuned) p.untuned_order = argument_order(*p.untuned);
  if (p.tuned) p.tuned_order = argument_order(*p.tuned);
  return plan;
}

// "instance_norm forward_inference (batch_norm kernels)" where a function runs another norm's kernels.
std::string call_text(const PlanRequest& r, Backend backend) {
  return fmt::format("{} {}{}{}", r.function, to_string(r.direction),
                     std::string(r.function) == to_string(r.norm) ? ""
                                                                  : fmt::format(" ({} kernels)", to_string(r.norm)),
                     backend == Backend::cpu ? "" : fmt::format(" on {}", name(backend)));
}

std::string isa_text(const KernelVariant& v, const Settings& s) {
  if (v.backend == Backend::cpu && !cpu_supports(v.isa)) {
    return fmt::format("{} is not supported by this CPU", to_string(v.isa));
  }
  return fmt::format("{} is above the max_isa limit {}", to_string(v.isa), to_string(static_cast<Isa>(s.max_isa)));
}

// The text of a reason: what last_dispatch() and verbose level 2 say.
std::string reason_text(const Plan& p, const Plan::Candidate& c, const LastCall& call) {
  const KernelVariant& v = *c.variant;
  const PlanRequest& r = p.request;
  const std::string cls = p.settings.table ? p.settings.table->classes[p.shape_class].name : "";
  switch (c.reason) {
    case PassedOver::schedule:
      return fmt::format("schedule {}, dispatch runs {} (set_schedule, FUSEDNORM_SCHEDULE)", v.schedule,
                         *p.settings.schedule);
    case PassedOver::layout: return fmt::format("layout {}, the tensors are {}", name(v.layout), name(r.layout));
    case PassedOver::epilogue:
      return fmt::format("epilogue {}, the call asks for {}", name(v.epilogue), name(r.epilogue));
    case PassedOver::affine:
      return v.affine ? "affine, the call has no weight or bias" : "not affine, the call has a weight or bias";
    case PassedOver::dtype: return fmt::format("dtype {}, the tensors are {}", name(v.dtype), name(r.dtype));
    case PassedOver::isa_unsupported:
    case PassedOver::isa_above_limit: return isa_text(v, p.settings);
    case PassedOver::better_isa: {
      const KernelVariant* ran = call.ran ? call.ran : p.untuned;
      return fmt::format("{} chosen first (better instruction set)", ran ? ran->name : "?");
    }
    case PassedOver::tuned_slower: {
      const TuningTable::Candidate* mine = ranked(p, v);
      const TuningTable::Candidate* best = ranked(p, *p.tuned);
      return fmt::format("tuned slower in class {}: {:.4g} ms against {:.4g} ms", cls, mine ? mine->ms : 0.0,
                         best ? best->ms : 0.0);
    }
    case PassedOver::tuned_not_ranked: return fmt::format("not timed or out in class {} of the tuning table", cls);
    case PassedOver::tuned_isa: {
      const TuningTable::Candidate* mine = ranked(p, v);
      return mine ? fmt::format("{} (tuned {:.4g} ms in class {})", isa_text(v, p.settings), mine->ms, cls)
                  : isa_text(v, p.settings);
    }
    case PassedOver::tuned_refused:
      return fmt::format("tuned for class {}, but its kernel refused this call: {}; the untuned choice ran instead",
                         cls, call.refusal);
  }
  return "?";
}

// Why the table did not choose this call's variant; "" when it did (or there is no table).
std::string tuning_not_used(const Plan& p, const LastCall& call) {
  const Settings& s = p.settings;
  if (!s.table || p.tuned) return "";
  const TuningTable& t = *s.table;
  if (*s.schedule != "hand") {
    return fmt::format("table {} not consulted: schedule {} is set (set_schedule, FUSEDNORM_SCHEDULE), which "
                       "takes precedence",
                       t.source, *s.schedule);
  }
  if (!p.kernel_like) return "";
  const int64_t working_set = working_set_bytes(p.request.direction, p.request.epilogue, call.elements);
  const std::string where =
      fmt::format("class {}, working set {}", t.describe_class(p.shape_class), format_bytes(working_set));
  const std::vector<TuningTable::Candidate>* list = t.candidates(*p.kernel_like, p.shape_class);
  if (!list) {
    return fmt::format("table {} has no timed variant of {} in {}: the untuned choice", t.source,
                       kernel_name(*p.kernel_like), where);
  }
  std::string why;
  for (const TuningTable::Candidate& c : *list) why += fmt::format("; {}: {}", c.variant->name, isa_text(*c.variant, s));
  return fmt::format("table {}, {}: none of its variants of {} runs here{}: the untuned choice", t.source, where,
                     kernel_name(*p.kernel_like), why);
}

// The passed-over candidates of the call as (variant, text), the tuned kernel's refusal included.
std::vector<DispatchCandidate> passed_over_of(const Plan& p, const LastCall& call) {
  std::vector<DispatchCandidate> result;
  const bool refused = !call.refusal.empty();
  // In table order: the tuned variant that refused sits where the table has it.
  std::vector<Plan::Candidate> all = p.passed_over;
  if (refused && p.tuned) {
    all.push_back({p.tuned, PassedOver::tuned_refused});
    // The untuned choice ran: it is not passed over.
    std::erase_if(all, [&](const Plan::Candidate& c) { return c.variant == p.untuned; });
  }
  std::sort(all.begin(), all.end(),
            [](const Plan::Candidate& a, const Plan::Candidate& b) { return a.variant < b.variant; });
  for (const Plan::Candidate& c : all) {
    result.push_back({c.variant->name, reason_text(p, c, call)});
  }
  return result;
}

std::string report_text(const LastCall& call) {
  if (!call.plan) return "";
  const Plan& p = *call.plan;
  std::string text;
  const KernelVariant* ran = call.ran;
  if (!ran) {
    text = fmt::format("fusednorm: {}: no variant fits", call_text(p.request, p.backend));
  } else {
    std::string how;
    if (p.tuned && call.refusal.empty()) {
      how = fmt::format("; tuned: class {}, working set {}, table {}", p.settings.table->describe_class(p.shape_class),
                        format_bytes(working_set_bytes(p.request.direction, p.request.epilogue, call.elements)),
                        p.settings.table->source);
    } else if (p.tuned) {
      how = fmt::format("; the tuned {} refused the call", p.tuned->name);
    }
    if (p.affine_kernel && !p.request.affine) how += "; no weight or bias: weight 1, bias 0";
    text = fmt::format("fusednorm: {}: ran {} (schedule {}{})", call_text(p.request, p.backend), ran->name,
                       ran->schedule, how);
  }
  for (const DispatchCandidate& c : passed_over_of(p, call)) {
    text += fmt::format("\n  passed over {}: {}", c.variant, c.reason);
  }
  if (const std::string note = tuning_not_used(p, call); !note.empty()) text += "\n  tuning: " + note;
  return text;
}

// "8x64x56x56".
std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("{}", fmt::join(shape, "x")); }

// The verbose line of a call (docs/ARCHITECTURE.md, "Verbose mode"), and at level 2 the candidates passed over before it.
void print_verbose(int level, const LastCall& call, double ms) {
  const Plan& p = *call.plan;
  std::string text;
  if (level >= 2) {
    for (const DispatchCandidate& c : passed_over_of(p, call)) {
      text += fmt::format("fusednorm,candidate,{},{},{}\n", p.request.function, c.variant, c.reason);
    }
    if (const std::string note = tuning_not_used(p, call); !note.empty()) {
      text += fmt::format("fusednorm,tuning,{},{}\n", p.request.function, note);
    }
  }
  const char* choice = p.tuned ? (call.refusal.empty() ? "tuned" : "tuned_refused") : "default";
  text += fmt::format("fusednorm,exec,{},{},{},{},{},{},{},{},{},{},{:.4f}\n", name(p.backend), p.request.function,
                      name(p.request.direction), name(p.request.layout), name(p.request.dtype), name(p.request.epilogue),
                      call.ran->name, call.ran->schedule, choice, shape_text(call.shape), ms);
  std::fputs(text.c_str(), stderr);
}

// The epilogues the build made kernels of the request's norm and direction for: "none, relu or add_relu".
std::string built_epilogues(const PlanRequest& r, std::span<const KernelVariant> all) {
  std::vector<std::string> built;
  for (const auto& [word, e] : all_names<Epilogue>()) {
    if (std::any_of(all.begin(), all.end(), [&](const KernelVariant& v) { return is_candidate(v, r) && v.epilogue == e; })) {
      built.emplace_back(word);
    }
  }
  return built.empty() ? "no epilogue at all" : one_of(built);
}

[[noreturn]] void throw_no_variant(const Plan& p, std::span<const KernelVariant> all) {
  const PlanRequest& r = p.request;
  if (p.backend == Backend::cuda && all.empty()) {
    throw Error(fmt::format("{}: this build has no CUDA kernels (configure with -DFUSEDNORM_CUDA=ON)", r.function));
  }
  if (!std::any_of(all.begin(), all.end(),
                   [&](const KernelVariant& v) { return is_candidate(v, r) && v.epilogue == r.epilogue; })) {
    throw Error(fmt::format("{}: epilogue is {}, expected {} (the epilogues of the {} {} kernels this build has{})",
                            r.function, name(r.epilogue), built_epilogues(r, all), to_string(r.norm),
                            to_string(r.direction), p.backend == Backend::cpu ? "" : " for CUDA"));
  }
  const std::string what = fmt::format("layout {}, epilogue {}{}{}", name(r.layout), name(r.epilogue),
                                       r.affine ? ", affine" : "",
                                       r.dtype == DType::float32 ? "" : fmt::format(", dtype {}", name(r.dtype)));
  if (p.backend == Backend::cuda) {
    throw Error(fmt::format("{}: no CUDA kernel for {} {} {} in this build (docs/CUDA.md lists them)", r.function,
                            to_string(r.norm), to_string(r.direction), what));
  }
  const std::string max_isa_text = p.settings.max_isa < 0 ? "" : to_string(static_cast<Isa>(p.settings.max_isa));
  if (*p.settings.schedule != "hand") {
    throw Error(fmt::format("{}: no {} {} kernel of schedule {} for {} runs on this CPU (max_isa '{}'); dispatch "
                            "does not fall back to another schedule (set_schedule, FUSEDNORM_SCHEDULE; "
                            "FUSEDNORM_VERBOSE=2 lists the candidates)",
                            r.function, to_string(r.norm), to_string(r.direction), *p.settings.schedule, what,
                            max_isa_text));
  }
  throw Error(fmt::format("{}: no {} {} kernel for {} runs on this CPU (max_isa '{}')", r.function,
                          to_string(r.norm), to_string(r.direction), what, max_isa_text));
}

// Halide's argument checks, which a pipeline makes before it computes anything (its outputs are untouched): an
// autoscheduled kernel planned for other extents refuses a call with one of these.
bool is_refusal(int code) {
  switch (code) {
    case halide_error_code_explicit_bounds_too_small:
    case halide_error_code_access_out_of_bounds:
    case halide_error_code_buffer_extents_too_large:
    case halide_error_code_constraints_make_required_region_smaller:
    case halide_error_code_constraint_violated:
    case halide_error_code_param_too_small:
    case halide_error_code_param_too_large:
    case halide_error_code_buffer_extents_negative:
    case halide_error_code_bad_dimensions: return true;
    default: return false;
  }
}

}  // namespace

const std::vector<std::string>& built_schedule_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> result = {"hand"};
    for (const KernelVariant& v : all_variants()) {
      if (std::find(result.begin(), result.end(), v.schedule) == result.end()) result.emplace_back(v.schedule);
    }
    return result;
  }();
  return names;
}

int64_t plans_made() { return thread_plans().made; }

void settings_changed() { settings_generation.fetch_add(1, std::memory_order_acq_rel); }

const Plan& plan_call(const PlanRequest& request, const BackendContext& backend) {
  ThreadPlans& t = thread_plans();
  const Settings& settings = current_settings(t);
  size_t shape_class = 0;
  if (settings.table && backend.backend() == Backend::cpu) {
    shape_class = settings.table->class_of(working_set_bytes(request.direction, request.epilogue, request.elements));
  }
  const PlanKey key = key_of(request, backend.backend(), shape_class);
  auto found = t.plans.find(key);
  if (found == t.plans.end()) {
    std::shared_ptr<Plan> plan = decide(request, backend, settings, shape_class);
    t.made++;
    if (!plan->untuned) {
      t.last.plan = plan;
      t.last.ran = nullptr;
      t.last.refusal.clear();
      t.last.elements = request.elements;
      t.last.shape.clear();
      throw_no_variant(*plan, backend.variants());
    }
    found = t.plans.emplace(key, std::move(plan)).first;
  }
  t.last.plan = found->second;  // run_plan's, and the report's if the call fails before it
  t.last.ran = nullptr;
  return *found->second;
}

void run_plan(const Plan& plan, Binder& arguments, std::span<const int64_t> shape) {
  LastCall& last = thread_plans().last;
  if (last.plan.get() != &plan) throw Error("internal error: run_plan without its plan_call on this thread");
  last.refusal.clear();
  last.elements = plan.request.elements;
  last.shape.assign(shape.begin(), shape.end());
  const int level = fusednorm::verbose_level();
  const auto start = level > 0 ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
  const char* function = plan.request.function;
  last.ran = plan.tuned ? plan.tuned : plan.untuned;
  std::optional<KernelFailure> failure =
      arguments.try_call(*last.ran, plan.tuned ? plan.tuned_order : plan.untuned_order, function);
  if (failure && plan.tuned && plan.untuned != plan.tuned && is_refusal(failure->code)) {
    last.refusal = failure->message;
    last.ran = plan.untuned;
    failure = arguments.try_call(*plan.untuned, plan.untuned_order, function);
  }
  if (failure) throw Error(failure->message, Error::Kind::kernel);
  if (level > 0) {
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    print_verbose(level, last, ms);
  }
}

}  // namespace detail

std::vector<VariantInfo> variants() {
  std::lock_guard lock(detail::settings_mutex);
  detail::read_environment();
  detail::Settings settings;
  settings.max_isa = detail::checked(detail::max_isa_setting);
  std::vector<VariantInfo> result;
  for (const detail::KernelVariant& v : detail::all_variants()) {
    result.push_back({v.name, detail::to_string(v.norm), detail::to_string(v.direction), name(v.layout),
                      name(v.epilogue), v.affine, name(v.dtype), detail::to_string(v.isa), v.schedule,
                      detail::runs_here(v, settings), detail::kernel_name(v)});
  }
  return result;
}

void set_max_isa(const std::string& isa) {
  const int index = isa.empty() ? -1 : static_cast<int>(detail::parse_isa(isa, "set_max_isa"));
  std::lock_guard lock(detail::settings_mutex);
  detail::read_environment();  // first, so that the environment cannot override this later
  detail::max_isa_setting = {index, ""};
  detail::settings_changed();
}

std::string max_isa() {
  std::lock_guard lock(detail::settings_mutex);
  detail::read_environment();
  const int limit = detail::checked(detail::max_isa_setting);
  return limit < 0 ? "" : detail::to_string(static_cast<detail::Isa>(limit));
}

void set_schedule(const std::string& schedule) {
  const int index = detail::parse_schedule(schedule, "set_schedule");
  std::lock_guard lock(detail::settings_mutex);
  detail::read_environment();
  detail::schedule_setting = {index, ""};
  detail::settings_changed();
}

std::string schedule() {
  std::lock_guard lock(detail::settings_mutex);
  detail::read_environment();
  return detail::built_schedule_names()[static_cast<size_t>(detail::checked(detail::schedule_setting))];
}

std::vector<std::string> built_schedules() { return detail::built_schedule_names(); }

void set_verbose(bool on) { detail::verbose_override = on ? 1 : 0; }
void set_verbose_level(int level) { detail::verbose_override = std::clamp(level, 0, 2); }
bool verbose() { return verbose_level() > 0; }
int verbose_level() {
  const int forced = detail::verbose_override.load(std::memory_order_relaxed);
  return forced < 0 ? detail::verbose_from_environment() : forced;
}

std::string last_dispatch_report() { return detail::report_text(detail::thread_plans().last); }

DispatchInfo last_dispatch() {
  const detail::LastCall& call = detail::thread_plans().last;
  DispatchInfo info;
  if (!call.plan) return info;
  const detail::Plan& p = *call.plan;
  info.function = p.request.function;
  info.backend = name(p.backend);
  info.norm = detail::to_string(p.request.norm);
  info.direction = name(p.request.direction);
  info.layout = name(p.request.layout);
  info.epilogue = name(p.request.epilogue);
  info.affine = p.request.affine;
  info.dtype = name(p.request.dtype);
  info.shape = call.shape;
  if (call.ran) {
    info.variant = call.ran->name;
    info.schedule = call.ran->schedule;
    info.isa = detail::to_string(call.ran->isa);
  }
  info.choice = p.tuned ? (call.refusal.empty() ? "tuned" : "tuned_refused") : "default";
  if (p.settings.table) {
    info.tuning_table = p.settings.table->source;
    info.shape_class = p.settings.table->classes[p.shape_class].name;
  }
  info.refusal = call.refusal;
  info.passed_over = detail::passed_over_of(p, call);
  info.tuning_note = detail::tuning_not_used(p, call);
  return info;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> result;
  for (detail::Isa isa : detail::kAllIsas) {
    if (detail::cpu_supports(isa)) result.push_back(detail::to_string(isa));
  }
  return result;
}

}  // namespace fusednorm
