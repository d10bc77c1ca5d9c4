#include "runtime/dispatch.h"

#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "fusednorm/dispatch.h"
#include "fusednorm/error.h"
#include "fusednorm_variant_table.h"

namespace fusednorm {
namespace detail {

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
  }
  return "?";
}

namespace {

constexpr Isa kAllIsas[] = {Isa::avx512, Isa::avx2, Isa::sse41};

// The features Halide's targets assume (see generators/CMakeLists.txt): avx512 is Halide's avx512_skylake.
bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && cpu_supports(Isa::avx2);
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
             cpu_supports(Isa::sse41);
    case Isa::sse41: return __builtin_cpu_supports("sse4.1");
  }
  return false;
}

Isa parse_isa(const std::string& text, const char* source) {
  for (Isa isa : kAllIsas) {
    if (text == to_string(isa)) return isa;
  }
  throw Error(fmt::format("{}: isa is '{}', expected one of avx512, avx2, sse41 (or empty for the best available)",
                          source, text));
}

// -1: no limit. Stored as the index into kAllIsas of the best allowed instruction set.
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

bool verbose() {
  static const bool on = [] {
    const char* value = std::getenv("FUSEDNORM_VERBOSE");
    return value && *value && std::string(value) != "0";
  }();
  return on;
}

}  // namespace

const KernelVariant& select_variant(const VariantRequest& request) {
  const KernelVariant* chosen = nullptr;
  std::string passed_over;
  for (const KernelVariant& v : kBuiltVariants) {
    std::string why;
    if (v.direction != request.direction) continue;  // another operation entirely: not a candidate
    if (v.layout != request.layout) {
      why = fmt::format("layout {}, the tensors are {}", to_string(v.layout), to_string(request.layout));
    } else if (v.affine != request.affine) {
      why = v.affine ? "affine, the call has no weight or bias" : "not affine, the call has a weight or bias";
    } else if (!cpu_supports(v.isa)) {
      why = fmt::format("{} is not supported by this CPU", to_string(v.isa));
    } else if (!allowed(v.isa)) {
      why = fmt::format("{} is above the max_isa limit {}", to_string(v.isa), max_isa());
    } else if (chosen) {
      why = fmt::format("{} chosen first (better instruction set)", chosen->name);
    } else {
      chosen = &v;
      continue;
    }
    if (verbose()) passed_over += fmt::format("\n  passed over {}: {}", v.name, why);
  }
  if (!chosen) {
    throw Error(fmt::format("{}: no {} kernel for layout {}{} runs on this CPU (max_isa '{}')", request.function,
                            to_string(request.direction), to_string(request.layout),
                            request.affine ? ", affine" : "", max_isa()));
  }
  if (verbose()) {
    std::fprintf(stderr, "fusednorm: %s %s: ran %s (schedule %s)%s\n", request.function, to_string(request.direction),
                 chosen->name, chosen->schedule, passed_over.c_str());
  }
  return *chosen;
}

}  // namespace detail

std::vector<VariantInfo> variants() {
  std::vector<VariantInfo> result;
  for (const detail::KernelVariant& v : detail::kBuiltVariants) {
    result.push_back({v.name, detail::to_string(v.direction), to_string(v.layout), v.affine, detail::to_string(v.isa),
                      v.schedule, detail::cpu_supports(v.isa) && detail::allowed(v.isa)});
  }
  return result;
}

void set_max_isa(const std::string& isa) {
  detail::read_environment();
  detail::max_isa_index = isa.empty() ? -1 : static_cast<int>(detail::parse_isa(isa, "set_max_isa"));
}

std::string max_isa() {
  detail::read_environment();
  int limit = detail::max_isa_index.load();
  return limit < 0 ? "" : detail::to_string(detail::kAllIsas[limit]);
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> result;
  for (detail::Isa isa : detail::kAllIsas) {
    if (detail::cpu_supports(isa)) result.push_back(detail::to_string(isa));
  }
  return result;
}

}  // namespace fusednorm
