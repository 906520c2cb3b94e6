#!/bin/sh
# Run the guest's tests under a runtime image's own interpreter: the unit tests of the
# guest side and the integration tests (the init as PID 1 of namespaces) with the Python
# of `--runtime debian-13` (3.13, Debian 13's) or debian-12 (3.11, and the network's
# library pins), in the image itself: no interpreter download.
#
# Usage: scripts/test-guest.sh [--runtime debian-12|debian-13] [PYTEST ARGS...]
#        scripts/test-guest.sh [--runtime ...] --run SCRIPT [ARGS...]
#   --run: `python3 SCRIPT ARGS` there instead of pytest (e.g. scripts/bench_dev.py: the
#          init's process-mode CPU and memory on that Python)
#   default runtime debian-13; when the arguments name no test file, every file of
#   tests/unit and tests/integration that needs nothing host-only: see guest_test_files.
#
# How: the image is built through its cache (rootfs-build/build-rootfs.sh); pytest and
# pytest-asyncio, at requirements-dev.txt's pins, are installed once with the image's
# own pip into $ALEPH_RUNTIME_CACHE/guest-test-libs/ (keyed by runtime, Python version
# and pins), with mkfs.ext4 and mksquashfs (which the tests make volumes with) from the
# image's apt as a layer of files. Then, in a private mount namespace: the squashfs
# mounted read-only, that layer over it and a tmpfs overlay on top (writes vanish),
# /proc, /sys, /dev and the checkout (at its own path) bound in, the test libraries at
# /opt/test-libs, and pytest run in a chroot with
# PYTHONPATH=<checkout>/runtime:/opt/aleph/libs:/opt/test-libs (the init's own libraries
# come from the image's .pth, as at boot). Needs root.
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)
. rootfs-build/common.sh
runtime=debian-13 run=
if [ "${1:-}" = --runtime ]; then runtime=$2; shift 2; fi
if [ "${1:-}" = --run ]; then run=1; shift; fi
runtime_suite "$runtime" >/dev/null
[ "$(id -u)" = 0 ] || die "scripts/test-guest.sh needs root (mounts, chroot)"

# The test files that run on the guest side alone: not those importing the host's node,
# VMM or guest API, nor redis (the image has no redis-server).
guest_test_files() {
  for f in tests/unit/test_*.py tests/integration/test_*.py; do
    grep -qE '^\s*(from|import) (aleph_runtime\.host\.(vmm|node|guest_api|errors)|tests\.host|redis)' "$f" || echo "$f"
  done
}

image_dir=$(rootfs-build/build-rootfs.sh --runtime "$runtime")
squashfs=$image_dir/rootfs.squashfs
python_version=$(sed -n 's/^  "python": "\(.*\)",$/\1/p' "$image_dir/manifest.json")
pins=$(grep -iE '^(pytest|pytest-asyncio)==' requirements-dev.txt | LC_ALL=C sort)
tools="e2fsprogs squashfs-tools"
# Keyed by what they depend on: the image's Debian packages (the tools' layer holds a
# dpkg database on top of the image's), its Python, the pins and the tools.
key=$( { echo "$runtime $python_version $pins $tools"
         sed -n '/"debian_packages"/,/}/p' "$image_dir/manifest.json"; } | short_hash)
libs=$CACHE_DIR/guest-test-libs/$runtime-$key
mkdir -p "$CACHE_DIR/tmp" "$CACHE_DIR/guest-test-libs"
work=$(mktemp -d "$CACHE_DIR/tmp/test-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/mnt"

# Mounts the image as a writable root at $R=$work/mnt/root in the current (private)
# mount namespace, with the layer directory $3 (if any) over it; run through
# `unshare -m sh -c`.
# shellcheck disable=SC2016
ROOT_SETUP='
M=$1/mnt
mount -t tmpfs -o mode=0755 test-guest "$M"
mkdir "$M/rom" "$M/upper" "$M/work" "$M/root"
mount -t squashfs -o loop,ro "$2" "$M/rom"
lower=$M/rom
[ -z "$3" ] || lower=$3:$M/rom
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$M/upper,workdir=$M/work" "$M/root"
R=$M/root
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=0755 run "$R/run"
'

if [ ! -f "$libs/.complete" ]; then
  step "test-guest: installing $(echo $pins) with the $runtime image's pip (Python $python_version), and $tools"
  rm -rf "$libs" "$libs.new"
  mkdir -p "$libs.new/python"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$work/ca.crt"
  passenv=
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
    eval "val=\${$v:-}"
    [ -z "$val" ] || passenv="$passenv $v=$val"
  done
  # pytest into the bound directory; the volume tools with apt into the overlay, whose
  # upper directory (every file apt wrote, its lists and caches removed) becomes the
  # layer mounted over the image at test time.
  # shellcheck disable=SC2086
  unshare -m --propagation private sh -euc "$ROOT_SETUP"'
    mkdir -p "$R/opt/test-libs"; mount --bind "$4/python" "$R/opt/test-libs"
    cp /etc/resolv.conf "$R/etc/resolv.conf"; cp "$1/ca.crt" "$R/tmp/ca.crt"
    out=$4 tools=$5; shift 5
    in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive PIP_CERT=/tmp/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
      PIP_ROOT_USER_ACTION=ignore "$@"; }
    in_root "$@"
    in_root apt-get -q update >/dev/null
    in_root apt-get -q -y -o APT::Sandbox::User=root install $tools >/dev/null
    in_root apt-get clean
    rm -rf "$R/var/lib/apt/lists"/* "$R/var/cache/apt"/*.bin "$R/etc/resolv.conf" "$R/var/log"/*
    umount "$R/opt/test-libs"
    (cd "$M/upper" && tar -cf - .) | (mkdir "$out/layer" && cd "$out/layer" && tar -xpf -)
  ' sh "$work" "$squashfs" "" "$libs.new" "$tools" $passenv python3 -m pip install -q --break-system-packages \
    --target /opt/test-libs $pins >&2
  mv "$libs.new" "$libs"
  touch "$libs/.complete"
fi

# No test named among the arguments (only options): the guest's tests.
named=$run
for arg in "$@"; do
  case $arg in -*) ;; *) [ ! -e "${arg%%::*}" ] || named=1 ;; esac
done
[ -n "$named" ] || set -- "$@" $(guest_test_files)
command="python3 -m pytest -p no:cacheprovider"
[ -z "$run" ] || command=python3
step "test-guest: $command under the $runtime image's Python $python_version: $*"
# shellcheck disable=SC2016
rc=0
unshare -m --propagation private sh -euc "$ROOT_SETUP"'
  mkdir -p "$R/opt/test-libs" "$R$4"
  mount --bind "$5/python" "$R/opt/test-libs"
  mount --bind "$4" "$R$4"
  # Interpreters the tests start with an environment of their own (the init in a
  # sandbox) find /opt/aleph/libs where init0 puts it: right after PYTHONPATH.
  printf "%s\n" "import sys; \"/opt/aleph/libs\" in sys.path or sys.path.insert(next(i for i, p in enumerate(sys.path) if p.endswith(\".zip\")), \"/opt/aleph/libs\")" \
    >"$R/usr/lib/python3/dist-packages/aleph-test-libs.pth"
  repo=$4 command=$6
  shift 6
  exec chroot "$R" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$repo/runtime:/opt/aleph/libs:/opt/test-libs" \
    sh -c "cd \"$repo\" && exec $command \"\$@\"" python3 "$@"
' sh "$work" "$squashfs" "$libs/layer" "$REPO" "$libs" "$command" "$@" || rc=$?
exit $rc
