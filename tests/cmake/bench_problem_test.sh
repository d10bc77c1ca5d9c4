#!/usr/bin/env bash
# ctest bench.problem: fusednorm_bench --problem runs exactly the cases given (each checked against the float64
# reference by the bench itself, which exits 1 on a wrong result) and refuses malformed ones naming the field;
# shape lists that share a case time it once.
# Usage: bench_problem_test.sh <fusednorm_bench>
set -uo pipefail
bench=$(realpath "$1")
work=$(mktemp -d /tmp/fusednorm-bench-problem.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "bench.problem: $*"; exit 1; }

(cd "$work" && "$bench" --reps 1 \
  --problem batch_norm_relu:backward:nhwc:3x7x5x3 \
  --problem group_norm:forward_training:nchw:2x6x3x5:g3 \
  --problem layer_norm:backward:rows:3x5x7:d2 \
  --problem rms_norm:backward:rows:5x33 \
  --problem instance_norm:forward_training:nhwc:2x3x5x7) >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; fail "the bench failed"; }
[[ -f $work/results.json ]] || fail "no results.json in the current directory"
rows() { grep -cE "$1" "$work/out.txt"; }
for case in 'batch_norm_relu +backward +nhwc +\[3, 7, 5, 3\]' 'group_norm +forward_training +nchw +\[2, 6, 3, 5\]' \
            'layer_norm +backward +rows +\[3, 5, 7\]' 'rms_norm +backward +rows +\[5, 33\]' \
            'instance_norm +forward_training +nhwc +\[2, 3, 5, 7\]'; do
  (($(rows "^$case +fusednorm/hand/[a-z0-9]+ +fusednorm +[0-9.]+ ") == 1)) || { cat "$work/out.txt"; fail "no timed hand row for '$case'"; }
  (($(rows "^$case +naive ") == 1)) || fail "no naive row for '$case'"
done
# PyTorch's row of each case, verified by the bench like the others, where it was built with libtorch (make bench
# installs it; make test does not, and the header then says why there is none).
if grep -qE '^  PyTorch +PyTorch ' "$work/out.txt"; then
  for case in 'batch_norm_relu +backward +nhwc +\[3, 7, 5, 3\] +pytorch/nhwc' 'group_norm +forward_training +nchw +\[2, 6, 3, 5\] +pytorch/nchw' \
              'layer_norm +backward +rows +\[3, 5, 7\] +pytorch/rows' 'rms_norm +backward +rows +\[5, 33\] +pytorch/rows' \
              'instance_norm +forward_training +nhwc +\[2, 3, 5, 7\] +pytorch/nhwc'; do
    (($(rows "^$case +framework +[0-9.]+ ") == 1)) || { cat "$work/out.txt"; fail "no timed PyTorch row for '$case'"; }
  done
else
  grep -qE '^  PyTorch +not built \(' "$work/out.txt" || { cat "$work/out.txt"; fail "no PyTorch line in the header"; }
fi
# Nothing but those five cases: no other direction, layout or op.
other=$(grep -E '^(batch_norm|batch_norm_relu|group_norm|layer_norm|rms_norm|instance_norm) ' "$work/out.txt" |
        grep -vE '^(batch_norm_relu +backward +nhwc|group_norm +forward_training +nchw|layer_norm +backward +rows|rms_norm +backward +rows|instance_norm +forward_training +nhwc) ')
[[ -z $other ]] || fail "rows of cases not asked for: $other"
# A 16-bit case (:bfloat16), where the CPU runs a 16-bit kernel (AVX2 or NEON): its hand row alone, verified,
# and no float32 row of it.
out16=$(cd "$work" && "$bench" --reps 1 --problem layer_norm:forward_training:rows:6x40:bfloat16 2>&1)
if [[ $out16 != *"no affine layer_norm forward_training rows bfloat16 kernel"* ]]; then
  grep -qE '^layer_norm bfloat16 +forward_training +rows +\[6, 40\] +fusednorm/hand/[a-z0-9]+ +fusednorm +[0-9.]+ ' <<<"$out16" ||
    { echo "$out16"; fail "no timed bfloat16 hand row for layer_norm:forward_training:rows:6x40:bfloat16"; }
  ! grep -qE '^layer_norm +forward_training' <<<"$out16" || fail "a float32 row beside the bfloat16 problem"
fi
# --problem alone replaces the shape lists, and the small calls that come with them.
! grep -q '^Small calls: ' "$work/out.txt" || fail "small calls beside --problem alone"

expect_refused() {
  local spec=$1 message=$2 out
  out=$("$bench" --problem "$spec" 2>&1) && fail "--problem '$spec' was accepted"
  [[ $out == *"$message"* ]] || fail "--problem '$spec' said: ${out%%$'\n'*}; expected: $message"
}
expect_refused group_norm:backward:nchw:2x6x3x5 "group_norm needs :gGROUPS"
expect_refused group_norm:backward:nchw:2x6x3x5:g4 "4 groups do not divide C = 6"
expect_refused layer_norm:forward_inference:rows:4x5 "DIRECTION is 'forward_inference', expected one of forward_training, backward"
expect_refused batch_norm:forward_training:rows:4x5 "LAYOUT is 'rows', expected one of nchw, nhwc"
expect_refused batch_norm:forward_training:nhwc:4x0x5 "SHAPE has the extent '0'"
expect_refused batch_norm:backward:nchw:99999999999x99999999999x5 "more elements than int64 holds"
expect_refused batch_norm:backward:nchw:4 "SHAPE has 1 dimension"
expect_refused layer_norm:backward:rows:3x5:d2 "layer_norm takes :dDIMS"
expect_refused rms:backward:rows:3x5 "OP is 'rms', expected one of batch_norm, batch_norm_relu, layer_norm"
expect_refused rms_norm:backward:nchw:3x5 "LAYOUT is 'nchw', expected one of rows for rms_norm"
expect_refused rms_norm:backward:rows:3x5:d2 "rms_norm takes :dDIMS"
expect_refused instance_norm:forward_training:nchw:3x5x2:bfloat16 "DTYPE is bfloat16, expected float32 for instance_norm"
expect_refused layer_norm:backward:rows:3x5:d1:bfloat16:x "7 fields"
expect_refused instance_norm:forward_inference:nchw:3x5x2 "DIRECTION is 'forward_inference', expected one of forward_training, backward"
expect_refused instance_norm:backward:nchw:3x5x2:g5 "instance_norm takes no fifth field, got 'g5'"

# Lists that share a case time it once, under the first list's name (transformer and llm share 4096 x 4096).
(cd "$work" && "$bench" --reps 1 --shapes transformer_small,transformer_small --filter rms_norm/backward/rows/transformer.8x4096) \
  >"$work/twice.txt" 2>&1 || { cat "$work/twice.txt"; fail "the bench failed on a list given twice"; }
(($(grep -cE '^rms_norm +backward +rows +\[8, 4096\] +fusednorm/hand/' "$work/twice.txt") == 1)) ||
  { cat "$work/twice.txt"; fail "a list given twice timed its case other than once"; }
echo "bench.problem: OK"
