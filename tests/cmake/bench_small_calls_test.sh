#!/usr/bin/env bash
# ctest bench.small_calls: fusednorm_bench --filter small_call times only the small calls (BatchNorm1d(64) on
# [32, 64] and [256, 64] through the layer API, beside a copy of x) and prints their table and writes them to the
# JSON.
# Usage: bench_small_calls_test.sh <fusednorm_bench> <python>
set -uo pipefail
bench=$(realpath "$1")
python=$2
work=$(mktemp -d /tmp/fusednorm-bench-small-calls.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "bench.small_calls: $*"; exit 1; }

(cd "$work" && "$bench" --reps 3 --filter small_call) >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; fail "the bench failed"; }
grep -q '^Small calls: ' "$work/out.txt" || { cat "$work/out.txt"; fail "no small-call section"; }
for case in 'BatchNorm1d\(64\) \[(32|256), 64\] training forward \+ backward' 'BatchNorm1d\(64\) \[(32|256), 64\] evaluation forward'; do
  grep -qE "^  $case +(! )?[0-9.]+ +(! )?[0-9.]+ +[0-9.]+$" "$work/out.txt" || { cat "$work/out.txt"; fail "no timed row '$case'"; }
done
# --filter small_call selects no kernel row, so no kernel table.
! grep -qE '^(batch_norm|copy) ' "$work/out.txt" || fail "kernel rows beside --filter small_call"
"$python" - "$work/results.json" <<'PY' || fail "results.json: see above"
import json, sys
results = json.load(open(sys.argv[1]))
calls = results["small_calls"]
assert [c["case"] for c in calls] == [f"BatchNorm1d(64) [{n}, 64] {what}" for n in (32, 256)
                                     for what in ("training forward + backward", "evaluation forward")], calls
assert [c["target_us"] for c in calls] == [5, 1.5, 15, None], calls
for c in calls:
    assert c["shape"] == [int(c["key"].rsplit("/", 1)[1].split("x")[0]), 64], c
    assert c["reps"] == 3 and c["median_us"] > 0 and c["copy_us"] > 0, c
    assert abs(c["ratio"] - c["median_us"] / c["copy_us"]) < 1e-9 * c["ratio"], c
assert results["rows"] == [], results["rows"]
PY
echo "bench.small_calls: OK"
