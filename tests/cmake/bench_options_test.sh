#!/usr/bin/env bash
# ctest bench.options: fusednorm_bench refuses a malformed command line (a flag given a value, a value that is not
# a positive integer, an unknown option, a second case after one --problem) with exit status 2 and a message naming
# the option and the value, before it times anything; --help prints the usage and exits 0.
# Usage: bench_options_test.sh <fusednorm_bench>
set -uo pipefail
bench=$1
fail() { echo "bench.options: $*"; exit 1; }

expect_refused() {
  local message=$1 out status
  shift
  out=$("$bench" "$@" 2>&1)
  status=$?
  ((status == 2)) || fail "'$*' exited with status $status, expected 2: ${out%%$'\n'*}"
  [[ $out == *"$message"* ]] || fail "'$*' said: ${out%%$'\n'*}; expected: $message"
  [[ $out == *"usage: fusednorm_bench"* ]] || fail "'$*' printed no usage after its message"
}
expect_refused "--quick: takes no value, got 'x'" --quick=x
expect_refused "--tune: takes no value, got '0'" --tune=0
expect_refused "not expected: --no-such-option" --no-such-option
expect_refused "not expected: stray" stray
expect_refused "--threads is 'x', expected a positive integer" --threads=x
expect_refused "--threads is '2.5', expected a positive integer" --threads 2.5
expect_refused "--reps is '0', expected a positive integer" --reps 0
expect_refused "--reps is '0x10', expected a positive integer" --reps=0x10
expect_refused "--reps is '99999999999', expected a positive integer" --reps 99999999999
expect_refused "--threads: 1 required" --threads
expect_refused "--shapes names 'nope', expected one or more of resnet50" --shapes resnet50,nope
expect_refused "not expected: batch_norm:backward:nchw:2x3" --problem batch_norm:backward:nchw:2x3 \
  batch_norm:backward:nchw:2x3
expect_refused "--problem does not apply to --tune" --tune --problem batch_norm:backward:nchw:2x3

out=$("$bench" --help 2>&1) || fail "--help exited with status $?"
[[ $out == "usage: fusednorm_bench [options]"* ]] || fail "--help printed: ${out%%$'\n'*}"
for option in --quick --filter --shapes --problem --threads --reps --json --markdown --tune --dram --tuning-table; do
  [[ $out == *"  $option "* ]] || fail "--help does not list $option"
done
echo "bench.options: OK"
