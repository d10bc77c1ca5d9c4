#include "runtime/dispatch.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "runtime/tuning.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace fusednorm {

const char* to_string(Epilogue epilogue) {
  switch (epilogue) {
    case Epilogue::none: return "none";
    case Epilogue::relu: return "relu";
    case Epilogue::add_relu: return "add_relu";
    case Epilogue::silu: return "silu";
  }
  return "?";
}

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

const char* to_string(Direction direction) {
  switch (direction) {
    case Direction::forward_training: return "forward_training";
    case Direction::forward_inference: return "forward_inference";
    case Direction::backward: return "backward";
  }
  return "?";
}

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
// F16C (CPUID leaf 1, ECX bit 29): GCC's __builtin_cpu_supports knows it, clang 14's does not.
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
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

Isa parse_isa(const std::string& text, const char* source) {
  std::string known;
  for (Isa isa : kAllIsas) {
    if (text == to_string(isa)) return isa;
    known += (known.empty() ? "" : ", ") + std::string(to_string(isa));
  }
  throw Error(
      fmt::format("{}: isa is '{}', expected one of {} (or empty for the best available)", source, text, known));
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
std::once_flag environment_read;

const std::vector<std::string>& built_schedule_names();
int parse_schedule(const std::string& text, const char* source);

// Reads the environment once; a setter calls it first, so that the environment cannot override it later.
void read_environment() {
  std::call_once(environment_read, [] {
    auto from = [](const char* variable, const char* setter, Setting& setting, auto parse) {
      const char* value = std::getenv(variable);
      if (!value || !*value) return;
      try {
        setting.index = parse(value, variable);
      } catch (const Error& e) {
        setting.error = fmt::format("{}; every call that needs it throws this until {}() sets one", e.what(), setter);
      }
    };
    std::lock_guard lock(settings_mutex);
    from("FUSEDNORM_MAX_ISA", "set_max_isa", max_isa_setting,
         [](const char* v, const char* source) { return static_cast<int>(parse_isa(v, source)); });
    from("FUSEDNORM_SCHEDULE", "set_schedule", schedule_setting, parse_schedule);
  });
}

int checked(const Setting& setting) {
  if (!setting.error.empty()) throw Error(setting.error);
  return setting.index;
}

}  // namespace

Settings current_settings() {
  read_environment();
  std::lock_guard lock(settings_mutex);
  return {checked(max_isa_setting), built_schedule_names()[static_cast<size_t>(checked(schedule_setting))]};
}

namespace {

bool allowed(Isa isa, const Settings& settings) {
  return settings.max_isa < 0 || static_cast<int>(isa) >= settings.max_isa;
}

// The schedules of the built variants, "hand" first, then in table order.
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

int parse_schedule(const std::string& text, const char* source) {
  if (text.empty()) return 0;
  const std::vector<std::string>& names = built_schedule_names();
  auto found = std::find(names.begin(), names.end(), text);
  if (found != names.end()) return static_cast<int>(found - names.begin());
  std::string expected = names.front();
  for (size_t i = 1; i < names.size(); i++) expected += (i + 1 == names.size() ? " or " : ", ") + names[i];
  throw Error(
      fmt::format("{}: schedule is '{}', expected {} (the schedules this build has variants of; empty for "
                  "hand)",
                  source, text, expected));
}

std::atomic<int> verbose_override{-1};  // -1: follow FUSEDNORM_VERBOSE

bool verbose_from_environment() {
  static const bool on = [] {
    const char* value = std::getenv("FUSEDNORM_VERBOSE");
    return value && *value && std::string(value) != "0";
  }();
  return on;
}

// The variants of the request's norm and direction; the others compute something else entirely.
bool is_candidate(const KernelVariant& v, const VariantRequest& request) {
  return v.norm == request.norm && v.direction == request.direction;
}

// A candidate of the request's very kernel: the same computation, whatever its instruction set and schedule.
bool same_kernel(const KernelVariant& v, const VariantRequest& request) {
  return is_candidate(v, request) && v.layout == request.layout && v.epilogue == request.epilogue &&
         v.affine == request.affine;
}

bool runs_here(const KernelVariant& v, const Settings& settings) {
  return cpu_supports(v.isa) && allowed(v.isa, settings);
}

std::string isa_reason(const KernelVariant& v, const Settings& settings) {
  if (!cpu_supports(v.isa)) return fmt::format("{} is not supported by this CPU", to_string(v.isa));
  if (!allowed(v.isa, settings)) {
    return fmt::format("{} is above the max_isa limit {}", to_string(v.isa),
                       to_string(static_cast<Isa>(settings.max_isa)));
  }
  return "";
}

// "12.3 MiB", "96.0 KiB", "24 bytes": the working sets in reports.
std::string format_bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(bytes) / (1 << 10));
  return fmt::format("{} bytes", bytes);
}

