#!/bin/sh
# Stage 0 of the aleph-runtime init: /sbin/init of the runtime image, PID 1.
#
# The kernel hands over with the runtime squashfs as a read-only / (and usually /dev, a
# devtmpfs). Put a tmpfs overlay over the read-only root and pivot into it, so programs
# can write anywhere and nothing persists; mount the pseudo filesystems (init0.fstab:
# /proc /dev /sys /run /dev/pts /dev/shm cgroup2); exec init1 under python3 -OO (the
# image holds bytecode at that level). Nothing slow here: no probes, no services (init1
# starts sshd when the config brings keys, and adds /dev/fd and /dev/std*), six execs in
# all. Each step logs one line prefixed with the uptime. POSIX sh, busybox-compatible.
#
# Layout in the image: /opt/aleph/init/{init0.sh,init0.fstab,init1.py}; the guest side of
# aleph_runtime in /opt/aleph/runtime (init1 finds it as ../runtime from its own
# directory, as in a checkout; PYTHONPATH names it too); the guest libraries in
# /opt/aleph/libs (PYTHONPATH, as programs expect); the read-only image stays at /rom.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
here=/opt/aleph/init
INIT1=${ALEPH_INIT1:-$here/init1.py}

[ -r /proc/uptime ] || mount -t proc -o nosuid,noexec,nodev proc /proc
log() { read -r _up _ </proc/uptime 2>/dev/null || _up=?; echo "$_up init0: $*"; }
# Say what failed and go on: PID 1 dying would panic the kernel with no clue.
fail() { log "ERROR: $*"; }

if [ -z "${ALEPH_INIT0_ROOTED:-}" ]; then
  log "started"
  # tmpfs holding the overlay's upper and work directories and its mount point, at
  # /overlay (a directory of the image; /mnt elsewhere). /rom exists in the image too.
  ovl=/overlay
  [ -d "$ovl" ] || ovl=/mnt
  if mount -t tmpfs -o mode=0755 tmpfs "$ovl" &&
    mkdir -p "$ovl/upper" "$ovl/work" "$ovl/root" &&
    mount -t overlay -o "lowerdir=/,upperdir=$ovl/upper,workdir=$ovl/work" overlay "$ovl/root"; then
    if cd "$ovl/root" && pivot_root . rom; then
      cd /
    else
      # pivot_root refused (e.g. a shared root mount): chroot into the overlay and run
      # this script again there, past this step.
      log "pivot_root failed, chrooting into the overlay"
      ALEPH_INIT0_ROOTED=1 exec chroot "$ovl/root" "$0" "$@"
    fi
  else
    fail "no tmpfs overlay: the root stays read-only"
  fi
fi
unset ALEPH_INIT0_ROOTED

mount -a -T "$here/init0.fstab" || fail "some of /proc /dev /sys /run /dev/pts /dev/shm cgroup2 did not mount"
log "root is a tmpfs overlay over the image (at /rom); /proc /dev /sys /run /dev/pts /dev/shm cgroup2 mounted"

# The guest libraries, as programs expect; aleph_runtime too, so init1 imports it even
# before it puts its own ../runtime on sys.path.
export PYTHONPATH=/opt/aleph/runtime:/opt/aleph/libs
log "exec python3 -OO $INIT1"
exec /usr/bin/python3 -OO "$INIT1" "$@"
