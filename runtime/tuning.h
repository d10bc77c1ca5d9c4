#pragma once
// The tuning table (docs/TUNING.md): for each kernel (norm, direction, layout, epilogue, affine) and
// shape class, the variants fusednorm_bench --tune timed on this machine, fastest first. Its text format is
// defined here, reader and writer together; the plans (runtime/plan.cpp) consult the loaded table.
#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/variant.h"

namespace fusednorm::detail {

// The tensors shaped like x that a call of this direction and epilogue reads or writes: a forward reads x and
// writes y (add_relu also reads z); a backward reads x and dy and writes dx (relu and add_relu also read y, the
// mask; add_relu also writes dz). SyncBatchNorm's statistics read x alone, its backward_reduce x and dy (and y), its
// backward_elementwise as a backward. Per-channel tensors are left out: they are small beside these.
int tensors_like_x(Direction direction, Epilogue epilogue);
// The working set a shape class is judged by: those tensors' bytes, float32.
int64_t working_set_bytes(Direction direction, Epilogue epilogue, int64_t elements);

// A variant's kernel: its name without instruction set and schedule, e.g.
// "batch_norm_forward_training_nchw_affine" for batch_norm_forward_training_nchw_affine_avx2_adams2019.
std::string kernel_name(const KernelVariant& v);

// Shape classes, smallest first: a call is in the first class whose bound its working set does not exceed.
struct TuningClass {
  std::string name;   // e.g. "cache", "llc", "dram"
  int64_t max_bytes;  // -1: unbounded (the last class, and only it)
};

// One line of the table: how one variant did on the shapes of one class.
struct TuningRow {
  std::string kernel;        // kernel_name() of the variant
  std::string shape_class;   // a TuningClass name
  std::string variant;       // a KernelVariant name of this build
  std::optional<double> ms;  // geometric mean of its median times over the shapes; none: it is out (result says why)
  std::string result;        // "fastest", "ok", or why it is out: "refused <shape>: ...", "wrong <shape>: ..."
  std::string shapes;        // the shapes it was timed on, comma-separated names
};

struct TuningTable {
  std::string source;  // the file, for messages and the dispatch report
  // machine, cpu, date, halide, threads (in this order when written): where and when it was measured.
  std::vector<std::pair<std::string, std::string>> header;
  std::vector<TuningClass> classes;
  std::vector<TuningRow> rows;

  // The index in `classes` of a call's class.
  size_t class_of(int64_t working_set) const;
  std::string describe_class(size_t index) const;  // "llc (working set up to 260 MiB)"

  struct Candidate {
    const KernelVariant* variant;
    double ms;
  };
  // The timed variants of the kernel of `request_like` (its norm, direction, layout, epilogue, affine) in class
  // `class_index`, fastest first; null where the table has none.
  const std::vector<Candidate>* candidates(const KernelVariant& request_like, size_t class_index) const;
  // Fills the index candidates() reads; parse_tuning_table() does it.
  void index();

 private:
  using Key = std::tuple<Norm, Direction, Layout, Epilogue, bool, size_t>;
  std::map<Key, std::vector<Candidate>> index_;
};

// The format (version 1), tab-separated, '#' lines and blank lines ignored:
//   fusednorm-tuning <TAB> 1
//   machine <TAB> ...      cpu <TAB> ...      date <TAB> ...      halide <TAB> ...      [threads <TAB> N]
//   class <TAB> <name> <TAB> <max working-set bytes>      (one or more, increasing; the last with "-")
//   kernel <TAB> class <TAB> variant <TAB> ms <TAB> result <TAB> shapes
//   <rows: six fields as named by that line>
// Throws fusednorm::Error "<source>:<line>: <what was found>, expected <what>" for any other content,
// including a variant this build does not have, or one that is not a variant of the row's kernel.
TuningTable parse_tuning_table(std::istream& in, const std::string& source);
void write_tuning_table(std::ostream& out, const TuningTable& table);

// The table dispatch consults: the one load_tuning() loaded, else FUSEDNORM_TUNING's (read at the first call of
// this or of load_tuning / clear_tuning; a malformed file throws from every call until cleared); null for none.
std::shared_ptr<const TuningTable> current_tuning();

}  // namespace fusednorm::detail
