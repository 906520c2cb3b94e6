#!/bin/sh
# Stage 0 of the aleph-runtime init: /sbin/init of the runtime image, PID 1.
#
# The kernel hands over with the runtime squashfs as a read-only / and, usually, /dev
# mounted (devtmpfs). Put a tmpfs overlay over the read-only root and pivot into it, so
# programs can write anywhere and nothing persists; mount the pseudo filesystems; then
# exec init1 (Python, -OO: the image holds bytecode at that level). Nothing slow here:
# no probes, no services (init1 starts sshd when the config brings keys). Each step logs
# one line prefixed with the uptime. POSIX sh, busybox-compatible.
#
# Layout in the image: /opt/aleph/init/init1.py, /opt/aleph/runtime/aleph_runtime (the
# guest side; init1 finds it as ../runtime from its own directory, as in a checkout),
# the guest libraries in /opt/aleph/libs (PYTHONPATH, as programs expect).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
INIT1=${ALEPH_INIT1:-/opt/aleph/init/init1.py}

[ -r /proc/uptime ] || mount -t proc -o nosuid,noexec,nodev proc /proc
log() { read -r _up _ </proc/uptime; echo "$_up init0: $*"; }
log "started"

# A failure here must not leave the VM half set up with PID 1 gone (kernel panic with
# no clue): say what failed, then go on or stop loudly.
fail() { log "ERROR: $*"; }

if [ -n "${ALEPH_INIT0_ROOTED:-}" ]; then
  unset ALEPH_INIT0_ROOTED
  root_done=1
fi

dev_mounted=
while read -r _src _dir _type _rest; do
  [ "$_dir" = /dev ] && dev_mounted=1
done </proc/mounts

# tmpfs at /overlay (a directory of the image; /mnt if absent) holding the overlay's
# upper and work directories and its mount point.
ovl=/overlay
[ -d "$ovl" ] || ovl=/mnt
if [ -n "${root_done:-}" ]; then
  :
elif mount -t tmpfs -o mode=0755,noatime tmpfs "$ovl" &&
  mkdir -p "$ovl/upper" "$ovl/work" "$ovl/root" &&
  mount -t overlay -o "noatime,lowerdir=/,upperdir=$ovl/upper,workdir=$ovl/work" overlay "$ovl/root"; then
  mkdir -p "$ovl/root/rom"
  [ -n "$dev_mounted" ] || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || fail "cannot mount /dev"
  if cd "$ovl/root" && pivot_root . rom; then
    cd /
    mount --move /rom/proc /proc
    mount --move /rom/dev /dev
    log "root is a tmpfs overlay over the read-only image (image at /rom)"
  else
    # pivot_root refused (e.g. a shared root mount): chroot into the overlay instead and
    # run this script again there, past this step.
    log "pivot_root failed, chrooting into the overlay"
    mount --move /proc "$ovl/root/proc" && mount --move /dev "$ovl/root/dev" &&
      ALEPH_INIT0_ROOTED=1 exec chroot "$ovl/root" "$0" "$@"
    fail "cannot switch to the overlay: the root stays read-only"
  fi
else
  fail "no tmpfs overlay: the root stays read-only"
  [ -n "$dev_mounted" ] || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || fail "cannot mount /dev"
fi

mkdir -p /dev/pts /dev/shm
mount -t sysfs -o nosuid,noexec,nodev sysfs /sys || fail "cannot mount /sys"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || fail "cannot mount /run"
mount -t devpts -o mode=0620,gid=5,ptmxmode=0666,nosuid,noexec devpts /dev/pts || fail "cannot mount /dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || fail "cannot mount /dev/shm"
mount -t cgroup2 -o nosuid,noexec,nodev,nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
log "mounted /sys /run /dev/pts /dev/shm /sys/fs/cgroup"

export PYTHONPATH=/opt/aleph/libs
log "exec python3 -OO $INIT1"
exec /usr/bin/python3 -OO "$INIT1" "$@"
