#!/usr/bin/env bash
# ctest package.consumer: the installed package stands alone. Installs this build, copies the prefix elsewhere,
# and then, in a mount namespace where an empty directory hides the source tree (its .venv with Halide and CMake,
# and the build trees), builds and runs with Debian's /usr/bin/cmake:
#   - examples/link_only, which only links FusedNorm::fusednorm (and again with pkg-config and g++): ldd must show
#     neither libfmt nor Halide;
#   - examples/consumer, which generates kernels with fusednorm_add_kernel() (component generator) and calls
#     them through the functional API;
#   - examples/mpi_consumer (component mpi, where built): SyncBatchNorm under mpirun -np 2;
#   - the installed fusednorm_bench: one --problem, and a --quick tuning table for one kernel (docs/TUNING.md),
#     both written to the current directory.
# Prints the stripped size of link_only. Needs root for `unshare -m`; exits 77 (skipped) without it.
# Usage: package_test.sh <build dir> <source dir> <cmake that installs>
set -euo pipefail
build=$(realpath "$1") source=$(realpath "$2") install_cmake=$3

if [[ $(id -u) -ne 0 ]] || ! unshare -m true 2>/dev/null; then
  echo "package test skipped: hiding the source tree needs a mount namespace (unshare -m), which needs root"
  exit 77
fi
for tool in /usr/bin/cmake pkg-config g++ ldd strip; do
  command -v "$tool" >/dev/null || { echo "package test: $tool is missing (scripts/bootstrap.sh installs it)"; exit 1; }
done

work=$(mktemp -d /tmp/fusednorm-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$install_cmake" --install "$build" --prefix "$work/staging" >/dev/null
cp -a "$work/staging" "$work/prefix"
rm -rf "$work/staging"
if grep -rlF -e "$source" -e "$build" "$work/prefix/lib" --include='*.cmake' --include='*.pc'; then
  echo "package test: the files above name the source or build tree"
  exit 1
fi
cp -r "$source/examples/link_only" "$source/examples/consumer" "$source/examples/mpi_consumer" "$work/"
mkdir "$work/empty"

unshare -m bash -euo pipefail -s "$work" "$source" "$build" <<'INSIDE'
work=$1 source=$2 build=$3
mount --bind "$work/empty" "$source"
[[ $build == "$source"/* ]] || mount --bind "$work/empty" "$build"
[[ ! -e $source/.venv ]] || { echo "package test: $source/.venv is still visible"; exit 1; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset CMAKE_PREFIX_PATH Halide_DIR HalideHelpers_DIR PKG_CONFIG_PATH
cmake=/usr/bin/cmake
echo "== $($cmake --version | head -1), the prefix at $work/prefix, $source hidden"

step() { echo "== $1"; shift; "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log"; echo "package test: failed"; exit 1; }; }
no_fmt_or_halide() {
  if ldd "$1" | grep -Ei 'fmt|halide'; then echo "package test: $1 loads the libraries above"; exit 1; fi
}
# The bench's own dependencies, not what they load in turn: libtorch's libc10 needs Debian's shared libfmt itself.
bench_needs_no_fmt_or_halide() {
  if readelf -d "$1" | grep NEEDED | grep -Ei 'fmt|halide'; then
    echo "package test: $1 needs the libraries above"
    exit 1
  fi
}

step "link_only: configure" $cmake -S "$work/link_only" -B "$work/link_only-build" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$work/prefix"
step "link_only: build" $cmake --build "$work/link_only-build"
"$work/link_only-build/link_only"
no_fmt_or_halide "$work/link_only-build/link_only"
strip -o "$work/link_only.stripped" "$work/link_only-build/link_only"
echo "link_only, stripped: $(stat -c %s "$work/link_only.stripped") bytes"

flags=$(PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig pkg-config --cflags --libs fusednorm)
step "link_only with pkg-config: g++ ... $flags" g++ -std=c++20 -O2 "$work/link_only/main.cpp" $flags \
  -o "$work/link_only-pkg-config"
"$work/link_only-pkg-config" | tail -1
no_fmt_or_halide "$work/link_only-pkg-config"

step "consumer: configure (component generator)" $cmake -S "$work/consumer" -B "$work/consumer-build" \
  -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$work/prefix"
step "consumer: build (fusednorm_add_kernel runs the installed generator)" $cmake --build "$work/consumer-build"
arm64=$work/consumer-build/unet_group_norm_silu_arm64.fusednorm/unet_group_norm_silu_arm64_forward_training.a
[[ -f $arm64 ]] || { echo "package test: the arm-64 kernel library $arm64 was not built"; exit 1; }
"$work/consumer-build/consumer"
no_fmt_or_halide "$work/consumer-build/consumer"

# The component mpi, where the build has it: SyncBatchNorm over two processes from the installed package.
if [[ -f $work/prefix/lib/cmake/FusedNorm/FusedNormMpiTargets.cmake ]]; then
  step "mpi_consumer: configure (component mpi)" $cmake -S "$work/mpi_consumer" -B "$work/mpi_consumer-build" \
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$work/prefix"
  step "mpi_consumer: build" $cmake --build "$work/mpi_consumer-build"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
    OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -np 2 --oversubscribe "$work/mpi_consumer-build/mpi_consumer"
else
  echo "== mpi_consumer: skipped, this build has no component mpi"
fi

bench=$work/prefix/bin/fusednorm_bench
[[ -x $bench ]] || { echo "package test: $bench is not installed"; exit 1; }
bench_needs_no_fmt_or_halide "$bench"
mkdir "$work/bench" && cd "$work/bench"
step "installed fusednorm_bench --problem" "$bench" --reps 1 --problem batch_norm:forward_training:nhwc:4x8x5x7
grep -q '"shape_name": "4x8x5x7"' results.json || { echo "package test: the bench wrote no row of its problem"; exit 1; }
step "installed fusednorm_bench --tune --quick (one kernel)" "$bench" --tune --quick \
  --filter batch_norm_forward_inference_nchw_affine/cache
grep -qP '^batch_norm_forward_inference_nchw_affine\tcache\t\S+\t[0-9.]+\t' tuning.tsv ||
  { cat tuning.tsv; echo "package test: the tuning table has no timed row"; exit 1; }
INSIDE
echo "package test: OK"
