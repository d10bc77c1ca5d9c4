#!/usr/bin/env bash
# The GPU check, in one call on the GPU machine (docs/CUDA.md):
#   1. tests/cuda_test: every CUDA variant against the float64 reference, SyncBatchNorm on device tensors, and
#      NcclCommunicator in a group of one;
#   2. scripts/gpu_bench.py: FusedNorm against PyTorch eager and torch.compile on the same shapes and dtype, with
#      the copy ceiling measured in the same run; a table of ms, GB/s and ratios, JSON in $OUT;
#   3. each schedule variant of the bundle (variants/<name>/, scripts/gpu_bundle.sh) timed the same way, without
#      torch.compile, its JSON in $OUT/variants/<name>/;
#   4. where the bundle has it, scripts/gpu_probe.py: the single-read BatchNorm probe (bench/cuda/single_read_probe.cu).
# Here first: scripts/gpu_bundle.sh (builds and collects build/gpu-bundle). Then, with the device tool:
#   run(command="scripts/gpu_check.sh", carry=["build/gpu-bundle"], timeout_s=560)
# Arguments after the bundle folder go to gpu_bench.py (--quick, --no-compile, --budget SECONDS).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-build/gpu-bundle}
shift || true
out=${OUT:-out}
started=$SECONDS
total=${GPU_CHECK_SECONDS:-550}  # keep under the device tool's timeout_s
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NCCL for NcclTest (fusednorm/nccl.h loads libnccl.so.2): the one PyTorch's wheel carries, where it has one.
nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
if [ -n "$nccl_lib" ] && [ -f "$nccl_lib/libnccl.so.2" ]; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nccl_lib"; fi
for f in cuda_test libfusednorm_cuda_c.so; do
  test -f "$bundle/$f" || { echo "gpu_check: $bundle/$f is missing: run scripts/gpu_bundle.sh here first" >&2; exit 2; }
done
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' || true
echo "== tests/cuda_test (bundle commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown))"
timeout 240 "$bundle/cuda_test" --gtest_output="json:$out/cuda_test.json" > "$out/cuda_test.log" 2>&1
test_rc=$?
grep -E '^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|Failure|error' "$out/cuda_test.log" | head -60
tail -3 "$out/cuda_test.log"
echo "== scripts/gpu_bench.py"
left=$(( total - (SECONDS - started) ))
PYTHONUNBUFFERED=1 timeout "$left" python3 scripts/gpu_bench.py --lib "$bundle/libfusednorm_cuda_c.so" --out "$out" \
  --budget $(( left - 150 )) "$@" \
  2>&1 | tee "$out/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
variants_rc=0
for variant in "$bundle"/variants/*/; do
  [ -f "$variant/libfusednorm_cuda_c.so" ] || continue
  name=$(basename "$variant")
  echo "== variant $name: $(cat "$variant/PARAMS" 2>/dev/null)"
  PYTHONUNBUFFERED=1 timeout 120 python3 scripts/gpu_bench.py --lib "$variant/libfusednorm_cuda_c.so" \
    --out "$out/variants/$name" --no-compile | sed -n '/^| op/,$p' || variants_rc=1
done
probe_rc=0
if [ -f "$bundle/libsingle_read_probe.so" ]; then
  echo "== scripts/gpu_probe.py (single-read BatchNorm probe)"
  PYTHONUNBUFFERED=1 timeout 240 python3 scripts/gpu_probe.py --lib "$bundle/libsingle_read_probe.so" --out "$out" \
    2>&1 | tee "$out/gpu_probe.log"
  probe_rc=${PIPESTATUS[0]}
fi
echo "== cuda_test exit $test_rc, gpu_bench exit $bench_rc, variants $variants_rc, probe $probe_rc" \
  "(logs and JSON in $out)"
exit $(( test_rc != 0 || bench_rc != 0 ))
