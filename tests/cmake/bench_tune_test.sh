#!/usr/bin/env bash
# ctest bench.tune: fusednorm_bench --tune over one cheap kernel and class writes a table that names it, and the
# kernels it offers to tune are the ones it can time: SyncBatchNorm's split kernels are not among them (selecting
# them once threw "unknown direction 'statistics'").
# Usage: bench_tune_test.sh <fusednorm_bench>
set -uo pipefail
bench=$(realpath "$1")
work=$(mktemp -d /tmp/fusednorm-bench-tune.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "bench.tune: $*"; exit 1; }

for split in statistics backward_reduce backward_elementwise; do
  "$bench" --tune --quick --filter "$split" --tuning-table "$work/none.tsv" >"$work/out.txt" 2>&1
  grep -q "selects no kernel and class" "$work/out.txt" || { cat "$work/out.txt"; fail "--filter $split: expected no kernel"; }
done
kernel=layer_norm_forward_training_plain
"$bench" --tune --quick --reps 3 --filter "$kernel/cache" --tuning-table "$work/table.tsv" >"$work/out.txt" 2>&1 ||
  { cat "$work/out.txt"; fail "the tuning run failed"; }
grep -q "$kernel" "$work/table.tsv" || { cat "$work/out.txt" "$work/table.tsv"; fail "the table does not name $kernel"; }
