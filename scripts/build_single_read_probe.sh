#!/usr/bin/env bash
# Builds bench/cuda/single_read_probe.cu (a standalone probe, outside the CMake build) into
# build/gpu-bundle/libsingle_read_probe.so for scripts/gpu_probe.py, for sm_90 (SASS) plus compute_90 PTX, with
# the CUDA runtime linked statically so that the GPU machine needs only its driver. Prints ptxas's register and
# spill report and fails when any kernel spills (spilled registers would make the "held in registers" design
# read local memory instead).
#   scripts/build_single_read_probe.sh [output .so, default build/gpu-bundle/libsingle_read_probe.so]
# Note: scripts/gpu_bundle.sh recreates build/gpu-bundle from scratch; run this after it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-bundle/libsingle_read_probe.so}
mkdir -p "$(dirname "$out")"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! nvcc -O3 -std=c++17 -gencode arch=compute_90,code=[sm_90,compute_90] -Xptxas -v --shared -Xcompiler -fPIC \
    -cudart static -o "$out" bench/cuda/single_read_probe.cu >"$log" 2>&1; then
  cat "$log" >&2
  echo "build_single_read_probe: nvcc failed" >&2
  exit 1
fi
# ptxas -v prints, per kernel, "Compiling entry function '<mangled>'" then "Used N registers, ..." and a line with
# "bytes stack frame, N bytes spill stores, N bytes spill loads". Show them with the kernel names demangled.
grep -E "Compiling entry function|Function properties for|registers|spill" "$log" |
  { command -v c++filt >/dev/null && c++filt || cat; }
grep -vE "Compiling entry function|Function properties for|registers|spill|^ptxas info *: *$" "$log" || true
spills=$(grep -E "bytes spill (stores|loads)" "$log" | grep -vE " 0 bytes spill stores, 0 bytes spill loads" || true)
if [ -n "$spills" ]; then
  echo "build_single_read_probe: FAIL, a kernel spills registers:" >&2
  echo "$spills" >&2
  exit 1
fi
echo "build_single_read_probe: built $out (no spills)"
ls -la "$out"
