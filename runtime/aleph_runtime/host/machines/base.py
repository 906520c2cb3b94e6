"""What runs the init, as the tests, the benchmarks and the local node drive it.

One life for every machine, written once here (as Firecracker's tests/framework has
one `Microvm`): listen for the ready signal on `<uds>_52`, as the supervisor does
before it boots a VM; launch; wait for the signal or the machine's death, whichever
comes first; configure; halt through the protocol, then make sure nothing is left.
What differs is only how a machine is launched, waited for and killed, and what the
local node asks of it (`renew`, `guest_path`, `exit_grace`, `describe_exit`,
`boot_phases`). The machines:

- `CommandMachine` (here): any command that ends up running the init with the `<uds>`
  layout (the image's Python in namespaces, say);
- `ContainerMachine` (dev.py): the runtime image's init as PID 1 of a container of that
  image (host/container/): `--mode dev`;
- `DevMachine` (dev.py): `init/init1.py` as a local process in dev mode (tests, benchmarks);
- `QemuMachine` (qemu.py): the runtime image in QEMU with our vsock backend;
- `SandboxMachine` (sandbox.py): the init as PID 1 of private namespaces (tests, benchmarks).

    async with DevMachine(workdir) as machine:     # listens, launches, waits for ready
        await machine.configure(config)
        await machine.client.http("GET", "/")
    # halted, and gone
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from aleph_runtime.host.children import OwnsProcess
from aleph_runtime.host.supervisor import (
    ConfigurationRejected,
    HaltResult,
    InitError,
    ReadySignal,
    SupervisorClient,
)

log = logging.getLogger(__name__)


class MachineExited(RuntimeError):
    """The machine ended before its ready signal or its configuration's answer; the
    message carries its exit and what it said."""


class Machine(OwnsProcess, abc.ABC):
    """One init behind Firecracker's hybrid-vsock layout on `uds_path`."""

    #: How long `start` waits for the ready signal, and `configure` for the program to start.
    ready_timeout: float = 30
    configure_timeout: float = 60
    #: How long a machine that stopped answering may take to end, for its exit status.
    exit_grace: float = 2

    def __init__(
        self,
        uds_path: str | os.PathLike,
        *,
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        if ready_timeout is not None:
            self.ready_timeout = ready_timeout
        if configure_timeout is not None:
            self.configure_timeout = configure_timeout
        self.uds_path = Path(uds_path)
        self.client = SupervisorClient(self.uds_path)
        self.ready: dict | None = None
        """The ready signal, once received."""
        self.process: asyncio.subprocess.Process | None = None
        """The machine's process, for the machines that are one (all but the sandbox's)."""

    # --- what a kind of machine provides ---

    @abc.abstractmethod
    async def _launch(self) -> None:
        """Start the machine; it must send its ready signal to `<uds>_52`."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """End it now, without the protocol, and release what it held."""

    def failure_detail(self) -> str:
        """What the machine said, for an error message (its console's last lines, say)."""
        return ""

    # --- what the local node asks of any machine ---

    def renew(self) -> Machine:
        """A new machine like this one (same drives or places), for a restart; this one is stopped."""
        raise NotImplementedError(f"{type(self).__name__} cannot be renewed")

    def guest_path(self, path: str) -> str:
        """Where the program finds the guest path `path` (the same path, in a VM)."""
        return path

    def describe_exit(self, status: int | None) -> str:
        """The machine's end, for a crash report."""
        return f"the init exited (status {status})"

    def boot_phases(self, ready: float) -> dict[str, float]:
        """How the `ready` seconds until the ready signal were spent, phase by phase."""
        return {"init ready": ready}

    # --- the one life every machine shares ---

    async def start(self, timeout: float | None = None) -> dict:
        """Listen for the ready signal, launch, and return the signal; kill on any failure."""
        timeout = self.ready_timeout if timeout is None else timeout
        ready = await self.client.ready_signal().start()
        try:
            await self._launch()
            self.ready = await self._ready_or_exit(ready, timeout)
        except BaseException:
            await ready.close()
            await self.kill()
            raise
        return self.ready

    async def _ready_or_exit(self, ready: ReadySignal, timeout: float) -> dict:
        waiting = asyncio.ensure_future(ready.wait(timeout))
        exited = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait((waiting, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, exited):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if not waiting.done() or waiting.cancelled():
            detail = self.failure_detail()
            raise MachineExited(
                f"the machine exited (status {exited.result()}) before its ready signal"
                + (f"\n{detail}" if detail else "")
            )
        try:
            return waiting.result()
        except TimeoutError:
            detail = self.failure_detail()
            raise TimeoutError(
                f"no ready signal within {timeout} s" + (f"\n{detail}" if detail else "")
            ) from None

    async def configure(self, config: dict, timeout: float | None = None) -> dict:
        """Send the configuration; ConfigurationRejected when the program cannot start,
        MachineExited when the machine ended instead of answering."""
        timeout = self.configure_timeout if timeout is None else timeout
        try:
            return await self.client.configure(config, timeout=timeout)
        except ConfigurationRejected:
            raise
        except InitError as error:
            # No answer: an init that ended (a crash, a kill) looks like a reset or an
            # early EOF on the connection; its exit and last words say what happened.
            status = await self.wait_exit(self.exit_grace)
            if status is None:
                raise
            detail = self.failure_detail()
            raise MachineExited(
                f"{self.describe_exit(status)} before answering its configuration"
                + (f"\n{detail}" if detail else "")
            ) from error

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status if the machine ends within `timeout`, else None."""
        try:
            return await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            return None

    async def stop(self, halt_timeout: float = 5, exit_timeout: float = 10) -> HaltResult | None:
        """Halt as the supervisor does; the machine must then end by itself, or it is killed."""
        result = None
        if self.running:
            result = await self.client.halt(timeout=halt_timeout)
            if await self.wait_exit(exit_timeout) is None:
                log.warning("%s did not end %s s after halt: killing it", type(self).__name__, exit_timeout)
        await self.kill()
        return result

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()


class CommandMachine(Machine):
    """A machine that is one command (a process, its own session if asked)."""

    def __init__(
        self,
        command: Sequence[str],
        uds_path: str | os.PathLike,
        *,
        env: dict[str, str] | None = None,
        stdout=None,
        stderr=None,
        new_session: bool = False,
        preexec_fn=None,
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        super().__init__(uds_path, ready_timeout=ready_timeout, configure_timeout=configure_timeout)
        self.command = list(command)
        self.env = env
        self.stdout = stdout
        self.stderr = stderr
        # A session of its own, as a VM is: a terminal's Ctrl-C reaches only the caller,
        # which halts the machine through the protocol.
        self.new_session = new_session
        self.preexec_fn = preexec_fn

    def launch_command(self) -> list[str]:
        """The command started: `command`, as given."""
        return self.command

    async def _launch(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.launch_command(),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=self.new_session,
            preexec_fn=self.preexec_fn,
        )

    async def kill(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            await self.process.wait()
