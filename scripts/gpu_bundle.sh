#!/usr/bin/env bash
# Collects what the GPU check needs from a FUSEDNORM_CUDA build into one folder (default build/gpu-bundle, ignored
# by git) that the device tool carries to the GPU machine (`carry: ["build/gpu-bundle"]`), which has no Halide,
# fmt or GoogleTest: tests/cuda_test (GoogleTest linked statically, libstdc++ too), the C ABI library
# scripts/gpu_bench.py loads, and any shared library they need beyond glibc and GCC's runtime (none since fmt is
# compiled into the runtime). Binaries are stripped; the size is printed (the device tool carries 64 MiB at most, the working tree included).
#   scripts/gpu_bundle.sh [build folder, default build/gpu] [bundle folder, default build/gpu-bundle]
# Schedule experiments: GPU_BUNDLE_VARIANTS="build/gpu-l16 build/gpu-l8" adds each such build's C ABI library
# (configured with -DFUSEDNORM_CUDA_SCHEDULE_PARAMS=...) as variants/<name>/, which scripts/gpu_check.sh times
# beside the main one. The single-read probe (bench/cuda/single_read_probe.cu) is added when nvcc is here.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/gpu}
bundle=${2:-build/gpu-bundle}
test -f "$build/CMakeCache.txt" || { echo "gpu_bundle: $build is not a build folder" >&2; exit 1; }
grep -q '^FUSEDNORM_CUDA:BOOL=ON' "$build/CMakeCache.txt" ||
  { echo "gpu_bundle: $build was configured without -DFUSEDNORM_CUDA=ON" >&2; exit 1; }
.venv/bin/cmake --build "$build" --target cuda_test fusednorm_cuda_c
rm -rf "$bundle"
mkdir -p "$bundle/lib"
cp "$build/tests/cuda_test" "$build/bench/cuda/libfusednorm_cuda_c.so" "$bundle/"
strip --strip-unneeded "$bundle/cuda_test" "$bundle/libfusednorm_cuda_c.so"
# Shared libraries outside glibc and GCC's runtime that the two need, found by ldd here.
for binary in "$bundle/cuda_test" "$bundle/libfusednorm_cuda_c.so"; do
  ldd "$binary" | awk '/=> \// {print $3}' | while read -r library; do
    case "$(basename "$library")" in
      libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|ld-linux*|libgcc_s.so.*|libstdc++.so.*) ;;
      *) cp -L "$library" "$bundle/lib/" ;;
    esac
  done
done
for variant_build in ${GPU_BUNDLE_VARIANTS:-}; do
  name=$(basename "$variant_build")
  name=${name#gpu-}
  .venv/bin/cmake --build "$variant_build" --target fusednorm_cuda_c
  mkdir -p "$bundle/variants/$name"
  cp "$variant_build/bench/cuda/libfusednorm_cuda_c.so" "$bundle/variants/$name/"
  strip --strip-unneeded "$bundle/variants/$name/libfusednorm_cuda_c.so"
  grep '^FUSEDNORM_CUDA_SCHEDULE_PARAMS:' "$variant_build/CMakeCache.txt" > "$bundle/variants/$name/PARAMS"
done
if command -v nvcc >/dev/null; then
  scripts/build_single_read_probe.sh "$bundle/libsingle_read_probe.so"
fi
git rev-parse HEAD > "$bundle/COMMIT" 2>/dev/null || true
du -sh "$bundle"
ls -la "$bundle" "$bundle/lib"
