"""A local compute node for one program: what `aleph-runtime run` composes.

    program = infer_program(Path("examples/fastapi_app"))      # encoding, entrypoint, interface
    node = LocalNode(NodeOptions(program, mode="dev", state_dir=...))
    node.prepare()            # synchronous: pack code and volumes, build images (progress shown)
    url = await node.start()  # Redis + guest API, boot the machine, configure it, HTTP front
    await node.wait()         # until the machine dies (or cancel it on Ctrl-C)
    await node.stop()         # halt as the supervisor does; no process or socket left

The machine is anything satisfying `machines.base.Machine`: `DevMachine` (the init as a
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
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from aleph_runtime.host.errors import NodeError, SetupError
from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.machines.qemu import CONFIGURE_TIMEOUT, VM_IP, VM_ROUTE, QemuMachine
from aleph_runtime.host.node.inference import Program, is_squashfs
from aleph_runtime.host.node.volumes import VolumeSpec
from aleph_runtime.host.program import (
    program_config,
    squashfs_directory,
    tar_directory,
    zip_directory,
)

REPOSITORY = Path(__file__).resolve().parents[4]
EXAMPLES = REPOSITORY / "examples"
DEFAULT_EXAMPLE = EXAMPLES / "fastapi_app"
#: The default example's persistent volume: where it is mounted and the env var that tells the program.
DEFAULT_EXAMPLE_VOLUME = "mount=/var/lib/example,persistent=example"
DEFAULT_EXAMPLE_ENV = {"EXAMPLE_VOLUME": "/var/lib/example"}
#: The longest path of a Unix socket (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107

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
    #: The runtime image's profile and compression (None: lean and gzip, or ALEPH_ROOTFS).
    profile: str | None = None
    compression: str | None = None


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

    def __init__(self, options: NodeOptions, progress: Progress = _no_progress):
        self.options = options
        self.progress = progress
        self.state_dir = Path(options.state_dir).expanduser().resolve()
        self.vm_hash = options.vm_hash or local_vm_hash(options.program)
        self.lock = StateLock(self.state_dir)
        self.run_dir: Path | None = None
        self.log_path = self.state_dir / "logs" / f"{options.mode}.log"
        self.machine: DevMachine | QemuMachine | None = None
        self.services = None
        self.config: dict | None = None
        self.url: str | None = None

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
        if program.code is not None or program.directory is None or program.encoding == "squashfs":
            return program.code
        if program.encoding == "tar":
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
                        variables[key] = rewrite(volume.mount) + value[len(volume.mount):]
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
                raise NodeError(f"unsquashfs {image} failed: {error.stderr.decode(errors='replace').strip()}") from None
            partial.rename(target)
        return target

    def _prepare_dev(self) -> None:
        assert self.run_dir is not None
        machine = DevMachine(self.run_dir, self.log_path)
        self.machine = machine
        program = self.options.program
        machine.root.mkdir(parents=True, exist_ok=True)
        volumes: list[dict] = []
        if program.encoding == "squashfs":
            machine.place("/opt/code", program.directory or self._unsquash(program.image))
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
            machine.place(volume.mount, target)
            device = f"vd{chr(ord('b') + len(volumes))}"
            volumes.append({"mount": volume.mount, "device": device, "read_only": volume.read_only})
            self.progress(f"volume {volume.mount}: {target} (visible at {machine.guest_path(volume.mount)})")
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
        image = f"the {self.options.profile or 'lean'} runtime image ({self.options.compression or 'gzip'})"
        chosen = self.options.profile is not None or self.options.compression is not None
        if not chosen and os.environ.get("ALEPH_ROOTFS"):
            image = "the runtime image (ALEPH_ROOTFS)"
        self.progress(f"finding {image} and the kernel (built through their caches when missing)")
        machine = QemuMachine(
            self.run_dir, self.log_path, [], self.options.memory_mb, self.options.vcpus,
            profile=self.options.profile, compression=self.options.compression,
        )  # fmt: skip
        self.machine = machine
        drives: list[tuple[Path, bool]] = []
        volumes: list[dict] = []

        def add(path: Path, mount: str, read_only: bool) -> None:
            drives.append((path, read_only))
            volumes.append({"mount": mount, "device": f"vd{chr(ord('b') + len(volumes))}", "read_only": read_only})

        if program.encoding == "squashfs":
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
                add(squashfs_directory(volume.source, self.run_dir / f"volume{i}.squashfs"), volume.mount, True)
            else:
                add(volume.source, volume.mount, True)
        code = self._code()
        machine.vm.drives = [QemuMachine.drive(path, read_only) for path, read_only in drives]
        self.config = self._config(code, volumes, self._variables(), ip=VM_IP, route=VM_ROUTE)

    # --- running ---

    async def start(self) -> str:
        """Host services, the machine, the configuration, the front; the URL."""
        from aleph_runtime.host.services.guest_api import DEFAULT_API_SERVER
        from aleph_runtime.host.services.host_services import HostServices

        assert self.machine is not None and self.config is not None, "prepare() first"
        self.services = HostServices(
            self.state_dir, self.machine.uds_path, self.vm_hash, self.options.seconds,
            api_server=self.options.api_server or DEFAULT_API_SERVER, redis_url=self.options.redis_url,
            host=self.options.host, port=self.options.port,
        )  # fmt: skip
        self.progress("starting Redis and the guest API" if not self.options.redis_url else "starting the guest API")
        await self.services.start()
        self.progress("booting the VM (QEMU)" if self.options.mode == "vm" else "starting the init (dev mode)")
        ready = await self.machine.start()
        self.progress(f"the init is ready (protocol {ready.get('version', '?')}); configuring the program")
        started = asyncio.get_running_loop().time()
        await self.machine.configure(self.config)
        took = asyncio.get_running_loop().time() - started
        if took > CONFIGURE_TIMEOUT:
            self.progress(f"the program took {took:.0f} s to start: a node allows {CONFIGURE_TIMEOUT} s "
                          "(with KVM, much faster than emulation)")  # fmt: skip
        self.url = await self.services.start_front()
        return self.url

    async def wait(self) -> int | None:
        assert self.machine is not None
        return await self.machine.wait()

    async def stop(self) -> None:
        """Front, machine (halt), guest API, Redis; then the run directory. Safe to call twice."""
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
        if isinstance(self.machine, DevMachine):
            self.machine.close()
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
            raise NodeError(f"cannot listen on {host}:{port} ({error.strerror}): give another --port") from None

