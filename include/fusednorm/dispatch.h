#pragma once
// Which kernel variant runs, and why. Every variant the build produced is listed; the runtime picks the first
// that fits the call (norm, direction, layout, epilogue, affine) and the machine (instruction set), best
// instruction set first.
#include <cstdint>
#include <string>
#include <vector>

namespace fusednorm {

struct VariantInfo {
  std::string name;       // e.g. "batch_norm_forward_training_nchw_affine_avx512", "group_norm_silu_backward_nhwc_..."
  std::string norm;       // "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"
  std::string direction;  // "forward_training", "forward_inference", "backward", "statistics", ... (kinds.h)
  std::string layout;     // "nchw", "nhwc" ("nchw" for layer_norm and rms_norm: rows, no token in the name)
  std::string epilogue;   // "none", "relu", "add_relu", "silu" (the name's token, except none)
  bool affine;
  std::string dtype;     // of x and the tensors like it: "float32", "bfloat16", "float16"
  std::string isa;       // "avx512", "avx2", "sse41"
  std::string schedule;  // "hand" or an autoscheduler
  bool runs_here;        // the CPU supports its instruction set (and max_isa allows it)
  // The name without instruction set and schedule, e.g. "batch_norm_forward_training_nchw_affine": the variants
  // of one kernel compute the same thing, and a tuning table ranks them per kernel.
  std::string kernel{};
};

std::vector<VariantInfo> variants();

// The best instruction set dispatch may use: "avx512", "avx2" or "sse41"; "" for the best the CPU has.
// Also set by the environment variable FUSEDNORM_MAX_ISA (read once, at the first call). Like oneDNN's
// ONEDNN_MAX_CPU_ISA: for testing every instruction set's kernels on one machine, and for comparisons.
void set_max_isa(const std::string& isa);
std::string max_isa();

// The schedule dispatch runs: "hand" (the default), or an autoscheduler whose variants this build has
// ("Mullapudi2016", "Li2018", "Adams2019": avx2, affine, the kernels generators/CMakeLists.txt lists), for
// schedule comparisons. Also set by the environment variable FUSEDNORM_SCHEDULE (read once, at the first call);
// "" is "hand". A name without variants in this build throws. Dispatch never falls back to another schedule: a
// call the selected schedule has no variant for throws, naming the schedule. Autoscheduled kernels are planned
// for fixed sizes (32 x 256 x 56 x 56, or 8192 rows of 1024) and may refuse other extents with a Halide bounds
// error, which the call throws.
void set_schedule(const std::string& schedule);
std::string schedule();
// The schedules this build has variants of, "hand" first.
std::vector<std::string> built_schedules();

// Tuned dispatch (docs/TUNING.md): a table written by `fusednorm_bench --tune` (`make tune`) ranks,
// for each kernel and shape class, the variants of that kernel timed on the machine it ran on. While a table is
// loaded, a call whose kernel and class it has runs the fastest tabled variant that runs here (max_isa still
// caps it); calls it has nothing for run what they would without it. Precedence: a schedule other than "hand"
// (set_schedule, FUSEDNORM_SCHEDULE) wins over the table, which wins over the default (hand, best instruction
// set). A tuned variant that refuses a call's extents (an autoscheduled kernel's Halide bounds error) is reported
// (last_dispatch_report(), and on stderr in verbose mode) and the untuned choice runs instead.
// load_tuning() reads and checks the whole file first: a file that cannot be read or is malformed (any line that
// is not the format, a variant this build does not have) throws Error naming the file, the line and what was
// expected, and the table loaded before stays. The environment variable FUSEDNORM_TUNING=path loads one at the
// first call (or the first call of these); if that file is malformed, every call throws until load_tuning() or
// clear_tuning(). clear_tuning() stops tuned dispatch (and FUSEDNORM_TUNING, if not yet read).
void load_tuning(const std::string& path);
void clear_tuning();
// The file of the table dispatch consults; "" when none.
std::string tuning_table();

// What dispatch decided for the last call on this thread, as a struct (empty function before the first call):
// the call (function, backend, norm, direction, layout, epilogue, affine, dtype, x's shape), the variant that ran
// ("" when none fits: the call threw), its schedule and instruction set, how it was chosen ("default", "tuned" by
// the loaded tuning table, or "tuned_refused": the tuned variant refused the call's extents, which `refusal`
// quotes, and the default ran), the table and shape class where one is loaded, and each candidate passed over
// (the variants of the same norm and direction) with the reason: "layout nchw, the tensors are nhwc", "epilogue
// relu, the call asks for none", "avx512 is not supported by this CPU", "tuned slower in class llc: 1.9 ms
// against 1.2 ms", ... tuning_note says why a loaded table did not decide the call.
struct DispatchCandidate {
  std::string variant;
  std::string reason;
};
struct DispatchInfo {
  std::string function;  // "batch_norm", "instance_norm" (which may run batch_norm kernels), ...
  std::string backend;   // "cpu" or "cuda"
  std::string norm;      // of the kernels
  std::string direction, layout, epilogue;
  bool affine = false;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string variant, schedule, isa;
  std::string choice;  // "default", "tuned" or "tuned_refused"
  std::string refusal;
  std::string tuning_table, shape_class;
  std::vector<DispatchCandidate> passed_over;
  std::string tuning_note;
};
DispatchInfo last_dispatch();
// The same as text: "fusednorm: batch_norm forward_training: ran <variant> (schedule hand)" and a line per
// candidate passed over ("  passed over <variant>: <reason>"); "" before the first call.
std::string last_dispatch_report();

// Verbose mode, in the manner of ONEDNN_VERBOSE (docs/ARCHITECTURE.md): FUSEDNORM_VERBOSE=1 prints, on stderr,
// one line per call after it ran:
//   fusednorm,exec,<backend>,<function>,<direction>,<layout>,<dtype>,<epilogue>,<variant>,<schedule>,<choice>,
//   <shape NxCxHxW>,<kernel time in ms>
// FUSEDNORM_VERBOSE=2 adds, before it, a line per candidate passed over and where a tuning table did not decide:
//   fusednorm,candidate,<function>,<variant>,<reason, free text to the end of the line>
//   fusednorm,tuning,<function>,<note, free text>
// set_verbose_level(0, 1 or 2) and set_verbose(bool) (level 1 or 0) override the environment.
void set_verbose_level(int level);
int verbose_level();
void set_verbose(bool on);
bool verbose();

// The instruction sets whose kernels can run on this CPU, best first (max_isa not applied).
std::vector<std::string> supported_isas();

}  // namespace fusednorm
