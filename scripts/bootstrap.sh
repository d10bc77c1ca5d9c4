#!/usr/bin/env bash
# Installs what the build needs, and nothing when it is already there:
#   - Debian packages (only when running as root and a package is missing);
#   - a project-local virtual environment (.venv) with the pinned Halide wheel, CMake, Ninja and matplotlib
#     (the benchmark's and `make demo`'s plots);
#   - the handwritten digits data set that examples/train_mlp trains on, .venv/share/fusednorm/digits.csv, taken
#     out of the pinned scikit-learn wheel (scripts/data-requirements.txt, scripts/fetch_digits.py).
# `scripts/bootstrap.sh aarch64` adds what the preset aarch64 needs: Debian's aarch64 cross compiler, qemu-user,
# and fmt and GoogleTest for arm64 (multiarch: the arm64 architecture is added to dpkg for them).
# `scripts/bootstrap.sh bench` adds libtorch-dev, the benchmark's PyTorch baseline; `fuzz` clang for libFuzzer.
# Idempotent: a stamp keyed on scripts/requirements.txt makes a second run take well under a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# libdnnl-dev: oneDNN, the benchmark's library baseline (bench/onednn_baseline.cpp). libtorch-dev (PyTorch's
# baseline) is not in this list but in the bench mode below: it pulls in about 160 packages (OpenCV, FFmpeg), which
# `make build` and `make test` do not need.
# ocl-icd-opencl-dev: Debian's dnnl-config.cmake calls find_package(OpenCL), and --no-install-recommends leaves it
# out (configure failed on a bare Debian 12 at bench/CMakeLists.txt).
# cmake, pkg-config: the package test (tests/cmake/package_test.sh) builds consumers as a user would, with Debian's
# CMake 3.25 and with pkg-config, the source tree and its .venv hidden.
# nlohmann-json3-dev: the safetensors header's JSON (runtime/state_dict.cpp), compiled into libfusednorm, and the
# benchmark's JSON results. libcli11-dev: the benchmark's command line (bench/options.cpp).
# libeigen3-dev: the matrix products of examples/train_mlp (Linear layers), header-only and private to the example.
# libopenmpi-dev, openmpi-bin: Open MPI for the component mpi (runtime/mpi_communicator.cpp) and mpirun for its tests.
debian_packages=(g++ make libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libdnnl-dev
                 ocl-icd-opencl-dev cmake pkg-config libeigen3-dev libopenmpi-dev openmpi-bin)
if [[ ${1:-} == aarch64 ]]; then
  debian_packages+=(g++-aarch64-linux-gnu qemu-user libfmt-dev:arm64 libgtest-dev:arm64 libgmock-dev:arm64)
fi
# `scripts/bootstrap.sh bench` (make bench): libtorch-dev, Debian's libtorch 1.13 (163 packages with
# --no-install-recommends, about 30 s from a Debian mirror), for the bench's PyTorch rows (bench/pytorch_baseline.cpp).
if [[ ${1:-} == bench ]]; then
  debian_packages+=(libtorch-dev)
fi
# `scripts/bootstrap.sh fuzz` (make fuzz): clang with libFuzzer and its sanitizer runtimes.
if [[ ${1:-} == fuzz ]]; then
  debian_packages+=(clang libclang-rt-14-dev)
fi
# Any Python 3 with venv will do (a pyenv one included); Debian's only when there is none.
if ! { command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; }; then
  debian_packages+=(python3 python3-venv)
fi
missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    if [[ " ${missing[*]}" == *:arm64* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
      dpkg --add-architecture arm64
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages (run as root or install them): ${missing[*]}" >&2
    exit 1
  fi
fi

venv=$root/.venv
stamp=$venv/.fusednorm-requirements
python=${PYTHON:-python3}
if [[ ! -f $stamp ]] || ! cmp -s scripts/requirements.txt "$stamp"; then
  echo "bootstrap: setting up $venv (Halide, CMake, Ninja, matplotlib from PyPI)"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi

# The digits data set (examples/train_mlp and its test). Keyed on scripts/data-requirements.txt like the .venv.
digits=$venv/share/fusednorm/digits.csv
data_stamp=$venv/.fusednorm-data-requirements
if [[ ! -f $digits ]] || [[ ! -f $data_stamp ]] || ! cmp -s scripts/data-requirements.txt "$data_stamp"; then
  echo "bootstrap: extracting the digits data set from scikit-learn's wheel (PyPI) into $digits"
  "$venv/bin/python" scripts/fetch_digits.py "$digits"
  cp scripts/data-requirements.txt "$data_stamp"
fi
