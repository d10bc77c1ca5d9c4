#include "runtime/dispatch.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm_variant_table.h"

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
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
             cpu_supports(Isa::sse41);
    case Isa::sse41: return __builtin_cpu_supports("sse4.1");
    case Isa::neon: return false;
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

// -1: no limit; else the best allowed instruction set (an Isa).
std::atomic<int> max_isa_index{-1};
std::once_flag max_isa_from_environment;

void read_environment() {
  std::call_once(max_isa_from_environment, [] {
    const char* value = std::getenv("FUSEDNORM_MAX_ISA");
    if (value && *value) max_isa_index = static_cast<int>(parse_isa(value, "FUSEDNORM_MAX_ISA"));
  });
}

bool allowed(Isa isa) {
  read_environment();
  int limit = max_isa_index.load();
  return limit < 0 || static_cast<int>(isa) >= limit;
}

// The schedules of the built variants, "hand" first, then in table order.
const std::vector<std::string>& built_schedule_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> result = {"hand"};
    for (const KernelVariant& v : kBuiltVariants) {
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
  throw Error(fmt::format("{}: schedule is '{}', expected {} (the schedules this build has variants of; empty for "
                          "hand)",
                          source, text, expected));
}

// Index into built_schedule_names() of the schedule dispatch runs.
std::atomic<int> schedule_index{0};
std::once_flag schedule_from_environment;

const std::string& selected_schedule() {
  std::call_once(schedule_from_environment, [] {
    const char* value = std::getenv("FUSEDNORM_SCHEDULE");
    if (value && *value) schedule_index = parse_schedule(value, "FUSEDNORM_SCHEDULE");
  });
  return built_schedule_names()[static_cast<size_t>(schedule_index.load())];
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

// Why candidate `v` was not run for `request`, or "" when it was a fit. `chosen` is the first fit, once found.
std::string reason_passed_over(const KernelVariant& v, const VariantRequest& request, const KernelVariant* chosen) {
  if (const std::string& schedule = selected_schedule(); v.schedule != schedule) {
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
  if (!cpu_supports(v.isa)) return fmt::format("{} is not supported by this CPU", to_string(v.isa));
  if (!allowed(v.isa)) return fmt::format("{} is above the max_isa limit {}", to_string(v.isa), max_isa());
  if (chosen) return fmt::format("{} chosen first (better instruction set)", chosen->name);
  return "";
}

// The last request on this thread, for last_dispatch_report().
thread_local std::optional<VariantRequest> last_request;

// The candidates of one request in table order: the one that runs, and each passed over with the reason.
std::string explain(const VariantRequest& request) {
  const KernelVariant* chosen = nullptr;
  std::string passed_over;
  for (const KernelVariant& v : kBuiltVariants) {
    if (!is_candidate(v, request)) continue;
    std::string why = reason_passed_over(v, request, chosen);
    if (why.empty()) {
      chosen = &v;
    } else {
      passed_over += fmt::format("\n  passed over {}: {}", v.name, why);
    }
  }
  // "instance_norm forward_inference (batch_norm kernels)" where a function runs another norm's kernels.
  const std::string call = fmt::format("{} {}{}", request.function, to_string(request.direction),
                                       std::string(request.function) == to_string(request.norm)
                                           ? ""
                                           : fmt::format(" ({} kernels)", to_string(request.norm)));
  if (!chosen) return fmt::format("fusednorm: {}: no variant fits{}", call, passed_over);
  return fmt::format("fusednorm: {}: ran {} (schedule {}){}", call, chosen->name, chosen->schedule, passed_over);
}

bool epilogue_built(const VariantRequest& request, Epilogue epilogue) {
  return std::any_of(std::begin(kBuiltVariants), std::end(kBuiltVariants),
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

}  // namespace

const KernelVariant& select_variant(const VariantRequest& request) {
  last_request = request;
  const KernelVariant* chosen = nullptr;
  for (const KernelVariant& v : kBuiltVariants) {
    if (is_candidate(v, request) && reason_passed_over(v, request, nullptr).empty()) {
      chosen = &v;
      break;
    }
  }
  if (fusednorm::verbose()) std::fprintf(stderr, "%s\n", explain(request).c_str());
  if (!chosen) {
    if (!epilogue_built(request, request.epilogue)) {
      throw Error(fmt::format("{}: epilogue is {}, expected {} (the epilogues of the {} {} kernels this build has)",
                              request.function, to_string(request.epilogue), built_epilogues(request),
                              to_string(request.norm), to_string(request.direction)));
    }
    if (const std::string& schedule = selected_schedule(); schedule != "hand") {
      throw Error(fmt::format("{}: no {} {} kernel of schedule {} for layout {}, epilogue {}{} runs on this CPU "
                              "(max_isa '{}'); dispatch does not fall back to another schedule (set_schedule, "
                              "FUSEDNORM_SCHEDULE; FUSEDNORM_VERBOSE=1 lists the candidates)",
                              request.function, to_string(request.norm), to_string(request.direction), schedule,
                              to_string(request.layout), to_string(request.epilogue),
                              request.affine ? ", affine" : "", max_isa()));
    }
    throw Error(fmt::format("{}: no {} {} kernel for layout {}, epilogue {}{} runs on this CPU (max_isa '{}')",
                            request.function, to_string(request.norm), to_string(request.direction),
                            to_string(request.layout), to_string(request.epilogue), request.affine ? ", affine" : "",
                            max_isa()));
  }
  return *chosen;
}

}  // namespace detail

std::vector<VariantInfo> variants() {
  std::vector<VariantInfo> result;
  for (const detail::KernelVariant& v : detail::kBuiltVariants) {
    result.push_back({v.name, detail::to_string(v.norm), detail::to_string(v.direction), to_string(v.layout),
                      to_string(v.epilogue), v.affine, detail::to_string(v.isa), v.schedule,
                      detail::cpu_supports(v.isa) && detail::allowed(v.isa)});
  }
  return result;
}

void set_max_isa(const std::string& isa) {
  detail::read_environment();
  detail::max_isa_index = isa.empty() ? -1 : static_cast<int>(detail::parse_isa(isa, "set_max_isa"));
}

void set_schedule(const std::string& schedule) {
  detail::selected_schedule();  // the environment is read first, so that it cannot override this later
  detail::schedule_index = detail::parse_schedule(schedule, "set_schedule");
}

std::string schedule() { return detail::selected_schedule(); }

std::vector<std::string> built_schedules() { return detail::built_schedule_names(); }

void set_verbose(bool on) { detail::verbose_override = on ? 1 : 0; }

bool verbose() {
  int forced = detail::verbose_override.load();
  return forced < 0 ? detail::verbose_from_environment() : forced == 1;
}

std::string last_dispatch_report() {
  return detail::last_request ? detail::explain(*detail::last_request) : std::string();
}

std::string max_isa() {
  detail::read_environment();
  int limit = detail::max_isa_index.load();
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
