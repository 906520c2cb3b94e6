"""The guest init on this machine, without a VM: two `Machine`s (base.py).

- `ContainerMachine`: `aleph-runtime run --mode dev`. The runtime image's init as PID 1
  of a container of that image (host/container/): the image's Python and libraries at
  the VM's paths, the program's code and volumes bound at their guest paths, the VM's
  address, hostname and limits, and nothing of this machine but those and its sockets.
- `DevMachine`: `init/init1.py` as a local process on this Python, in dev transport mode
  (`ALEPH_VSOCK_UDS`), its files under a private root directory (`ALEPH_INIT_ROOT`): what
  the tests and the benchmarks drive, with the life every machine shares (ready signal
  first, halt through the protocol, kill last). A `place`d directory is a symlink at
  `<root>/<mount>`, and `guest_path` says where the program finds a guest path.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from aleph_runtime.host.children import die_with_parent
from aleph_runtime.host.container.network import NetworkSpec
from aleph_runtime.host.container.rootfs import IdMap
from aleph_runtime.host.container.spawn import Bind, Container, ContainerSpec
from aleph_runtime.host.machines.base import CommandMachine, Machine

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
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        uds_path = self.workdir / "v.sock"
        self.root = Path(root) if root else self.workdir / "root"
        self.init_path = Path(init_path)
        self.log_path = Path(log_path) if log_path else None
        self.placed: list[tuple[str, Path, bool]] = []
        self._log = None
        self._renewal = {
            "python": python, "init_path": init_path, "env": env, "root": root, "python_flags": python_flags,
            "stdout": stdout, "stderr": stderr, "new_session": new_session, "log_path": log_path,
            "ready_timeout": ready_timeout, "configure_timeout": configure_timeout,
        }  # fmt: skip
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
            ready_timeout=ready_timeout,
            configure_timeout=configure_timeout,
        )

    # --- the guest's paths ---

    def place(self, mount: str, target: Path, read_only: bool = False) -> Path:
        """Make `target` (a directory) visible at the guest path `mount`; where the program sees it."""
        self.placed.append((mount, Path(target), read_only))
        link = self.root / mount.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
        return link

    def guest_path(self, path: str) -> str:
        return str(self.root / path.lstrip("/"))

    def renew(self) -> DevMachine:
        """A new machine with the same layout, for a restart (this one is stopped)."""
        shutil.rmtree(self.root, ignore_errors=True)  # symlinks only: their targets stay
        machine = DevMachine(self.workdir, **self._renewal)
        for mount, target, read_only in self.placed:
            machine.place(mount, target, read_only)
        return machine

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

    def failure_detail(self) -> str:
        """The end of the init's log, when it goes to `log_path`."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - FAILURE_DETAIL_BYTES))
                return log.read().decode(errors="replace").strip()
        except OSError:
            return ""


#: How much of the end of a dev init's log an error message quotes.
FAILURE_DETAIL_BYTES = 4096


#: The init's knobs (guest/settings.py) a container takes from the host's environment.
INIT_SETTINGS = (
    "ALEPH_LOG_LEVEL", "ALEPH_EVENT_LOOP", "ALEPH_MAX_REQUEST_BYTES", "ALEPH_MAX_RESPONSE_BYTES",
    "ALEPH_LIFESPAN_STARTUP_TIMEOUT", "ALEPH_MAX_UNPACKED_BYTES",
)  # fmt: skip
#: Where the image keeps the init and the guest side of aleph_runtime (rootfs-build/build-rootfs.sh).
IMAGE_INIT = "/opt/aleph/init"
IMAGE_RUNTIME = "/opt/aleph/runtime"


#: What util-linux's unshare prints (then exits 1) when the namespace's PID 1 was SIGKILLed:
#: it cannot re-raise that signal on itself.
UNSHARE_SIGKILLED = b"unshare: sigprocmask unblock failed: Invalid argument"


def _log_ends_with(path: Path, line: bytes) -> bool:
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            return log.read().rstrip().endswith(line)
    except OSError:
        return False


