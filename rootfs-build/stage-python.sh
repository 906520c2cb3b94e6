#!/bin/sh
# Stage 2 of build-rootfs.sh: guest Python libraries, installed with the IMAGE's own
# pip and Python (so compiled wheels match its ABI) into ROOT/TARGET: the programs'
# (/opt/aleph/libs) and the init's own (/opt/aleph/init-libs), one run each.
# Exact pins without dependency resolution, binary wheels preferred (pure-Python sdists
# build; the lean image has no compiler), no bytecode (build-rootfs.sh compiles
# everything later, reproducibly).
# build-rootfs.sh caches the result keyed by the base stage, this file and the pins.
#
# Usage: stage-python.sh ROOT REQUIREMENTS TARGET [--resolve]
#   --resolve: REQUIREMENTS holds only top-level pins (requirements-RUNTIME.in); let pip
#              resolve their dependencies, as the official image's `pip3 install --target`
#              does (used to regenerate requirements-RUNTIME.txt).
# The build machine's pip settings that matter inside the chroot are passed on:
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, PIP_DEFAULT_TIMEOUT, and its CA
# bundle (PIP_CERT or Debian's), in case the way to PyPI needs it.
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
root=$1 reqs=$2 target=$3 resolve=${4:-}
case $target in /opt/aleph/*) ;; *) die "stage-python.sh: TARGET must be under /opt/aleph: $target" ;; esac

# Exact pins: --no-deps, and wheels where they exist. Resolving: pip's own choices, as the
# official image's plain `pip3 install --target` makes them (no --prefer-binary, which
# could pick an older release for its wheel).
deps="--no-deps --prefer-binary"
[ "$resolve" = --resolve ] && deps=
step "python: pip install into $target with the image's Python ($(chroot "$root" python3 -V 2>&1))"
rm -rf "${root:?}$target"
mkdir -p "$root$target" "$root/tmp/aleph-build"
cp "$reqs" "$root/tmp/aleph-build/requirements.txt"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/tmp/aleph-build/ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
passenv=
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
  eval "val=\${$v:-}"
  [ -z "$val" ] || passenv="$passenv $v=$val"
done
# shellcheck disable=SC2086
unshare -m sh -eu -c '
  root=$1; shift
  mount -t proc proc "$root/proc"
  exec chroot "$root" "$@"
' sh "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
  PIP_CERT=/tmp/aleph-build/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
  PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1 $passenv \
  python3 -m pip install -q --no-compile $deps --break-system-packages \
  --target "$target" -r /tmp/aleph-build/requirements.txt
rm -rf "$root/tmp/aleph-build" "$root/etc/resolv.conf" "$root/root/.cache"
find "$root$target" -name __pycache__ -prune -exec rm -rf {} +
# Wheels ship their extension modules with debug sections (uvloop: 13.6 MB, 1.6 MB
# stripped; 75 MB in all). Strip the extension modules only: the vendored libraries in
# *.libs/ were rewritten by auditwheel's patchelf, which strip can corrupt.
if command -v strip >/dev/null; then
  find "$root$target" -path '*.libs' -prune -o -type f \( -name '*.cpython-*.so' -o -name '*.abi3.so' \) \
    -exec strip --strip-unneeded {} +
else
  step "python: no strip (binutils): extension modules keep their debug sections"
fi
step "python: done ($(du -sh "$root$target" | cut -f1), $(ls -d "$root$target"/*.dist-info | wc -l) distributions)"
