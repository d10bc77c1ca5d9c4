#!/usr/bin/env bash
# Installs what the build needs, and nothing when it is already there:
#   - Debian packages (only when running as root and a package is missing);
#   - a project-local virtual environment (.venv) with the pinned Halide wheel, CMake and Ninja.
# Idempotent: a stamp keyed on scripts/requirements.txt makes a second run take well under a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

debian_packages=(g++ make libfmt-dev libgtest-dev libgmock-dev)
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
  echo "bootstrap: setting up $venv (Halide, CMake, Ninja from PyPI)"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