class ContainerMachine(Machine):
    """The runtime image's init as PID 1 of a container (host/container/): `--mode dev`.

    The root is the image `--mode vm` boots (`tree`, rootfs.image_tree), the init runs on
    the image's Python at the VM's paths, and a `place`d directory is bound at its guest
    path; the init is PID 1, so it configures the hostname and eth0 from the config as in
    a VM (the host binds the volumes: the config names none). With `checkout`, the
    checkout's init/ and runtime/ are bound over the image's copies (read-only), so an
    edit of the init is live at the next start without rebuilding the image.
    `warnings` says, once started, which guarantee the container lacks.
    """

    def __init__(
        self,
        workdir: Path,
        tree: Path,
        *,
        ids: IdMap,
        user_namespace: bool,
        log_path: Path,
        memory_mb: int | None = None,
        vcpus: int | None = None,
        network: NetworkSpec | None = None,
        checkout: bool = True,
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        self.workdir = Path(workdir)
        # The sockets, in a directory of their own that the container's root owns (made
        # now: the host's ends listen there before the container starts).
        self.socket_dir = self.workdir / "box"
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.socket_dir, ids.uid, ids.gid)
        self.socket_dir.chmod(0o700)
        super().__init__(
            self.socket_dir / "v.sock", ready_timeout=ready_timeout, configure_timeout=configure_timeout
        )
        self.tree = tree
        self.ids = ids
        self.user_namespace = user_namespace
        self.log_path = log_path
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.network = network
        self.checkout = checkout
        self.placed: list[tuple[str, Path, bool]] = []
        self.container: Container | None = None
        self.warnings: list[str] = []
        self._log = None
        self._setup_seconds = 0.0
        self._oom_kills = 0

    def place(self, mount: str, target: Path, read_only: bool = False) -> Path:
        """Bind `target` (a directory) at the guest path `mount`; where the program sees it."""
        self.placed.append((mount, Path(target), read_only))
        return Path(mount)

    def renew(self) -> ContainerMachine:
        machine = ContainerMachine(
            self.workdir, self.tree, ids=self.ids, user_namespace=self.user_namespace, log_path=self.log_path,
            memory_mb=self.memory_mb, vcpus=self.vcpus, network=self.network, checkout=self.checkout,
            ready_timeout=self.ready_timeout, configure_timeout=self.configure_timeout,
        )  # fmt: skip
        machine.placed = list(self.placed)
        return machine

    def binds(self) -> list[Bind]:
        binds = [Bind(self.socket_dir, str(self.socket_dir), "rw")]
        if self.checkout:
            runtime = REPOSITORY / "runtime"
            binds += [
                Bind(REPOSITORY / "init", IMAGE_INIT, "ro"),
                Bind(runtime / "aleph_runtime", f"{IMAGE_RUNTIME}/aleph_runtime", "ro"),
                # The image holds the guest side only.
                Bind(None, f"{IMAGE_RUNTIME}/aleph_runtime/host", "mask"),
                Bind(runtime / "compat", f"{IMAGE_RUNTIME}/compat", "ro"),
            ]
        binds += [
            Bind(target, mount, "ro" if read_only else "rw") for mount, target, read_only in self.placed
        ]
        return binds

    def spec(self) -> ContainerSpec:
        env = {
            # What init0.sh gives init1 in a VM, and the kernel's HOME and TERM.
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": f"{IMAGE_RUNTIME}:/opt/aleph/libs",
            "HOME": "/",
            "TERM": "linux",
            "ALEPH_VSOCK_UDS": str(self.uds_path),
            **{name: os.environ[name] for name in INIT_SETTINGS if name in os.environ},
        }
        return ContainerSpec(
            self.tree, ["/usr/bin/python3", "-OO", f"{IMAGE_INIT}/init1.py"], ids=self.ids, env=env,
            binds=self.binds(), network=self.network, memory_mb=self.memory_mb, vcpus=self.vcpus,
            user_namespace=self.user_namespace,
        )  # fmt: skip

    async def _launch(self) -> None:
        # The host's ends (the ready signal's, the host services'), for the container's root to connect.
        for socket_path in self.socket_dir.glob(f"{self.uds_path.name}_*"):
            socket_path.chmod(0o666)
        self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - closed in kill()
        self.container = Container(self.spec(), self.workdir, stdout=self._log, stderr=self._log)
        began = time.monotonic()
        await self.container.start()
        self._setup_seconds = time.monotonic() - began
        self.process = self.container.process
        self.warnings = list(self.container.warnings)

    async def wait(self) -> int | None:
        if self.container is None:
            return None
        status = await self.container.wait()
        # Read before kill() removes the cgroup.
        self._oom_kills = max(self._oom_kills, self.container.oom_kills())
        if status == 1 and _log_ends_with(self.log_path, UNSHARE_SIGKILLED):
            status = -signal.SIGKILL  # what unshare would have said, had it been able to
        return status

    def describe_exit(self, status: int | None) -> str:
        if self._oom_kills or (self.container is not None and self.container.oom_kills()):
            return (f"out of memory: the kernel's OOM killer ended it at its {self.memory_mb} MiB limit "
                    "(--memory), as in a VM")  # fmt: skip
        if status is not None and status == -signal.SIGINT:
            return "the init powered off"
        return f"the init exited (status {status})"

    def boot_phases(self, ready: float) -> dict[str, float]:
        return {"container": self._setup_seconds, "init ready": max(0.0, ready - self._setup_seconds)}

    async def kill(self) -> None:
        try:
            if self.container is not None:
                self._oom_kills = max(self._oom_kills, self.container.oom_kills())
                await self.container.kill()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
