#!/bin/sh
# Stage 1b of build-rootfs.sh, full profile only: on top of the base stage, the system
# setup today's image does at every boot, done once here instead (nothing at boot):
#   - iptables and ip6tables -> the legacy (x_tables) backend, as today's image selects:
#     dockerd programs its NAT and filter rules through it, and the node kernels build
#     x_tables in;
#   - the en_US.UTF-8 locale generated (today's image has it; tools that set LANG to it
#     otherwise warn on every start);
#   - an /etc/fstab naming the cgroup2 mount init0 makes: `cgroupfs-mount` (shipped, and
#     run at boot by today's image) then leaves /sys/fs/cgroup alone instead of mounting
#     cgroup v1 hierarchies inside the unified one.
# build-rootfs.sh caches the result with the base stage, keyed by this file too.
#
# Usage: stage-full.sh ROOT
set -eu
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
root=$1

step "full: iptables-legacy alternatives, en_US.UTF-8 locale, /etc/fstab"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
in_root update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
in_root update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null
printf 'en_US.UTF-8 UTF-8\n' >"$root/etc/locale.gen"
in_root locale-gen >/dev/null
printf 'LANG=en_US.UTF-8\n' >"$root/etc/default/locale"
cat >"$root/etc/fstab" <<'FSTAB'
# The runtime's init (/opt/aleph/init/init0.sh) mounts the pseudo filesystems from
# /opt/aleph/init/init0.fstab. Listed here so that cgroupfs-mount sees cgroups are
# mounted already (the unified cgroup2 hierarchy) and does nothing.
cgroup2  /sys/fs/cgroup  cgroup2  nosuid,noexec,nodev,nsdelegate  0 0
FSTAB
step "full: done"
