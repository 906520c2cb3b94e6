#!/bin/sh
# Install what a fresh Debian 12 machine (as root) needs to run and test aleph-runtime:
# Debian packages, then a virtualenv on Debian's own Python 3.11 (the guest's Python).
# The node-like kernel (rootfs-build/build-node-kernel.sh) is compiled here from
# linux-source-6.1, hence a compiler's tool chain among the packages.
# Idempotent and quick when nothing changed: each stage is skipped when its stamp matches.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh

# podman and runc: tests/image/test_container_build.py runs Dockerfile.build (runc, not crun: see
# rootfs-build/containers.conf).
packages="python3 python3-venv python3-dev gcc qemu-system-x86 qemu-utils debootstrap squashfs-tools \
  e2fsprogs busybox-static cpio zstd redis-server iproute2 util-linux socat openssh-server openssh-client \
  curl ca-certificates git podman runc passt \
  linux-source-6.1 make flex bison bc libelf-dev libssl-dev xz-utils"
if ! stamp_ok apt "$packages"; then
  step "apt: installing Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
  # The packaged Redis and SSH servers are not ours to run: tests start their own.
  systemctl disable --now redis-server ssh >/dev/null 2>&1 || true
  stamp_set apt "$packages"
fi

# Keyed by the venv's path too: checkouts side by side (worktrees) keep one venv each
# (ALEPH_RUNTIME_VENV), and one's stamp must not vouch for another's packages.
venv_inputs="$VENV $(cat requirements-dev.txt pyproject.toml scripts/setup.sh)"
venv_stamp="venv.$(printf '%s' "$VENV" | sha256sum | cut -c1-8)"
if ! stamp_ok "$venv_stamp" "$venv_inputs" || [ ! -x "$VENV/bin/python" ]; then
  step "venv: installing Python packages into $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q -r requirements-dev.txt
  stamp_set "$venv_stamp" "$venv_inputs"
fi
# Editable, so the console script follows this checkout wherever it is cloned.
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . >/dev/null
step "setup done"
