#pragma once
// Which kernel variant runs, and why. Every variant the build produced is listed; the runtime picks the first
// that fits the call (norm, direction, layout, epilogue, affine) and the machine (instruction set), best
// instruction set first.
#include <string>
#include <vector>

namespace fusednorm {

struct VariantInfo {
  std::string name;       // e.g. "batch_norm_forward_training_nchw_affine_avx512", "group_norm_silu_backward_nhwc_..."
  std::string norm;       // "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"
  std::string direction;  // "forward_training", "forward_inference", "backward"
  std::string layout;     // "nchw", "nhwc" ("nchw" for layer_norm and rms_norm: rows, no token in the name)
  std::string epilogue;   // "none", "relu", "add_relu", "silu" (the name's token, except none)
  bool affine;
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

// Tuned dispatch (README.md, "Tuned dispatch"): a table written by `fusednorm_bench --tune` (`make tune`) ranks,
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

// Dispatch reports in the manner of oneDNN's verbose mode: the variant that ran and, for each candidate (the
// variants of the same norm and direction) passed over, why ("layout nchw, the tensors are nhwc", "epilogue relu,
// the call asks for none", "avx512 is not supported by this CPU", ...). With a tuning table it says whether the
// choice was tuned: "ran <variant> (schedule Adams2019; tuned: class llc (working set up to 260 MiB), working set
// 12.3 MiB, table /path/tuning.tsv)", why each other variant of the kernel was not ("tuned slower in class llc:
// 1.9 ms against 1.2 ms"), or why the table did not decide this call ("tuning: table ... has no timed variant of
// <kernel> in class dram ...", "... not consulted: schedule Adams2019 is set ...", "the tuned <variant> refused
// the call").
// set_verbose(true) prints one on stderr at every call, as FUSEDNORM_VERBOSE=1 does; set_verbose(false) stops
// it whatever the environment says.
void set_verbose(bool on);
bool verbose();
// The report of the last call on this thread ("" before the first), whether or not verbose is on.
std::string last_dispatch_report();

// The instruction sets whose kernels can run on this CPU, best first (max_isa not applied).
std::vector<std::string> supported_isas();

}  // namespace fusednorm
