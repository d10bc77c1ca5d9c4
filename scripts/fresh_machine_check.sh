#!/usr/bin/env bash
# Runs the README's `make test` as a new user would, on a bare Debian 12: makes a minimal root with
# `debootstrap --variant=minbase bookworm`, puts `git archive` of a commit in it (HEAD unless REV is given), and
# inside it, as root and with nothing installed but `make` (the one thing the README's command needs before it
# can install the rest), runs `make test`. Prints the last lines of the log and the time each step took.
#
#   sudo scripts/fresh_machine_check.sh [REV]
#   sudo FRESH_BENCH=1 scripts/fresh_machine_check.sh [REV]   # then also `make bench BENCH_ARGS=--quick`
#
# FRESH_BENCH=1 checks the bench's own bootstrap too (`scripts/bootstrap.sh bench`: libtorch-dev and its CMake
# package, which `make test` does not install), with the short timing of --quick.
#
# Needs root (debootstrap, chroot, mounts) and Debian's archive and PyPI. Not part of CI: it takes about as long as
# a fresh clone's `make test` plus a few minutes. Run it whenever scripts/bootstrap.sh or a dependency changes.
# The root is FRESH_ROOT (default /var/tmp/fusednorm-fresh), made anew each run and kept afterwards for a look
# (`KEEP_ROOT=0` removes it). What this machine passes in is its network setup only: the resolver, the CA bundle
# (a proxy may sign the archive's and PyPI's certificates), its apt sources and pip settings.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
root_dir=${FRESH_ROOT:-/var/tmp/fusednorm-fresh}
log=${FRESH_LOG:-$root_dir.log}

if [[ $(id -u) -ne 0 ]]; then
  echo "fresh_machine_check: needs root (debootstrap, chroot and mounts)" >&2
  exit 77
fi
commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}")
step_start=$SECONDS
step() {
  echo "fresh_machine_check: [$((SECONDS - step_start)) s] $*"
}

if ! command -v debootstrap >/dev/null; then
  step "installing debootstrap on this machine"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

if [[ -e $root_dir ]]; then
  # A root left by an earlier run; refuse to delete anything that is still mounted in it.
  if grep -q " $root_dir/" /proc/mounts; then
    echo "fresh_machine_check: $root_dir has mounts (an earlier run still going?)" >&2
    exit 1
  fi
  rm -rf "$root_dir"
fi
step "debootstrap --variant=minbase bookworm $root_dir"
debootstrap --variant=minbase bookworm "$root_dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$log" 2>&1 || {
  tail -20 "$log"
  exit 1
}

# The network setup of this machine, nothing else. The CA bundle goes beside the root's own, which Debian's
# ca-certificates rewrites when the bootstrap installs it.
cp -L /etc/resolv.conf "$root_dir/etc/resolv.conf"
ca_bundle=/etc/fresh-machine-check/ca-bundle.crt
mkdir -p "$root_dir${ca_bundle%/*}"
cp -L /etc/ssl/certs/ca-certificates.crt "$root_dir$ca_bundle"
printf '[global]\ncert = %s\n' "$ca_bundle" >"$root_dir/etc/pip.conf"
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  cp /etc/apt/sources.list.d/debian.sources "$root_dir/etc/apt/sources.list.d/"
  : >"$root_dir/etc/apt/sources.list"
fi
for conf in /etc/apt/apt.conf.d/*; do
  # Settings for reaching the archive (a proxy, snapshot dates); not the host's package choices.
  if grep -q 'Acquire::' "$conf"; then cp "$conf" "$root_dir/etc/apt/apt.conf.d/"; fi
done

mkdir -p "$root_dir/root/fusednorm"
git -C "$repo" archive --format=tar "$commit" | tar -x -C "$root_dir/root/fusednorm"
step "source: git archive of $commit in /root/fusednorm"

inner='set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends make >/dev/null
cd /root/fusednorm
start=$SECONDS
make test
echo "fresh_machine_check: make test passed in $((SECONDS - start)) s"'
what="make test"
if [[ ${FRESH_BENCH:-0} == 1 ]]; then
  what+=" and make bench"
  inner+='
start=$SECONDS
make bench BENCH_ARGS=--quick
echo "fresh_machine_check: make bench BENCH_ARGS=--quick passed in $((SECONDS - start)) s"'
fi
step "$what inside the root (log: $log)"
set +e
# A private mount namespace: /proc, /sys, /dev and /tmp of the root go away with it, whatever happens.
unshare --mount --pid --fork --propagation private bash -c '
  set -e
  r=$1
  mount -t proc proc "$r/proc"
  mount -t sysfs sys "$r/sys"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs tmpfs "$r/tmp"
  exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT="$3" SSL_CERT_FILE="$3" PIP_DEFAULT_TIMEOUT=180 /bin/bash -c "$2"' \
  fresh "$root_dir" "$inner" "$ca_bundle" >>"$log" 2>&1
status=$?
set -e
tail -25 "$log"
step "the root's commands exited with $status"
if [[ ${KEEP_ROOT:-1} == 0 ]]; then
  rm -rf "$root_dir"
fi
exit "$status"