// What dispatch decided for one call, kept per thread for last_dispatch_report().
struct Decision {
  VariantRequest request;
  Settings settings;  // read once per call: a setter on another thread cannot change the decision halfway
  std::shared_ptr<const TuningTable> table;  // the table consulted (or set aside by the schedule); null: none
  size_t shape_class = 0;                    // in table->classes
  int64_t working_set = 0;
  const KernelVariant* untuned = nullptr;  // what dispatch runs without a table; null: nothing fits
  const KernelVariant* tuned = nullptr;    // the table's choice; null: not tuned
  std::string refusal;                     // the tuned kernel's error, when it refused the call and untuned ran

  const KernelVariant* ran() const { return tuned && refusal.empty() ? tuned : untuned; }
  // The table's rank of `v` for this call, or null.
  const TuningTable::Candidate* ranked(const KernelVariant& v) const {
    if (!table || !untuned_like) return nullptr;
    const std::vector<TuningTable::Candidate>* list = table->candidates(*untuned_like, shape_class);
    if (!list) return nullptr;
    for (const TuningTable::Candidate& c : *list) {
      if (c.variant == &v) return &c;
    }
    return nullptr;
  }
  const KernelVariant* untuned_like = nullptr;  // a built variant of the request's kernel (any isa, schedule)
};

thread_local std::optional<Decision> last_decision;

// Why candidate `v` was not run for the call `d`; `ran` is the variant that ran (null if none).
std::string reason_passed_over(const KernelVariant& v, const Decision& d, const KernelVariant* ran) {
  const VariantRequest& request = d.request;
  if (d.tuned && same_kernel(v, request)) {
    // The table ranks every schedule and instruction set of the kernel: only they and max_isa decide.
    const std::string cls = d.table->classes[d.shape_class].name;
    if (&v == d.tuned) {
      return fmt::format("tuned for class {}, but its kernel refused this call: {}; the untuned choice ran instead",
                         cls, d.refusal);
    }
    const TuningTable::Candidate* mine = d.ranked(v);
    if (std::string why = isa_reason(v, d.settings); !why.empty()) {
      return mine ? fmt::format("{} (tuned {:.4g} ms in class {})", why, mine->ms, cls) : why;
    }
    if (!mine) return fmt::format("not timed or out in class {} of the tuning table", cls);
    const TuningTable::Candidate* best = d.ranked(*d.tuned);
    return fmt::format("tuned slower in class {}: {:.4g} ms against {:.4g} ms", cls, mine->ms, best ? best->ms : 0.0);
  }
  if (const std::string& schedule = d.settings.schedule; v.schedule != schedule) {
    return fmt::format("schedule {}, dispatch runs {} (set_schedule, FUSEDNORM_SCHEDULE)", v.schedule, schedule);
  }
  if (v.layout != request.layout) {
    return fmt::format("layout {}, the tensors are {}", to_string(v.layout), to_string(request.layout));
  }
  if (v.epilogue != request.epilogue) {
    return fmt::format("epilogue {}, the call asks for {}", to_string(v.epilogue), to_string(request.epilogue));
  }
  if (v.affine != request.affine) {
    return v.affine ? "affine, the call has no weight or bias" : "not affine, the call has a weight or bias";
  }
  if (std::string why = isa_reason(v, d.settings); !why.empty()) return why;
  if (ran && ran != &v) return fmt::format("{} chosen first (better instruction set)", ran->name);
  return "";
}

// The first variant that fits without a table: the selected schedule, best instruction set allowed.
const KernelVariant* untuned_choice(const Decision& d) {
  for (const KernelVariant& v : all_variants()) {
    if (is_candidate(v, d.request) && reason_passed_over(v, d, nullptr).empty()) return &v;
  }
  return nullptr;
}

