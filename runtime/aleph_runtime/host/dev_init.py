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
import signal
import sys
import tempfile
from pathlib import Path

from aleph_runtime.host.supervisor import SupervisorClient

REPOSITORY = Path(__file__).resolve().parents[3]
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
