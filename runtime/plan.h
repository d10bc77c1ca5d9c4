#pragma once
// The call plan: which variant runs a problem, decided once and cached (oneDNN's primitive cache is the model).
// A request names the problem (function, norm, direction, layout, epilogue, affine, dtype, backend and, where a
// tuning table is loaded, the shape class of its extents); plan_call() returns the plan, made on the first call
// of its kind on a thread and found again afterwards without a lock, an allocation or a formatted string. The
// reasons why other variants were passed over are kept as enums and become text only when a report is asked for
// (last_dispatch, verbose level 2). The settings (max_isa, schedule, tuning table) are read once per call: a
// setter on another thread bumps a generation, and each thread's plans are remade at its next call.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/bind.h"
#include "runtime/variant.h"

namespace fusednorm::detail {

class BackendContext;
struct TuningTable;

struct PlanRequest {
  const char* function;  // for messages, e.g. "instance_norm" (which may run the batch kernels)
  Norm norm;             // the kernels' norm: candidates are the variants of this norm and direction
  Direction direction;
  Layout layout;
  Epilogue epilogue;
  bool affine;
  DType dtype = DType::float32;
  int64_t elements = 0;  // of x: with a tuning table, the call's shape class follows from it
};

// Why a candidate (a variant of the request's norm and direction) did not run, as dispatch decided it.
enum class PassedOver : uint8_t {
  schedule,           // another schedule is set
  layout,             // another layout
  epilogue,           // another epilogue
  affine,             // affine without weight or bias, or plain with them
  dtype,              // another storage type
  isa_unsupported,    // this CPU lacks the instruction set
  isa_above_limit,    // max_isa excludes it
  better_isa,         // the variant that ran comes first (better instruction set)
  tuned_slower,       // the tuning table ranks it below the one that ran
  tuned_not_ranked,   // the tuning table has no time for it in this class
  tuned_isa,          // ranked by the table, but its instruction set cannot run (isa_* says which)
  tuned_refused,      // the table's choice, but its kernel refused this call's extents
};

// What dispatch follows, read at once.
struct Settings {
  int max_isa = -1;  // -1: no limit; else the best allowed Isa
  const std::string* schedule = nullptr;  // "hand" or an autoscheduler (a name of built_schedules())
  std::shared_ptr<const TuningTable> table;  // null: none
};

struct Plan {
  PlanRequest request;
  Backend backend;
  Settings settings;
  size_t shape_class = 0;  // in table->classes, where a table is loaded
  const KernelVariant* untuned = nullptr;  // what runs without a table (never null in a plan)
  const KernelVariant* tuned = nullptr;    // the table's choice; null: not tuned
  const KernelVariant* kernel_like = nullptr;  // a variant of the request's kernel (any isa, schedule)
  // The variants take weight and bias: the call's, or for a call without them where the backend has no plain
  // kernel (the channel norms, generators/CMakeLists.txt), weight 1, bias 0 and scratch for the gradients.
  bool affine_kernel = false;
  ArgumentOrder untuned_order, tuned_order;
  struct Candidate {
    const KernelVariant* variant;
    PassedOver reason;
  };
  std::vector<Candidate> passed_over;  // every other candidate, in table order (with tuned_refused: see report)
};

// The plan of the request on `backend`; throws fusednorm::Error when no variant fits (saying which epilogues were
// built when none has the one asked for) or a setting is malformed (FUSEDNORM_MAX_ISA, FUSEDNORM_SCHEDULE,
// FUSEDNORM_TUNING).
const Plan& plan_call(const PlanRequest& request, const BackendContext& backend);

// Runs the plan's variant with the arguments bound (and, where the tuned variant refuses the call's extents
// before computing anything, the untuned one instead, saying so in the report). Records the call for
// last_dispatch() and prints it in verbose mode; `shape` is x's, for those.
void run_plan(const Plan& plan, Binder& arguments, std::span<const int64_t> shape);

// The plans this thread has made since it started (for tests: a cached call makes none).
int64_t plans_made();

// The settings changed (a setter, load_tuning, clear_tuning): every thread remakes its plans at its next call.
void settings_changed();

const std::vector<std::string>& built_schedule_names();

}  // namespace fusednorm::detail
