"""Run the guest init as a local process in dev transport mode, and drive it.

The same harness serves the tests, the benchmark and `aleph-runtime run --mode dev`:
it listens for the ready signal before starting the init (as the supervisor does
before booting a VM), starts `init/init1.py` with `ALEPH_VSOCK_UDS`, and stops it
with the protocol's halt, killing it only when that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aleph_runtime.host.supervisor import SupervisorClient

REPOSITORY = Path(__file__).resolve().parents[4]
INIT1 = REPOSITORY / "init" / "init1.py"


class DevInit:
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
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uds_path = self.workdir / "v.sock"
        self.root = Path(root) if root else self.workdir / "root"
        self.python = python
        self.init_path = Path(init_path)
        self.python_flags = python_flags
        self.env = env or {}
        self.stdout = stdout
        self.stderr = stderr
        # A session of its own, as a VM is: a terminal's Ctrl-C reaches only the caller,
        # which halts the init through the protocol.
        self.new_session = new_session
        self.client = SupervisorClient(self.uds_path)
        self.process: asyncio.subprocess.Process | None = None
        self.ready: dict | None = None

    async def start(self, timeout: float = 30) -> dict:
        """Start the init; return its ready signal."""
        self.root.mkdir(parents=True, exist_ok=True)
        ready = await self.client.ready_signal().start()
        env = {
            **os.environ,
            "ALEPH_VSOCK_UDS": str(self.uds_path),
            "ALEPH_INIT_ROOT": str(self.root),
            **self.env,
        }
        self.process = await asyncio.create_subprocess_exec(
            self.python, *self.python_flags, str(self.init_path),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr,
            start_new_session=self.new_session,
        )
        try:
            self.ready = await ready.wait(timeout)
        except BaseException:
            await self.kill()
            raise
        return self.ready

    async def configure(self, config: dict, timeout: float = 60) -> dict:
        return await self.client.configure(config, timeout=timeout)

    async def stop(self, timeout: float = 10) -> int | None:
        """Halt through the protocol, then wait for the process; kill it if it lingers."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            await self.client.halt()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                await self.kill()
        return self.process.returncode

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def __aenter__(self) -> DevInit:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
class DevMachine:
    """The init as a local process (`DevInit`): no VM, no system duties.

    The init's private root stands for the VM's filesystem: volumes are made visible
    at `<root>/<mount>` (symlinks to a directory, an unpacked squashfs image, or the
    persistent volume's directory in the state directory), and squashfs code is
    unpacked at `<root>/opt/code`. Programs see absolute paths of the host, so
    `--env` values naming a volume's mount point are rewritten to `<root>/<mount>`.
    """

    def __init__(self, run_dir: Path, log_path: Path):
        self.run_dir = run_dir
        self.log_path = log_path
        self.root = run_dir / "root"
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        self.init = DevInit(run_dir, root=self.root, stdout=self._log, stderr=self._log, new_session=True)
        self.uds_path = self.init.uds_path
        self.client = self.init.client

    def place(self, mount: str, target: Path) -> Path:
        """Make `target` (a directory) visible at `<root>/<mount>`."""
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

    async def start(self) -> dict:
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
