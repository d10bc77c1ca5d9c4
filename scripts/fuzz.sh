#!/usr/bin/env bash
# Runs the libFuzzer targets of a fuzz build (`make fuzz`; tests/fuzz/README.md), each for SECONDS, as many at a
# time as there are cores, then prints one summary line per target. New inputs go to <build>/corpus/<target>
# (the seeds in tests/fuzz/corpus are read, never written), crashes and their inputs to <build>/findings/.
# Usage: scripts/fuzz.sh <fuzz build dir> <seconds> <target>...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$1 seconds=$2
shift 2
mkdir -p "$build/findings" "$build/logs"
export HL_NUM_THREADS=1  # one fuzzer per core; the kernels' thread pool would only contend
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run() {
  local target=$1
  mkdir -p "$build/corpus/$target"
  "$build/tests/fuzz/fuzz_$target" "$build/corpus/$target" "$root/tests/fuzz/corpus/$target" \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$build/findings/$target-" >"$build/logs/$target.log" 2>&1
}
echo "fuzz: ${*} for ${seconds} s each, $(nproc) at a time (logs: $build/logs)"
status=0
pids=()
for target in "$@"; do
  while (($(jobs -rp | wc -l) >= $(nproc))); do wait -n || true; done
  run "$target" &
  pids+=("$!:$target")
done
for entry in "${pids[@]}"; do
  pid=${entry%%:*} target=${entry#*:}
  if wait "$pid"; then result=ok; else result=FAILED; status=1; fi
  log=$build/logs/$target.log
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -oE 'DONE[[:space:]]+cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 |
        sed 's/DONE[[:space:]]*//' || true)
  echo "fuzz_$target: $result, $runs inputs in ${seconds} s; ${cov:-no final line}; findings: $(ls "$build/findings" |
    grep -c "^$target-" || true)"
  [[ $result == ok ]] || tail -30 "$log"
done
exit "$status"
