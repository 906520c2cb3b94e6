"""A local compute node for one program: what `aleph-runtime run` composes.

    program = infer_program(Path("examples/fastapi_app"))      # encoding, entrypoint, interface
    node = LocalNode(NodeOptions(program, mode="dev", state_dir=...))
    node.prepare()            # synchronous: pack code and volumes, build images (progress shown)
    url = await node.start()  # Redis + guest API, boot the machine, configure it, HTTP front
    await node.wait()         # until the machine dies (or cancel it on Ctrl-C)
    await node.stop()         # halt as the supervisor does; no process or socket left

The machine is anything satisfying `machines.base.NodeMachine`: `DevMachine` (the init as a
local process, no VM) or `QemuMachine` (the runtime image booted in QEMU with our vsock
backend). Both present Firecracker's hybrid-vsock layout on `uds_path`, so the
supervisor client and the host services work unchanged. Program inference lives in
node/inference.py, `--volume` and `--env` in node/volumes.py; cli.py parses and prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from aleph_runtime.host.errors import NodeError, SetupError
from aleph_runtime.host.machines.dev import DevMachine, namespaces_unavailable
from aleph_runtime.host.machines.qemu import CONFIGURE_TIMEOUT, VM_IP, VM_ROUTE, QemuMachine
from aleph_runtime.host.node.inference import Program, is_squashfs
from aleph_runtime.host.node.volumes import VolumeSpec
from aleph_runtime.host.program import (
    program_config,
    squashfs_directory,
    tar_directory,
    zip_directory,
)
from aleph_runtime.host.vmm.image import DEFAULT_COMPRESSION
from aleph_runtime.protocol import Encoding

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
_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] (?!init1 )")
_BOOT_SCRIPT_LINE = re.compile(r"^\d+\.\d+ (init0|initramfs): ")


def is_boot_noise(line: str) -> bool:
    """A line of the kernel's or the boot scripts' (init0, initramfs) on the console."""
    return bool(_KERNEL_LINE.match(line) or _BOOT_SCRIPT_LINE.match(line))


Progress = Callable[[str], None]


def _no_progress(message: str) -> None:
    pass


def default_state_dir() -> Path:
    if os.environ.get("ALEPH_RUNTIME_STATE"):
        return Path(os.environ["ALEPH_RUNTIME_STATE"])
    if os.geteuid() == 0:
        return Path("/var/lib/aleph-runtime")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aleph-runtime"


def local_vm_hash(program: Program) -> str:
    """A stable item hash for a local program: from its path, so its cache keys and signing
    address stay the same across edits and restarts (a node uses the message's hash)."""
    return hashlib.sha256(f"aleph-runtime local program {program.source}".encode()).hexdigest()


# --- the node ---


@dataclasses.dataclass
class NodeOptions:
    program: Program
    volumes: list[VolumeSpec] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    mode: str = "vm"
    memory_mb: int = 512
    vcpus: int = 1
    seconds: float = 30
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    api_server: str | None = None
    redis_url: str | None = None
    vm_hash: str | None = None
    #: The runtime image's profile and compression (None: lean and lz4, or ALEPH_ROOTFS).
    profile: str | None = None
    compression: str | None = None
    kernel: str | None = None
    """vm mode: "node" (the node-like kernel, default) or "debian"."""


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
        self, options: NodeOptions, progress: Progress = _no_progress, access_log: Progress | None = None
    ):
        self.options = options
        self.progress = progress
        #: Called with one line per request served (None: no access log).
        self.access_log = access_log
        self.state_dir = Path(options.state_dir).expanduser().resolve()
        self.vm_hash = options.vm_hash or local_vm_hash(options.program)
        self.lock = StateLock(self.state_dir)
        self.run_dir: Path | None = None
        self.log_path = self.state_dir / "logs" / f"{options.mode}.log"
        self.machine: DevMachine | QemuMachine | None = None
        self.services = None
        self.config: dict | None = None
        self.url: str | None = None
        self._drives: list = []
        self._volumes_config: list[dict] = []
        self._last_machine: DevMachine | QemuMachine | None = None
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
        #: Called as each machine starts to boot (the output filter hides each boot's console).
        self.on_boot: Callable[[], None] | None = None
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
            if self.options.mode == "dev":
                self._prepare_dev()
            else:
                self._prepare_vm()
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

    def _code(self) -> bytes | None:
        program = self.options.program
        if program.code is not None or program.directory is None or program.encoding is Encoding.SQUASHFS:
            return program.code
        if program.encoding is Encoding.TAR:
            code = tar_directory(program.directory)
        else:
            code = zip_directory(program.directory)
        self.progress(f"packed {program.directory} as {program.encoding} ({len(code) / 1024:.0f} KiB)")
        return code

    def _variables(self, rewrite: Callable[[str], str] | None = None) -> dict[str, str] | None:
        variables = dict(self.options.env)
        if rewrite is not None:
            for key, value in variables.items():
                for volume in self.options.volumes:
                    if value == volume.mount or value.startswith(volume.mount + "/"):
                        variables[key] = rewrite(volume.mount) + value[len(volume.mount) :]
                        break
        return variables or None

    def _config(self, code: bytes | None, volumes: list[dict], variables: dict | None, **network) -> dict:
        program = self.options.program
        return program_config(
            code, program.entrypoint, encoding=program.encoding, interface=program.interface,
            vm_hash=self.vm_hash, volumes=volumes, variables=variables, **network,
        )  # fmt: skip

    def persistent_path(self, name: str) -> Path:
        return self.state_dir / "volumes" / name

    def _unsquash(self, image: Path) -> Path:
        """A squashfs image unpacked once into the state directory's cache (dev mode)."""
        info = image.stat()
        key = hashlib.sha256(f"{image}:{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()[:16]
        target = self.state_dir / "cache" / "unsquashed" / key
        if not target.is_dir():
            self.progress(f"unpacking {image} (dev mode cannot mount it)")
            partial = target.with_name(key + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            try:
                subprocess.run(["unsquashfs", "-q", "-n", "-no-xattrs", "-d", str(partial), str(image)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            except FileNotFoundError:
                raise SetupError("unsquashfs is not installed (squashfs-tools; scripts/setup.sh)") from None
            except subprocess.CalledProcessError as error:
                raise NodeError(
                    f"unsquashfs {image} failed: {error.stderr.decode(errors='replace').strip()}"
                ) from None
            partial.rename(target)
        return target

    def _prepare_dev(self) -> None:
        assert self.run_dir is not None
        why_not = namespaces_unavailable(self.run_dir)
        machine = DevMachine(self.run_dir, self.log_path, namespaced=why_not is None)
        if why_not is not None:
            self.progress(f"dev mode without private namespaces ({why_not}): the program's files are under "
                          f"{machine.root}, not at the VM's paths (/opt/code, volumes, /tmp/socat-socket)")  # fmt: skip
        self.machine = machine
        program = self.options.program
        machine.root.mkdir(parents=True, exist_ok=True)
        volumes: list[dict] = []
        if program.encoding is Encoding.SQUASHFS:
            machine.place("/opt/code", program.directory or self._unsquash(program.image), read_only=True)
            volumes.append({"mount": "/opt/code", "device": "vdb", "read_only": True})
        for volume in self.options.volumes:
            if volume.persistent:
                target = self.persistent_path(volume.persistent)
                target.mkdir(parents=True, exist_ok=True)
            elif volume.source.is_dir():
                target = volume.source
            elif is_squashfs(volume.source):
                target = self._unsquash(volume.source)
            else:
                raise NodeError(f"--volume {volume.mount}: dev mode takes a directory or a squashfs image, "
                                f"not {volume.source}")  # fmt: skip
            machine.place(volume.mount, target, volume.read_only)
            device = f"vd{chr(ord('b') + len(volumes))}"
            volumes.append({"mount": volume.mount, "device": device, "read_only": volume.read_only})
            where = "" if machine.namespaced else f" (visible at {machine.guest_path(volume.mount)})"
            self.progress(f"volume {volume.mount}: {target}{where}")
        self._volumes_config = volumes
        self.config = self._config(self._code(), volumes, self._variables(machine.guest_path))

    def _persistent_image(self, volume: VolumeSpec) -> Path:
        directory = self.persistent_path(volume.persistent)
        image = directory.with_name(volume.persistent + ".ext4")
        if image.exists():
            return image
        image.parent.mkdir(parents=True, exist_ok=True)
        self.progress(f"creating the persistent volume {volume.persistent} ({volume.size_mib} MiB ext4)")
        partial = image.with_name(image.name + ".partial")
        with open(partial, "wb") as file:
            file.truncate(volume.size_mib << 20)
        command = ["mkfs.ext4", "-q", "-F", "-L", volume.persistent[:16]]
        if directory.is_dir() and any(directory.iterdir()):
            command += ["-d", str(directory)]  # seeded from the dev-mode directory
        try:
            subprocess.run([*command, str(partial)], check=True, capture_output=True)
        except FileNotFoundError:
            raise SetupError("mkfs.ext4 is not installed (e2fsprogs; scripts/setup.sh)") from None
        except subprocess.CalledProcessError as error:
            partial.unlink()
            raise NodeError(f"mkfs.ext4 failed: {error.stderr.decode(errors='replace').strip()}") from None
        partial.rename(image)
        return image

    def _prepare_vm(self) -> None:
        assert self.run_dir is not None
        program = self.options.program
        # The machine first: a missing QEMU or image is reported before anything is packed.
        image = f"the {self.options.profile or 'lean'} runtime image ({self.options.compression or DEFAULT_COMPRESSION})"
        chosen = self.options.profile is not None or self.options.compression is not None
        if not chosen and os.environ.get("ALEPH_ROOTFS"):
            image = "the runtime image (ALEPH_ROOTFS)"
        self.progress(f"finding {image} and the kernel (built through their caches when missing)")
        machine = QemuMachine(
            self.run_dir, self.log_path, [], self.options.memory_mb, self.options.vcpus,
            kernel=self.options.kernel, profile=self.options.profile, compression=self.options.compression,
        )  # fmt: skip
        self.machine = machine
        drives: list[tuple[Path, bool]] = []
        volumes: list[dict] = []

        def add(path: Path, mount: str, read_only: bool) -> None:
            drives.append((path, read_only))
            volumes.append(
                {"mount": mount, "device": f"vd{chr(ord('b') + len(volumes))}", "read_only": read_only}
            )

        if program.encoding is Encoding.SQUASHFS:
            image = program.image
            if image is None:
                self.progress(f"packing {program.directory} as squashfs")
                image = squashfs_directory(program.directory, self.run_dir / "code.squashfs")
            add(image, "/opt/code", True)
        for i, volume in enumerate(self.options.volumes):
            if volume.persistent:
                add(self._persistent_image(volume), volume.mount, False)
            elif volume.source.is_dir():
                self.progress(f"packing {volume.source} as squashfs for {volume.mount}")
                add(
                    squashfs_directory(volume.source, self.run_dir / f"volume{i}.squashfs"),
                    volume.mount,
                    True,
                )
            else:
                add(volume.source, volume.mount, True)
        code = self._code()
        self._drives = [QemuMachine.drive(path, read_only) for path, read_only in drives]
        machine.vm.drives = list(self._drives)
        self._volumes_config = volumes
        self.config = self._config(code, volumes, self._variables(), ip=VM_IP, route=VM_ROUTE)

    def repack(self) -> None:
        """Pack the program's code again (after an edit): the next machine runs it."""
        assert self.config is not None and self._last_machine is not None and self.run_dir is not None
        program = self.options.program
        if program.directory is None and program.code is not None:
            program.code = program.source.read_bytes()  # a .py file, a zip or tar archive
        elif (
            program.encoding is Encoding.SQUASHFS
            and self.options.mode == "vm"
            and program.directory is not None
        ):
            squashfs_directory(program.directory, self.run_dir / "code.squashfs")
        elif program.encoding is Encoding.SQUASHFS and program.image is not None:
            raise NodeError("--watch cannot follow a squashfs image: restart the command after rebuilding it")
        last = self._last_machine
        rewrite = last.guest_path if isinstance(last, DevMachine) else None
        network = {"ip": VM_IP, "route": VM_ROUTE} if self.options.mode == "vm" else {}
        self.config = self._config(self._code(), self._volumes_config, self._variables(rewrite), **network)

    def _fresh_machine(self) -> DevMachine | QemuMachine:
        """A new machine like the last one: same drives or places, same volumes."""
        old = self._last_machine
        if isinstance(old, DevMachine):
            return old.renew()
        machine = QemuMachine(
            self.run_dir, self.log_path, [], self.options.memory_mb, self.options.vcpus,
            kernel=self.options.kernel, images=old.images,
        )  # fmt: skip
        machine.vm.drives = list(self._drives)
        return machine

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

    async def _boot(self, machine: DevMachine | QemuMachine, first: bool = False) -> None:
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
        self.boot_times = self._measure(machine, ready_at - began, took)
        if took > CONFIGURE_TIMEOUT:
            self.progress(f"the program took {took:.0f} s to start: a node allows {CONFIGURE_TIMEOUT} s "
                          "(with KVM, much faster than emulation)")  # fmt: skip
        self._watcher = asyncio.create_task(self._watch(machine))

    def _access_line(self, line: str) -> None:
        # The first call after a start completes the startup report: a program's lazy work shows there.
        if self._first_call_pending:
            self._first_call_pending = False
            line += "  (first call)"
        self.access_log(line)

    @staticmethod
    def _measure(machine: DevMachine | QemuMachine, ready: float, configured: float) -> dict[str, float]:
        times: dict[str, float] = {}
        if isinstance(machine, QemuMachine):
            # Host times of init0's first and last console lines, from QEMU's start: its
            # last is the exec of init1, whose first line comes after the ready signal.
            marks: dict[str, float] = {}
            for line in machine.vm.console:
                if "init0:" in line.text:
                    marks.setdefault("init0", line.host_time)
                    marks["exec"] = line.host_time
            if "init0" in marks:
                times["kernel"] = marks["init0"]
                times["init0"] = marks["exec"] - marks["init0"]
                times["init1 ready"] = ready - marks["exec"]
            else:
                times["booted"] = ready
        else:
            times["init ready"] = ready
        times["config answered"] = configured
        return times

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

    async def _watch(self, machine: DevMachine | QemuMachine) -> None:
        """A machine that stops on its own has crashed: report it; the next call starts another."""
        status = await machine.wait()
        if self._stopping or self.machine is not machine:
            return
        await self._crashed(machine, status)

    async def _crashed(self, machine: DevMachine | QemuMachine, status: int | None, why: str = "") -> None:
        """Report a crash, once, and make sure nothing of that machine is left."""
        async with self._lifecycle:
            if self.machine is not machine or self._stopping:
                return  # already handled (the front and the watcher both notice)
            if status is None:
                # A program that exited (sys.exit, os._exit) takes the init with it: its status says so.
                # A VM first syncs its disks and powers off: longer than an init's exit.
                with contextlib.suppress(asyncio.TimeoutError):
                    status = await asyncio.wait_for(
                        machine.wait(), 10 if isinstance(machine, QemuMachine) else 2
                    )
            what = "the VM powered off" if isinstance(machine, QemuMachine) else "the init exited"
            reason = f"{what} (status {status})" if status is not None else why
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
                    await self._boot(self._fresh_machine())
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
        for machine in (self.machine, self._last_machine):
            if isinstance(machine, DevMachine):
                machine.close()
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
