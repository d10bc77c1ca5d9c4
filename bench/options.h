#pragma once
// The command line of fusednorm_bench.
#include <string>
#include <vector>

namespace fusednorm::bench {

struct Options {
  bool quick = false;         // small shapes and short timing, for development
  std::string filter;         // substring of "<op>/<direction>/<layout>/<shape name>"; empty selects all
  int threads = 0;            // kernels, baseline and copies alike; 0 means one per core
  std::string json_path;      // empty means results.json in the current directory
  std::string markdown_path;  // also the table as GitHub-flavoured markdown there; empty: no markdown
  int reps = 0;               // timed runs per row; 0 means adaptive (at least 5 and about 0.5 s)
  // Lists of tests/support/shapes.h, among shape_list_names() (bench/cases.h); empty: default_shape_lists().
  std::vector<std::string> shape_lists;
  // --problem, each checked by parse_problem() (bench/cases.h). Given without --shapes, only these run.
  std::vector<std::string> problems;
  // --tune (bench/tune.h): time every variant per kernel and shape class and write the tuning table instead.
  bool tune = false;
  std::string tuning_path;  // where --tune writes the table; empty: tuning.tsv in the current directory
  bool tune_dram = false;   // --tune also times the dram class (minutes per kernel where the last-level cache is big)
};

// Exits with the usage text on --help (status 0) or on a malformed command line (status 2).
Options parse_options(int argc, char** argv);

}  // namespace fusednorm::bench
