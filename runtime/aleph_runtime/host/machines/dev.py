"""The guest init as a local process in dev transport mode: a `Machine` (base.py).

The same harness serves the tests, the benchmark and `aleph-runtime run --mode dev`:
`init/init1.py` started with `ALEPH_VSOCK_UDS` and `ALEPH_INIT_ROOT`, with the life
every machine shares (ready signal first, halt through the protocol, kill last).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aleph_runtime.host.children import die_with_parent
from aleph_runtime.host.machines.base import CommandMachine

REPOSITORY = Path(__file__).resolve().parents[4]
INIT1 = REPOSITORY / "init" / "init1.py"


class DevInit(CommandMachine):
    """One init process in dev mode, with its socket and private root in `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        python: str = sys.executable,
        init_path: str | os.PathLike = INIT1,
        env: dict[str, str] | None = None,
        root: str | os.PathLike | None = None,
        python_flags: tuple[str, ...] = ("-OO",),
        stdout=None,
        stderr=None,
        new_session: bool = False,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        uds_path = self.workdir / "v.sock"
        self.root = Path(root) if root else self.workdir / "root"
        self.init_path = Path(init_path)
        super().__init__(
            [python, *python_flags, str(self.init_path)],
            uds_path,
            env={
                **os.environ,
                "ALEPH_VSOCK_UDS": str(uds_path),
                "ALEPH_INIT_ROOT": str(self.root),
                **(env or {}),
            },
            stdout=stdout,
            stderr=stderr,
            new_session=new_session,
            # In a session of its own, nothing else takes it down if we are killed outright.
            preexec_fn=die_with_parent() if new_session else None,
        )

    async def _launch(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await super()._launch()


# Runs as the init's wrapper in a new mount namespace (and user namespace when not
# root), then execs the init chrooted into an overlay of the machine's / whose writes
# land in a tmpfs: the program's /opt, /data, /tmp (with /tmp/socat-socket) and the
# volumes' mount points are where a VM has them, and no file of the machine changes.
# Arguments: the mount directory, then "SOURCE TARGET rw|ro" triples, "--", the command.
_NAMESPACE_SCRIPT = r"""
set -eu
M=$1; shift
mount -t tmpfs -o mode=0755 aleph-dev "$M"
mkdir "$M/upper" "$M/work" "$M/root"
mount -t overlay overlay -o "${ALEPH_DEV_OVERLAY_OPTIONS:-}lowerdir=/,upperdir=$M/upper,workdir=$M/work" "$M/root"
R=$M/root
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
while [ "$1" != "--" ]; do
  src=$1; dst=$2; mode=$3; shift 3
  if [ -d "$src" ]; then mkdir -p "$R$dst"; else mkdir -p "$R$(dirname "$dst")"; : > "$R$dst"; fi
  mount --bind "$src" "$R$dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$R$dst"; fi
done
shift
exec chroot "$R" /bin/sh -c 'cd / && exec "$@"' sh "$@"
"""

_PROBE_SCRIPT = r"""
set -eu
mount -t tmpfs probe "$1"
mkdir "$1/u" "$1/w" "$1/r"
mount -t overlay overlay -o "${ALEPH_DEV_OVERLAY_OPTIONS:-}lowerdir=/,upperdir=$1/u,workdir=$1/w" "$1/r"
"""


def _unshare_command() -> list[str]:
    command = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        # Unprivileged overlays keep their metadata in user.* xattrs (kernels >= 5.11); a
        # kernel that locks /'s submounts refuses them still, and dev mode falls back.
        command = [
            "env",
            "ALEPH_DEV_OVERLAY_OPTIONS=userxattr,",
            "unshare",
            "--user",
            "--map-root-user",
            *command[1:],
        ]
    return command


def namespaces_unavailable(scratch: Path) -> str | None:
    """Why the dev init cannot have the VM's layout here (None when it can): tried for real,
    in a throwaway namespace, with a mount point under `scratch`."""
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = scratch / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([*_unshare_command(), "/bin/sh", "-c", _PROBE_SCRIPT, "sh", str(probe)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return lines[0] if lines else f"unshare exited with status {result.returncode}"
    return None


def _separate_filesystem(path: Path) -> bool:
    """Not on the root filesystem: an overlay of / would not show it (a mount below /)."""
    try:
        return os.stat(path).st_dev != os.stat("/").st_dev
    except OSError:
        return False


class DevMachine:
    """The init as a local process (`DevInit`): no VM, no system duties.

    With namespaces (`namespaced`, as root or with user namespaces), the init runs
    chrooted into a private overlay of the machine's /, where every `place`d directory
    is bind-mounted at its guest path: the program sees /opt/code, /opt/packages, its
    volumes and /tmp/socat-socket where a VM has them, and its writes outside its
    volumes vanish with it. Without them, the init's private root `<run>/root` stands
    for the VM's filesystem: volumes are symlinks at `<root>/<mount>`, and `--env`
    values naming a mount point are rewritten there (`guest_path`).
    """

    def __init__(self, run_dir: Path, log_path: Path, namespaced: bool = False):
        self.run_dir = run_dir
        self.log_path = log_path
        self.namespaced = namespaced
        self.root = run_dir / "root"
        self.placed: list[tuple[str, Path, bool]] = []
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        self.init = DevInit(run_dir, root=self.root, stdout=self._log, stderr=self._log, new_session=True)
        self.uds_path = self.init.uds_path
        self.client = self.init.client

    def place(self, mount: str, target: Path, read_only: bool = False) -> Path:
        """Make `target` (a directory) visible at the guest path `mount`."""
        self.placed.append((mount, Path(target), read_only))
        if self.namespaced:
            return Path(mount)
        link = self.root / mount.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
        return link

    def guest_path(self, path: str) -> str:
        """Where the program finds the guest path `path`."""
        return path if self.namespaced else str(self.root / path.lstrip("/"))

    def renew(self) -> DevMachine:
        """A new machine with the same layout, for a restart (this one is stopped)."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)  # symlinks only: their targets stay
        machine = DevMachine(self.run_dir, self.log_path, self.namespaced)
        for mount, target, read_only in self.placed:
            machine.place(mount, target, read_only)
        return machine

    def _wrapper(self) -> tuple[str, ...]:
        mounts = self.run_dir / "mnt"
        mounts.mkdir(exist_ok=True)
        binds: list[str] = []
        # The init's own files, when a mount below / hides them from the overlay, or the
        # guest's own /tmp and /run do (a checkout cloned into /tmp, say).
        needed = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent, REPOSITORY}
        for path in sorted(needed):
            if _separate_filesystem(path) or path.parts[1:2] in (("tmp",), ("run",)):
                binds += [str(path), str(path), "ro"]
        # The sockets, at the same path on both sides.
        binds += [str(self.run_dir), str(self.run_dir), "rw"]
        for mount, target, read_only in self.placed:
            binds += [str(target), mount, "ro" if read_only else "rw"]
        return (
            *_unshare_command(),
            "/bin/sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "aleph-dev",
            str(mounts),
            *binds,
            "--",
        )

    async def start(self) -> dict:
        if self.namespaced:
            # `unshare ... chroot` execs the init: the same process, in the VM's layout.
            self.init.command = [*self._wrapper(), *self.init.command]
            self.init.env["ALEPH_INIT_ROOT"] = "/"
        return await self.init.start(timeout=60)

    async def configure(self, config: dict) -> dict:
        return await self.init.configure(config)

    async def wait(self) -> int | None:
        while self.init.process is None:
            await asyncio.sleep(0.1)
        return await self.init.process.wait()

    async def kill(self) -> None:
        await self.init.kill()

    async def stop(self) -> None:
        try:
            await self.init.stop()
        finally:
            self.close()

    def close(self) -> None:
        self._log.close()
