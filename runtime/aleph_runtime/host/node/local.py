"""A local compute node for one program, its lifecycle: what `aleph-runtime run` composes.

    program = infer_program(Path("examples/fastapi_app"))      # encoding, entrypoint, interface
    node = LocalNode(NodeOptions(program, mode="dev", state_dir=...), progress=print)
    node.prepare()            # synchronous: pack code and volumes, build images (progress shown)
    url = await node.start()  # Redis + guest API, boot the machine, configure it, HTTP front
    await node.wait()         # until the node gives up restarting (or cancel it on Ctrl-C)
    await node.stop()         # halt as the supervisor does; no process or socket left

The machine is a `machines.base.Machine`: the init as a local process (dev mode) or the
runtime image in QEMU with our vsock backend; both present Firecracker's hybrid-vsock
layout on `uds_path`, so the supervisor client and the host services work unchanged, and
the node asks nothing else of them than what `Machine` declares. What a start needs (the
machine with its drives or places, the configuration) is node/provision.py's; program
inference node/inference.py's; `--volume` and `--env` node/volumes.py's; cli.py parses,
node/output.py shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from aleph_runtime.host.errors import NodeError
from aleph_runtime.host.machines.base import Machine
from aleph_runtime.host.machines.qemu import CONFIGURE_TIMEOUT
from aleph_runtime.host.node.inference import Program
from aleph_runtime.host.node.output import is_boot_noise
from aleph_runtime.host.node.provision import NodeOptions, Progress, Provision

REPOSITORY = Path(__file__).resolve().parents[4]
EXAMPLES = REPOSITORY / "examples"
DEFAULT_EXAMPLE = EXAMPLES / "fastapi_app"
#: The default example's persistent volume: where it is mounted and the env var that tells the program.
DEFAULT_EXAMPLE_VOLUME = "mount=/var/lib/example,persistent=example"
DEFAULT_EXAMPLE_ENV = {"EXAMPLE_VOLUME": "/var/lib/example"}
#: The longest path of a Unix socket (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: Failed starts in a row after which the node gives up (the command exits), and the
#: pause before each retry: a program that fails at every start is not restarted in a loop.
MAX_FAILED_STARTS = 3
RESTART_BACKOFF = (1.0, 2.0, 4.0)
#: The longest last log line shown with a crash.
CRASH_LINE_CHARS = 200


def _no_progress(message: str) -> None:
    pass


def local_vm_hash(program: Program) -> str:
    """A stable item hash for a local program: from its path, so its cache keys and signing
    address stay the same across edits and restarts (a node uses the message's hash)."""
    return hashlib.sha256(f"aleph-runtime local program {program.source}".encode()).hexdigest()


class StateLock:
    """One run per state directory: its Redis socket and volumes are not shareable."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "lock"
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            self._file = None
            raise NodeError(
                f"another aleph-runtime (PID {holder}) is running with the state directory {self.path.parent}; "
                "stop it or give another --state-dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalNode:
    """Host services + one machine + the program's configuration, started and stopped as one."""

    def __init__(
        self,
        options: NodeOptions,
        progress: Progress = _no_progress,
        access_log: Progress | None = None,
        on_boot: Callable[[], None] | None = None,
    ):
        """`progress`: called with each step's message; `access_log`: with one line per request
        served (None: no access log); `on_boot`: as each machine starts to boot."""
        self.options = options
        self.progress = progress
        self.access_log = access_log
        self.on_boot = on_boot
        self.state_dir = Path(options.state_dir).expanduser().resolve()
        self.vm_hash = options.vm_hash or local_vm_hash(options.program)
        self.lock = StateLock(self.state_dir)
        self.provision = Provision(options, self.state_dir, self.vm_hash, progress)
        self.run_dir: Path | None = None
        self.log_path = self.state_dir / "logs" / f"{options.mode}.log"
        self.machine: Machine | None = None
        self.services = None
        self.config: dict | None = None
        self.url: str | None = None
        self._last_machine: Machine | None = None
        self._watcher: asyncio.Task | None = None
        self._restarting: asyncio.Task | None = None
        self._stopping = False
        #: Held while a machine is replaced: a crash is handled before the next start.
        self._lifecycle = asyncio.Lock()
        self._log_offset = 0
        #: Set when the node gives up (starts failed MAX_FAILED_STARTS times in a row): the error.
        self.gave_up: asyncio.Future | None = None
        #: How the last start went, phase by phase (seconds): what the startup report shows.
        self.boot_times: dict[str, float] = {}
        #: `--watch`: after failed starts, wait for the next edit instead of giving up.
        self.wait_for_edits = False
        self._first_call_pending = False

    # --- preparation (synchronous: packing, images) ---

    def prepare(self) -> None:
        """Lock the state directory, make the run directory, pack the code and volumes,
        build what the machine needs; leaves `self.config` and `self.machine` ready."""
        if self.options.mode not in ("vm", "dev"):
            raise NodeError(f"unknown mode {self.options.mode!r}: vm or dev")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self.progress(f"state directory {self.state_dir} (signing key, Redis data, volumes, logs)")
        try:
            self._make_run_dir()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_bytes(b"")
            self.machine = self._last_machine = self.provision.machine(self.run_dir, self.log_path)
            self.config = self.provision.config(self.machine)
        except BaseException:
            self.cleanup()
            raise

    def _make_run_dir(self) -> None:
        runs = self.state_dir / "run"
        runs.mkdir(parents=True, exist_ok=True)
        for stale in runs.iterdir():  # left by a run that was killed (SIGKILL, power loss)
            with contextlib.suppress(OSError):
                shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        run_dir = runs / str(os.getpid())
        # <uds>_53 and the vsock backend's sockets must fit in sun_path: else a short /tmp directory.
        if len(os.fsencode(run_dir / "vm" / "v.sock_1024")) > MAX_SOCKET_PATH:
            import tempfile

            self.run_dir = Path(tempfile.mkdtemp(prefix="aleph-run-", dir="/tmp"))
        else:
            run_dir.mkdir()
            self.run_dir = run_dir

    def repack(self) -> None:
        """Pack the program's code again (after an edit): the next machine runs it."""
        assert self.config is not None and self._last_machine is not None and self.run_dir is not None
        self.provision.repack(self.run_dir)
        self.config = self.provision.config(self._last_machine)

    # --- running ---

    async def start(self) -> str:
        """Host services, the machine, the configuration, the front; the URL."""
        from aleph_runtime.host.services.guest_api import DEFAULT_API_SERVER
        from aleph_runtime.host.services.host_services import HostServices

        assert self.machine is not None and self.config is not None, "prepare() first"
        self.gave_up = asyncio.get_running_loop().create_future()
        self.services = HostServices(
            self.state_dir, self.machine.uds_path, self.vm_hash, self.options.seconds,
            api_server=self.options.api_server or DEFAULT_API_SERVER, redis_url=self.options.redis_url,
            host=self.options.host, port=self.options.port,
        )  # fmt: skip
        self.progress(
            "starting Redis and the guest API" if not self.options.redis_url else "starting the guest API"
        )
        await self.services.start()
        self.progress(
            "booting the VM (QEMU)" if self.options.mode == "vm" else "starting the init (dev mode)"
        )
        await self._boot(self.machine, first=True)
        self.url = await self.services.start_front(
            becomes_ready=self.ensure_running, on_empty_answer=self.on_empty_answer,
            access_log=self._access_line if self.access_log is not None else None,
        )  # fmt: skip
        return self.url

    async def _boot(self, machine: Machine, first: bool = False) -> None:
        """Start `machine`, configure the program; it becomes the node's machine, watched."""
        loop = asyncio.get_running_loop()
        # The node's machine once configured: calls meanwhile wait in ensure_running.
        self._last_machine = machine
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self.on_boot is not None:
            self.on_boot()
        began = loop.time()
        try:
            ready = await machine.start()
            ready_at = loop.time()
            if first:
                # A container says which guarantee it runs without (a cgroup controller, pasta...).
                for warning in getattr(machine, "warnings", ()):
                    self.progress(f"dev mode: {warning}")
                self.progress(
                    f"the init is ready (protocol {ready.get('version', '?')}); configuring the program"
                )
            await machine.configure(self.config)
        except BaseException:
            self.machine = None
            with contextlib.suppress(Exception):
                await machine.kill()
            raise
        self.machine = machine
        self._first_call_pending = True
        took = loop.time() - ready_at
        self.boot_times = {**machine.boot_phases(ready_at - began), "config answered": took}
        if took > CONFIGURE_TIMEOUT and not self.options.debug_wait:  # --debug-wait: the user's time
            self.progress(f"the program took {took:.0f} s to start: a node allows {CONFIGURE_TIMEOUT} s "
                          "(with KVM, much faster than emulation)")  # fmt: skip
        self._watcher = asyncio.create_task(self._watch(machine))

    def _access_line(self, line: str) -> None:
        # The first call after a start completes the startup report: a program's lazy work shows there.
        if self._first_call_pending:
            self._first_call_pending = False
            line += "  (first call)"
        self.access_log(line)

    def runtime_report(self) -> str:
        """`runtime debian-13 (Python 3.13.5), the lean image`: what runs the program."""
        return f"runtime {self.provision.runtime_description()}"

    def startup_report(self) -> str:
        """`kernel 1.20 s, init0 0.31 s, ...`: how the last start was spent."""
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.boot_times.items()]
        return f"started in {sum(self.boot_times.values()):.2f} s: " + ", ".join(parts)

    def _last_words(self) -> str:
        """The last line the machine logged since it started that is not boot noise, shortened:
        for the init's one-line tracebacks (`... | ValueError: x`), their last part."""
        try:
            with open(self.log_path, "rb") as file:
                file.seek(max(self._log_offset, file.seek(0, os.SEEK_END) - (1 << 16)))
                text = file.read().decode(errors="replace")
        except OSError:
            return ""
        for line in reversed(text.splitlines()):
            line = line.strip()
            if not line or is_boot_noise(line) or " init1 INFO:" in line:
                continue
            line = line.rsplit(" | ", 1)[-1].strip()
            return line if len(line) <= CRASH_LINE_CHARS else "..." + line[-CRASH_LINE_CHARS:]
        return ""

    async def _watch(self, machine: Machine) -> None:
        """A machine that stops on its own has crashed: report it; the next call starts another."""
        status = await machine.wait()
        if self._stopping or self.machine is not machine:
            return
        await self._crashed(machine, status)

    async def _crashed(self, machine: Machine, status: int | None, why: str = "") -> None:
        """Report a crash, once, and make sure nothing of that machine is left."""
        async with self._lifecycle:
            if self.machine is not machine or self._stopping:
                return  # already handled (the front and the watcher both notice)
            if status is None:
                # A program that exited (sys.exit, os._exit) takes the init with it: its status says so.
                with contextlib.suppress(asyncio.TimeoutError):
                    status = await asyncio.wait_for(machine.wait(), machine.exit_grace)
            reason = machine.describe_exit(status) if status is not None else why
            last = self._last_words()
            self.progress(f"crash: {reason}{'; last log line: ' + last if last else ''}; "
                          "the next request starts a new one")  # fmt: skip
            with contextlib.suppress(Exception):
                await machine.kill()
            self.machine = None

    async def on_empty_answer(self) -> None:
        """The init answered nothing (a node then stops the VM, and starts a new one later)."""
        if self.machine is not None:
            await self._crashed(self.machine, None, "no answer from the program: the machine was shut down")

    async def ensure_running(self) -> None:
        """Awaited before each call: after a crash, start a new machine (fresh program; same
        volumes, cache and key). Raises ConnectionRefusedError when it cannot."""
        if self.machine is not None:
            return
        if self._stopping or (self.gave_up is not None and self.gave_up.done()):
            raise ConnectionRefusedError("the program is not running")
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.create_task(self._restart())
        # Shielded: a call that gives up waiting must not abort the start for the next one.
        if not await asyncio.shield(self._restarting):
            raise ConnectionRefusedError("the program failed to start")

    async def restart(self, reason: str) -> bool:
        """Stop the machine (halt), start a new one: `--watch` after an edit."""
        if self._restarting is not None and not self._restarting.done():
            await asyncio.shield(self._restarting)  # then again: it may have packed the old code
        # No await between the check and the task: a request arriving meanwhile waits for it.
        self._restarting = asyncio.create_task(self._restart(reason, replace=True))
        return await asyncio.shield(self._restarting)

    async def _restart(self, reason: str = "after the crash", replace: bool = False) -> bool:
        """Up to MAX_FAILED_STARTS tries, backing off; True when the program runs again."""
        from aleph_runtime.host.supervisor import ConfigurationRejected

        loop = asyncio.get_running_loop()
        if replace:
            async with self._lifecycle:
                machine, self.machine = self.machine, None
                if machine is not None:
                    with contextlib.suppress(Exception):
                        await machine.stop()
        last_error: BaseException | None = None
        for attempt in range(MAX_FAILED_STARTS):
            if attempt:
                await asyncio.sleep(RESTART_BACKOFF[attempt - 1])
            if self._stopping:
                return False
            self.progress(
                f"starting a new {self._what} ({reason}" + (f", try {attempt + 1})" if attempt else ")")
            )
            began = loop.time()
            try:
                async with self._lifecycle:
                    if self.machine is not None:
                        return True  # another start got there first: never two machines
                    if self.services is not None and self.options.mode == "vm":
                        await self.services.restart_guest_api()  # the old VM's cleanup removed its socket
                    await self._boot(self._last_machine.renew())
            except (ConfigurationRejected, OSError, RuntimeError, TimeoutError) as error:
                last_error = error
                detail = (
                    error.error
                    if isinstance(error, ConfigurationRejected)
                    else f"{type(error).__name__}: {error}"
                )
                self.progress(f"start {attempt + 1}/{MAX_FAILED_STARTS} failed: {detail}")
                continue
            self.progress(f"restarted in {loop.time() - began:.1f} s")
            return True
        if self.wait_for_edits:
            self.progress("the program does not start: waiting for an edit")
        elif self.gave_up is not None and not self.gave_up.done():
            self.gave_up.set_result(last_error)
        return False

    @property
    def _what(self) -> str:
        return "VM" if self.options.mode == "vm" else "init"

    async def wait(self) -> BaseException | None:
        """Until the node gives up restarting the program: the last start's error."""
        assert self.gave_up is not None
        return await asyncio.shield(self.gave_up)

    async def stop(self) -> None:
        """Front, machine (halt), guest API, Redis; then the run directory. Safe to call twice."""
        self._stopping = True
        for task in (self._restarting, self._watcher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        try:
            if self.services is not None and self.services.front is not None:
                await self.services.front.stop()
                self.services.front = None
            if self.machine is not None:
                await self.machine.stop()
        finally:
            if self.services is not None:
                await self.services.stop()
            self.cleanup()

    def cleanup(self) -> None:
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        self.lock.release()


def check_port_free(host: str, port: int, why: str = "") -> None:
    """Fail early, before anything boots, when a port we need is taken."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if why:
                raise NodeError(f"{host}:{port} is taken ({error.strerror}): {why}") from None
            raise NodeError(
                f"cannot listen on {host}:{port} ({error.strerror}): give another --port"
            ) from None