Decision decide(const VariantRequest& request) {
  Decision d;
  d.request = request;
  d.settings = current_settings();  // throws where the environment's FUSEDNORM_MAX_ISA or _SCHEDULE is malformed
  d.untuned = untuned_choice(d);
  d.table = current_tuning();  // throws where FUSEDNORM_TUNING names a malformed file
  if (!d.table) return d;
  d.working_set = working_set_bytes(request.direction, request.epilogue, request.elements);
  d.shape_class = d.table->class_of(d.working_set);
  for (const KernelVariant& v : all_variants()) {
    if (same_kernel(v, request)) {
      d.untuned_like = &v;
      break;
    }
  }
  if (!d.untuned_like || d.settings.schedule != "hand") return d;
  if (const std::vector<TuningTable::Candidate>* list = d.table->candidates(*d.untuned_like, d.shape_class)) {
    for (const TuningTable::Candidate& c : *list) {
      if (runs_here(*c.variant, d.settings)) {
        d.tuned = c.variant;
        break;
      }
    }
  }
  return d;
}

// Why the table did not choose this call's variant; "" when it did (or there is no table).
std::string tuning_not_used(const Decision& d) {
  if (!d.table || d.tuned) return "";
  const TuningTable& t = *d.table;
  if (const std::string& schedule = d.settings.schedule; schedule != "hand") {
    return fmt::format(
        "table {} not consulted: schedule {} is set (set_schedule, FUSEDNORM_SCHEDULE), which "
        "takes precedence",
        t.source, schedule);
  }
  if (!d.untuned_like) return "";
  const std::string where =
      fmt::format("class {}, working set {}", t.describe_class(d.shape_class), format_bytes(d.working_set));
  const std::vector<TuningTable::Candidate>* list = t.candidates(*d.untuned_like, d.shape_class);
  if (!list) {
    return fmt::format("table {} has no timed variant of {} in {}: the untuned choice", t.source,
                       kernel_name(*d.untuned_like), where);
  }
  std::string why;
  for (const TuningTable::Candidate& c : *list) {
    why += fmt::format("; {}: {}", c.variant->name, isa_reason(*c.variant, d.settings));
  }
  return fmt::format("table {}, {}: none of its variants of {} runs here{}: the untuned choice", t.source, where,
                     kernel_name(*d.untuned_like), why);
}

// The candidates of one call in table order: the one that ran, and each passed over with the reason.
std::string explain(const Decision& d) {
  const VariantRequest& request = d.request;
  const KernelVariant* ran = d.ran();
  std::string passed_over;
  for (const KernelVariant& v : all_variants()) {
    if (!is_candidate(v, request) || &v == ran) continue;
    passed_over += fmt::format("\n  passed over {}: {}", v.name, reason_passed_over(v, d, ran));
  }
  if (const std::string note = tuning_not_used(d); !note.empty()) passed_over += "\n  tuning: " + note;
  // "instance_norm forward_inference (batch_norm kernels)" where a function runs another norm's kernels.
  const std::string call = fmt::format("{} {}{}", request.function, to_string(request.direction),
                                       std::string(request.function) == to_string(request.norm)
                                           ? ""
                                           : fmt::format(" ({} kernels)", to_string(request.norm)));
  if (!ran) return fmt::format("fusednorm: {}: no variant fits{}", call, passed_over);
  std::string how;
  if (d.tuned && d.refusal.empty()) {
    how = fmt::format("; tuned: class {}, working set {}, table {}", d.table->describe_class(d.shape_class),
                      format_bytes(d.working_set), d.table->source);
  } else if (d.tuned) {
    how = fmt::format("; the tuned {} refused the call", d.tuned->name);
  }
  return fmt::format("fusednorm: {}: ran {} (schedule {}{}){}", call, ran->name, ran->schedule, how, passed_over);
}

bool epilogue_built(const VariantRequest& request, Epilogue epilogue) {
  const std::span<const KernelVariant> all = all_variants();
  return std::any_of(all.begin(), all.end(),
                     [&](const KernelVariant& v) { return is_candidate(v, request) && v.epilogue == epilogue; });
}

