#pragma once
// Picks the kernel variant for a call, best instruction set first, and can say why it passed over others.
#include <cstdint>
#include <string>

#include "runtime/halide_call.h"
#include "runtime/variant.h"

namespace fusednorm::detail {

struct VariantRequest {
  const char* function;  // for messages, e.g. "instance_norm" (which may run the batch kernels)
  Direction direction;
  Layout layout;
  bool affine;
  Norm norm = Norm::batch;  // the kernels' norm: candidates are the variants of this norm and direction
  Epilogue epilogue = Epilogue::none;
  int64_t elements = 0;  // of x: with a tuning table, the call's shape class follows from it
};

// What dispatch follows, read at once (set_max_isa, set_schedule, or the environment until they are called).
// Throws fusednorm::Error while the environment's FUSEDNORM_MAX_ISA or FUSEDNORM_SCHEDULE is malformed and the
// setter has not replaced it.
struct Settings {
  int max_isa;           // -1: no limit; else the best allowed Isa
  std::string schedule;  // "hand" or an autoscheduler
};
Settings current_settings();

// The variant to run; throws fusednorm::Error when none fits (saying which epilogues were built when none has the
// one asked for). With FUSEDNORM_VERBOSE=1 it prints, on stderr, the chosen variant and each candidate passed
// over with the reason.
// A tuning table (runtime/tuning.h, fusednorm::load_tuning) ranks the kernel's variants for the call's shape
// class; a schedule other than hand (set_schedule) takes precedence over it.
const KernelVariant& select_variant(const VariantRequest& request);

// Calls `variant`, which select_variant() just chose on this thread. Where that was a tuned choice and the kernel
// refuses the call before computing anything (a Halide argument check: an autoscheduled kernel's bounds error),
// the refusal goes into the dispatch report (and on stderr in verbose mode) and the untuned choice runs instead.
void call_selected(const KernelArgs& args, const KernelVariant& variant, const char* function);

}  // namespace fusednorm::detail
