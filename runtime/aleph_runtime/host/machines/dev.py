"""The guest init as a local process in dev transport mode: a `Machine` (base.py).

The same machine serves the tests, the benchmarks and `aleph-runtime run --mode dev`:
`init/init1.py` started with `ALEPH_VSOCK_UDS` and `ALEPH_INIT_ROOT`, with the life
every machine shares (ready signal first, halt through the protocol, kill last).

Namespaced (`namespaced=True`: as root or with user namespaces), the init runs
chrooted into a private overlay of this machine's / (overlay.py), where every
`place`d directory is bind-mounted at its guest path: the program sees /opt/code,
/opt/packages, its volumes and /tmp/socat-socket where a VM has them, and its writes
outside its volumes vanish with it. Otherwise the init's private root (`root`) stands
for the VM's filesystem: a placed directory is a symlink at `<root>/<mount>`, and
`guest_path` says where the program finds a guest path. How the init is launched is
one method, `launch_command`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aleph_runtime.host.children import die_with_parent
from aleph_runtime.host.machines.base import CommandMachine
from aleph_runtime.host.machines.overlay import overlay_arguments

REPOSITORY = Path(__file__).resolve().parents[4]
INIT1 = REPOSITORY / "init" / "init1.py"


class DevMachine(CommandMachine):
    """One init process in dev mode, with its socket and private root in `workdir`.

    `log_path`: the init's output goes there (opened at each launch, closed once it
    has ended) instead of `stdout` and `stderr`.
    """

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
        *,
        log_path: str | os.PathLike | None = None,
        namespaced: bool = False,
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        uds_path = self.workdir / "v.sock"
        self.root = Path(root) if root else self.workdir / "root"
        self.init_path = Path(init_path)
        self.log_path = Path(log_path) if log_path else None
        self.namespaced = namespaced
        self.placed: list[tuple[str, Path, bool]] = []
        self._log = None
        self._renewal = {
            "python": python, "init_path": init_path, "env": env, "root": root, "python_flags": python_flags,
            "stdout": stdout, "stderr": stderr, "new_session": new_session, "log_path": log_path,
            "namespaced": namespaced, "ready_timeout": ready_timeout, "configure_timeout": configure_timeout,
        }  # fmt: skip
        super().__init__(
            [python, *python_flags, str(self.init_path)],
            uds_path,
            env={
                **os.environ,
                "ALEPH_VSOCK_UDS": str(uds_path),
                # Namespaced, the init's root is the overlay's /, where a VM has its files.
                "ALEPH_INIT_ROOT": "/" if namespaced else str(self.root),
                **(env or {}),
            },
            stdout=stdout,
            stderr=stderr,
            new_session=new_session,
            # In a session of its own, nothing else takes it down if we are killed outright.
            preexec_fn=die_with_parent() if new_session else None,
            ready_timeout=ready_timeout,
            configure_timeout=configure_timeout,
        )

    # --- the guest's paths ---

    def place(self, mount: str, target: Path, read_only: bool = False) -> Path:
        """Make `target` (a directory) visible at the guest path `mount`; where the program sees it."""
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
        return path if self.namespaced else str(self.root / path.lstrip("/"))

    def renew(self) -> DevMachine:
        """A new machine with the same layout, for a restart (this one is stopped)."""
        shutil.rmtree(self.root, ignore_errors=True)  # symlinks only: their targets stay
        machine = DevMachine(self.workdir, **self._renewal)
        for mount, target, read_only in self.placed:
            machine.place(mount, target, read_only)
        return machine

    # --- launching ---

    def launch_command(self) -> list[str]:
        """The init's command; namespaced, behind `unshare ... chroot`, which execs it in the
        VM's layout: the same process."""
        if not self.namespaced:
            return self.command
        mounts = self.workdir / "mnt"
        mounts.mkdir(exist_ok=True)
        binds = []
        # The init's own files, when a mount below / hides them from the overlay, or the
        # guest's own /tmp and /run do (a checkout cloned into /tmp, say).
        needed = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent, REPOSITORY}
        for path in sorted(needed):
            if _separate_filesystem(path) or path.parts[1:2] in (("tmp",), ("run",)):
                binds.append((path, path, True))
        # The sockets, at the same path on both sides.
        binds.append((self.workdir, self.workdir, False))
        binds += [(target, mount, read_only) for mount, target, read_only in self.placed]
        return [*_unshare_command(), *overlay_arguments(mounts, "host", "/", binds, self.command)]

    async def _launch(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - closed in kill()
            self.stdout = self.stderr = self._log
        await super()._launch()

    async def kill(self) -> None:
        try:
            await super().kill()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def _unshare_command() -> list[str]:
    command = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        # Unprivileged overlays keep their metadata in user.* xattrs (kernels >= 5.11); a
        # kernel that locks /'s submounts refuses them still, and dev mode falls back.
        command = [
            "env",
            "ALEPH_OVERLAY_OPTIONS=userxattr,",
            "unshare",
            "--user",
            "--map-root-user",
            *command[1:],
        ]
    return command


def namespaces_unavailable(scratch: Path) -> str | None:
    """Why the dev init cannot have the VM's layout here (None when it can): tried for real,
    `true` in a throwaway overlay, with its mount point under `scratch`."""
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = scratch / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([*_unshare_command(), *overlay_arguments(probe, "host", "/", (), ["true"])],
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