// The epilogues the build made kernels of the request's norm and direction for: "none, relu or add_relu".
std::string built_epilogues(const VariantRequest& request) {
  std::vector<std::string> built;
  for (Epilogue e : {Epilogue::none, Epilogue::relu, Epilogue::add_relu, Epilogue::silu}) {
    if (epilogue_built(request, e)) built.emplace_back(to_string(e));
  }
  if (built.empty()) return "no epilogue at all";
  std::string result = built.front();
  for (size_t i = 1; i < built.size(); i++) result += (i + 1 == built.size() ? " or " : ", ") + built[i];
  return result;
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

const KernelVariant& select_variant(const VariantRequest& request) {
  last_decision.reset();
  last_decision = decide(request);
  const Decision& d = *last_decision;
  if (fusednorm::verbose()) std::fprintf(stderr, "%s\n", explain(d).c_str());
  if (const KernelVariant* ran = d.ran()) return *ran;
  if (!epilogue_built(request, request.epilogue)) {
    throw Error(fmt::format("{}: epilogue is {}, expected {} (the epilogues of the {} {} kernels this build has)",
                            request.function, to_string(request.epilogue), built_epilogues(request),
                            to_string(request.norm), to_string(request.direction)));
  }
  const std::string max_isa_text = d.settings.max_isa < 0 ? "" : to_string(static_cast<Isa>(d.settings.max_isa));
  if (const std::string& schedule = d.settings.schedule; schedule != "hand") {
    throw Error(fmt::format(
        "{}: no {} {} kernel of schedule {} for layout {}, epilogue {}{} runs on this CPU "
        "(max_isa '{}'); dispatch does not fall back to another schedule (set_schedule, "
        "FUSEDNORM_SCHEDULE; FUSEDNORM_VERBOSE=1 lists the candidates)",
        request.function, to_string(request.norm), to_string(request.direction), schedule, to_string(request.layout),
        to_string(request.epilogue), request.affine ? ", affine" : "", max_isa_text));
  }
  throw Error(fmt::format("{}: no {} {} kernel for layout {}, epilogue {}{} runs on this CPU (max_isa '{}')",
                          request.function, to_string(request.norm), to_string(request.direction),
                          to_string(request.layout), to_string(request.epilogue), request.affine ? ", affine" : "",
                          max_isa_text));
}

void call_selected(const KernelArgs& args, const KernelVariant& variant, const char* function) {
  std::optional<KernelFailure> failure = args.try_call(variant, function);
  if (!failure) return;
  Decision* d = last_decision ? &*last_decision : nullptr;
  if (!d || d->tuned != &variant || !d->refusal.empty() || !d->untuned || d->untuned == &variant ||
      !is_refusal(failure->code)) {
    throw Error(failure->message);
  }
  d->refusal = failure->message;
  if (fusednorm::verbose()) std::fprintf(stderr, "%s\n", explain(*d).c_str());
  args.call(*d->untuned, function);
}

}  // namespace detail

std::vector<VariantInfo> variants() {
  const detail::Settings settings = detail::current_settings();
  std::vector<VariantInfo> result;
  for (const detail::KernelVariant& v : detail::all_variants()) {
    result.push_back({v.name, detail::to_string(v.norm), detail::to_string(v.direction), to_string(v.layout),
                      to_string(v.epilogue), v.affine, detail::to_string(v.isa), v.schedule,
                      detail::runs_here(v, settings), detail::kernel_name(v)});
  }
  return result;
}

void set_max_isa(const std::string& isa) {
  detail::read_environment();  // first, so that the environment cannot override this later
  const int index = isa.empty() ? -1 : static_cast<int>(detail::parse_isa(isa, "set_max_isa"));
  std::lock_guard lock(detail::settings_mutex);
  detail::max_isa_setting = {index, ""};
}

void set_schedule(const std::string& schedule) {
  detail::read_environment();
  const int index = detail::parse_schedule(schedule, "set_schedule");
  std::lock_guard lock(detail::settings_mutex);
  detail::schedule_setting = {index, ""};
}

std::string schedule() {
  detail::read_environment();
  std::lock_guard lock(detail::settings_mutex);
  return detail::built_schedule_names()[static_cast<size_t>(detail::checked(detail::schedule_setting))];
}

std::vector<std::string> built_schedules() { return detail::built_schedule_names(); }

void set_verbose(bool on) { detail::verbose_override = on ? 1 : 0; }

bool verbose() {
  int forced = detail::verbose_override.load();
  return forced < 0 ? detail::verbose_from_environment() : forced == 1;
}

std::string last_dispatch_report() {
  return detail::last_decision ? detail::explain(*detail::last_decision) : std::string();
}

std::string max_isa() {
  detail::read_environment();
  std::lock_guard lock(detail::settings_mutex);
  const int limit = detail::checked(detail::max_isa_setting);
  return limit < 0 ? "" : detail::to_string(static_cast<detail::Isa>(limit));
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> result;
  for (detail::Isa isa : detail::kAllIsas) {
    if (detail::cpu_supports(isa)) result.push_back(detail::to_string(isa));
  }
  return result;
}

}  // namespace fusednorm
