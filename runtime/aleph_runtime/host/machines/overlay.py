"""A private root for the init: an overlay of this machine's / whose writes land in a tmpfs.

A new mount namespace alone protects nothing (a write to /etc/resolv.conf would still
reach the machine's file); chrooted into this overlay, everything the init and the
program write (/etc/resolv.conf, /etc/hostname, /root/.ssh, /opt, /data, mount
points...) stays private and vanishes with the namespace. /tmp and /run are fresh
tmpfs. It serves the test sandbox (sandbox.py: PID and network namespaces of its own,
so a fresh /proc and /sys, and a /dev of the usual character devices plus its volumes;
`host` binds this machine's instead). Dev mode no longer uses it: its container
(host/container/) has the runtime image as its root, not this machine's /.

It runs as the wrapper in the new mount namespace, then execs the command chrooted
into the overlay. Arguments (`overlay_arguments`): the mount directory, `host` or
`fresh` (how /proc, /sys and /dev come), the working directory, then "SOURCE TARGET
rw|ro" triples (bind mounts: a directory, a file or a device), "--", the command.
Environment: ALEPH_OVERLAY_OPTIONS prefixes the overlay's options (`userxattr,` in a
user namespace); with ALEPH_OVERLAY_GATE_FD set, the script waits for a line on fd 3
before the exec (the sandbox's network is set up meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

OVERLAY_SCRIPT = r"""
set -eu
M=$1; KIND=$2; CWD=$3; shift 3
mount -t tmpfs -o mode=0755 aleph-overlay "$M"
mkdir "$M/upper" "$M/work" "$M/root"
mount -t overlay overlay -o "${ALEPH_OVERLAY_OPTIONS:-}lowerdir=/,upperdir=$M/upper,workdir=$M/work" "$M/root"
R=$M/root
if [ "$KIND" = fresh ]; then
  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  mount -t sysfs -o nosuid,nodev,noexec sysfs "$R/sys" 2>/dev/null || mount --rbind /sys "$R/sys"
  mount -t tmpfs -o mode=0755,nosuid dev "$R/dev"
  for node in null zero full random urandom tty; do
    touch "$R/dev/$node"; mount --bind "/dev/$node" "$R/dev/$node"
  done
  mkdir "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
  ln -s /proc/self/fd "$R/dev/fd"
  ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
else
  mount --rbind /proc "$R/proc"
  mount --rbind /sys "$R/sys"
  mount --rbind /dev "$R/dev"
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
while [ "$1" != "--" ]; do
  src=$1; dst=$2; mode=$3; shift 3
  if [ -d "$src" ]; then mkdir -p "$R$dst"; else mkdir -p "$R$(dirname "$dst")"; : > "$R$dst"; fi
  mount --bind "$src" "$R$dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$R$dst"; fi
done
shift
if [ -n "${ALEPH_OVERLAY_GATE_FD:-}" ]; then
  read -r _ <&3 || true
  exec 3<&-
  unset ALEPH_OVERLAY_GATE_FD
fi
exec chroot "$R" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$CWD" "$@"
"""

#: A bind mount: the source on this machine, the target inside, and whether it is read-only.
Bind = tuple[str | os.PathLike, str | os.PathLike, bool]


def overlay_arguments(
    mount_dir: str | os.PathLike, kind: str, cwd: str, binds: Iterable[Bind], command: Sequence[str]
) -> list[str]:
    """`/bin/sh -c OVERLAY_SCRIPT ...`: run `command` in `cwd` of the overlay root (see above)."""
    if kind not in ("host", "fresh"):
        raise ValueError(f"kind {kind!r}: host or fresh")
    triples = [
        item
        for source, target, read_only in binds
        for item in (os.fspath(source), os.fspath(target), "ro" if read_only else "rw")
    ]
    return [
        "/bin/sh",
        "-c",
        OVERLAY_SCRIPT,
        "aleph-overlay",
        os.fspath(mount_dir),
        kind,
        cwd,
        *triples,
        "--",
        *command,
    ]
