"""A local compute node for one program: what `aleph-runtime run` composes.

    program = infer_program(Path("examples/fastapi_app"))      # encoding, entrypoint, interface
    node = LocalNode(NodeOptions(program, mode="dev", state_dir=...))
    node.prepare()            # synchronous: pack code and volumes, build images (progress shown)
    url = await node.start()  # Redis + guest API, boot the machine, configure it, HTTP front
    await node.wait()         # until the machine dies (or cancel it on Ctrl-C)
    await node.stop()         # halt as the supervisor does; no process or socket left

The machine is anything satisfying `Machine`: `DevMachine` (the init as a local process,
no VM) or `QemuMachine` (the runtime image booted in QEMU with our vsock backend). Both
present Firecracker's hybrid-vsock layout on `uds_path`, so the supervisor client and
the host services work unchanged.

Program inference (a PATH to encoding, entrypoint and interface) and volume
specifications (`--volume`) live here too; `cli.py` only parses arguments and prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from aleph_runtime.host.program import (
    interface_for,
    program_config,
    squashfs_directory,
    tar_directory,
    zip_directory,
)
from aleph_runtime.host.supervisor import SupervisorClient

REPOSITORY = Path(__file__).resolve().parents[3]
EXAMPLES = REPOSITORY / "examples"
DEFAULT_EXAMPLE = EXAMPLES / "fastapi_app"
#: The default example's persistent volume: where it is mounted and the env var that tells the program.
DEFAULT_EXAMPLE_VOLUME = "mount=/var/lib/example,persistent=example"
DEFAULT_EXAMPLE_ENV = {"EXAMPLE_VOLUME": "/var/lib/example"}

ENCODINGS = ("plain", "zip", "tar", "squashfs")
INTERFACES = ("asgi", "executable", "binary")
#: Names of an executable program's launcher in a directory or archive, in order of preference.
LAUNCHERS = ("run.sh", "run", "start.sh", "start", "entrypoint.sh")
#: The guest network a VM gets (QEMU's user network, restricted: no traffic leaves it).
VM_IP, VM_ROUTE = "172.16.0.2", "172.16.0.1"
#: The longest path of a Unix socket (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107

Progress = Callable[[str], None]


class NodeError(RuntimeError):
    """Something the user can fix: a bad PATH, option or volume; the message says what."""


class SetupError(NodeError):
    """This machine lacks something (a tool, the image, QEMU support); the message says what."""


def _no_progress(message: str) -> None:
    pass


# --- the program ---


@dataclasses.dataclass
class Program:
    """A program as a node would receive it: encoding, entrypoint, interface and its code."""

    source: Path
    encoding: str
    entrypoint: str
    interface: str
    code: bytes | None = None
    """The code (plain, zip, tar); None for squashfs, which is a drive."""
    image: Path | None = None
    """A squashfs image of the code, when PATH is one."""
    directory: Path | None = None
    """PATH when it is a directory (packed per `encoding`)."""
    why: str = ""
    """How encoding and entrypoint were chosen, for the progress output."""

    def describe(self) -> str:
        return f"{self.source}: {self.encoding}, {self.interface}, entrypoint {self.entrypoint!r}"


def _is_squashfs(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"hsqs"


def _listing_directory(directory: Path) -> dict[str, bool]:
    """Relative path -> executable, for the files of a directory (no __pycache__)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        files[path.relative_to(directory).as_posix()] = os.access(path, os.X_OK)
    return files


def _listing_zip(data: bytes) -> dict[str, bool]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename: bool((info.external_attr >> 16) & 0o111)
            for info in archive.infolist()
            if not info.is_dir()
        }


def _listing_tar(path: Path) -> dict[str, bool]:
    with tarfile.open(path) as archive:
        return {
            member.name.removeprefix("./"): bool(member.mode & 0o111) for member in archive.getmembers() if member.isfile()
        }


def _listing_squashfs(image: Path) -> dict[str, bool]:
    try:
        out = subprocess.run(
            ["unsquashfs", "-lls", "-d", "R", str(image)], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        raise SetupError("unsquashfs is not installed (Debian's squashfs-tools; scripts/setup.sh installs it)") from None
    except subprocess.CalledProcessError as error:
        raise NodeError(f"{image} is not a readable squashfs image: {error.stderr.strip()}") from None
    files = {}
    for line in out.splitlines():
        if not line.startswith("-"):
            continue  # directories, links, the header
        name = line.split(None, 5)[-1]
        if name.startswith("R/"):
            files[name[2:]] = "x" in line[1:10]
    return files


def entrypoint_from_listing(files: dict[str, bool]) -> tuple[str, str]:
    """(entrypoint, why) from a program's file listing (path -> executable).

    The rules, at the top level, or inside the only top-level directory when there is
    exactly one and no top-level file:
    1. `main.py` -> `main:app` (ASGI)
    2. an executable launcher, the first of run.sh, run, start.sh, start, entrypoint.sh
       -> that path (executable)
    3. `app.py` -> `app:app` (ASGI)
    4. exactly one `.py` file -> `<its name>:app` (ASGI)
    """
    top = {name.split("/", 1)[0] for name in files}
    prefix = ""
    if len(top) == 1 and all("/" in name for name in files):
        prefix = next(iter(top)) + "/"
    level = {name[len(prefix):]: executable for name, executable in files.items()
             if name.startswith(prefix) and "/" not in name[len(prefix):]}  # fmt: skip
    module_prefix = prefix.rstrip("/").replace("/", ".") + "." if prefix else ""
    where = f" in {prefix.rstrip('/')}/" if prefix else ""
    if "main.py" in level:
        return f"{module_prefix}main:app", f"main.py{where} -> ASGI `app`"
    for launcher in LAUNCHERS:
        if level.get(launcher):
            return f"{prefix}{launcher}", f"executable {launcher}{where}"
    if "app.py" in level:
        return f"{module_prefix}app:app", f"app.py{where} -> ASGI `app`"
    python = [name for name in level if name.endswith(".py") and name[:-3].isidentifier()]
    if len(python) == 1:
        return f"{module_prefix}{python[0][:-3]}:app", f"the only Python file, {python[0]}{where} -> ASGI `app`"
    raise NodeError(
        "cannot tell how to run this program: no main.py, no executable run.sh/run/start.sh/start/entrypoint.sh, "
        "no app.py and not exactly one .py file at its top level; give --entrypoint "
        "(`module:app` for Python ASGI, a file path for an executable)"
    )


def infer_program(
    path: str | os.PathLike,
    entrypoint: str | None = None,
    encoding: str | None = None,
    interface: str | None = None,
) -> Program:
    """Read PATH (a .py file or any single file, a directory, a zip or tar archive, a
    squashfs image) the way a node would receive it. Options override what is inferred."""
    source = Path(path).expanduser()
    if not source.exists():
        raise NodeError(f"{source} does not exist")
    source = source.resolve()
    if encoding is not None and encoding not in ENCODINGS:
        raise NodeError(f"unknown encoding {encoding!r}: one of {', '.join(ENCODINGS)}")
    if interface is not None and interface not in INTERFACES:
        raise NodeError(f"unknown interface {interface!r}: one of {', '.join(INTERFACES)}")
    program = Program(source=source, encoding="", entrypoint="", interface="")
    why = []
    if source.is_dir():
        program.directory = source
        program.encoding = encoding or "zip"
        if program.encoding == "plain":
            raise NodeError("a directory cannot be sent as plain code: use zip, tar or squashfs")
        why.append(f"a directory, packed as {program.encoding}")
        files = _listing_directory(source)
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(files)
            why.append(reason)
    elif zipfile.is_zipfile(source) and not source.suffix == ".py":
        program.encoding = encoding or "zip"
        program.code = source.read_bytes()
        why.append("a zip archive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_zip(program.code))
            why.append(reason)
    elif _is_squashfs(source):
        program.encoding = encoding or "squashfs"
        program.image = source
        why.append("a squashfs image, given as the code drive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_squashfs(source))
            why.append(reason)
    elif source.suffix != ".py" and tarfile.is_tarfile(source):
        program.encoding = encoding or "tar"
        program.code = source.read_bytes()
        why.append("a tar archive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_tar(source))
            why.append(reason)
    else:
        program.encoding = encoding or "plain"
        program.code = source.read_bytes()
        if not entrypoint:
            if source.suffix == ".py":
                module = source.stem if source.stem.isidentifier() else "main"
                entrypoint = f"{module}:app"
                why.append(f"a Python file -> plain code, ASGI `app` of module {module}")
            else:
                entrypoint = re.sub(r"[^\w.-]", "_", source.name)
                why.append("a single non-Python file -> plain code, run as an executable")
    if program.encoding == "squashfs" and program.image is None and program.directory is None:
        raise NodeError(f"--encoding squashfs needs a directory or a squashfs image, not {source.name}")
    if program.encoding in ("zip", "tar", "plain") and program.image is not None:
        raise NodeError(f"{source.name} is a squashfs image: its encoding can only be squashfs")
    program.entrypoint = entrypoint
    if interface == "binary":  # a message's "binary" interface reaches the init as "executable"
        interface = "executable"
    program.interface = interface or interface_for(entrypoint)
    program.why = "; ".join(why)
    return program


# --- volumes ---

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|[kmgt])?$", re.IGNORECASE)


def parse_size_mib(text: str) -> int:
    """`256`, `256M`, `1G`, `1GiB` -> MiB (a bare number is MiB)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise NodeError(f"not a size: {text!r} (e.g. 256, 256M, 1G)")
    value, unit = int(match.group(1)), (match.group(2) or "M")[0].upper()
    mib = {"K": value / 1024, "M": value, "G": value * 1024, "T": value * 1024 * 1024}[unit]
    return max(1, int(mib))


@dataclasses.dataclass
class VolumeSpec:
    """One `--volume`: an immutable one (a directory or an image) or a persistent named one."""

    mount: str
    source: Path | None = None
    persistent: str | None = None
    size_mib: int = 256

    @property
    def read_only(self) -> bool:
        return self.persistent is None


def parse_volume(text: str) -> VolumeSpec:
    """`MOUNT=SOURCE` (immutable) or `mount=MOUNT,source=SOURCE` or
    `mount=MOUNT,persistent=NAME[,size=SIZE]`."""
    fields: dict[str, str] = {}
    if text.startswith("mount=") or ",mount=" in text:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("mount", "source", "persistent", "name", "size"):
                raise NodeError(f"--volume {text!r}: {part!r} is not one of mount=, source=, persistent=, size=")
            fields["persistent" if key == "name" else key] = value.strip()
    else:
        mount, sep, source = text.partition("=")
        if not sep:
            raise NodeError(f"--volume {text!r}: expected MOUNT=SOURCE or mount=...,source=.../persistent=...")
        fields = {"mount": mount, "source": source}
    mount = fields.get("mount", "")
    if not mount.startswith("/") or ".." in PurePosixPath(mount).parts:
        raise NodeError(f"--volume {text!r}: the mount point must be an absolute path")
    mount = str(PurePosixPath(mount))
    if mount in ("/", "/opt", "/opt/code", "/dev", "/proc", "/sys", "/tmp"):
        raise NodeError(f"--volume {text!r}: {mount} cannot be a volume's mount point")
    if ("source" in fields) == ("persistent" in fields):
        raise NodeError(f"--volume {text!r}: give either source= (immutable) or persistent=NAME")
    spec = VolumeSpec(mount=mount)
    if "persistent" in fields:
        if not _VOLUME_NAME.match(fields["persistent"]):
            raise NodeError(f"--volume {text!r}: a persistent volume's name is letters, digits, _ . - (64 at most)")
        spec.persistent = fields["persistent"]
        if "size" in fields:
            spec.size_mib = parse_size_mib(fields["size"])
    else:
        if "size" in fields:
            raise NodeError(f"--volume {text!r}: size= applies to persistent volumes only")
        source = Path(fields["source"]).expanduser()
        if not source.exists():
            raise NodeError(f"--volume {text!r}: {source} does not exist")
        spec.source = source.resolve()
    return spec


def parse_env(items: list[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise NodeError(f"--env {item!r}: expected KEY=VALUE with KEY a variable name")
        variables[key] = value
    return variables


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


# --- machines ---


class Machine(Protocol):
    """What runs the init: the supervisor talks to it on `uds_path` (Firecracker's layout)."""

    uds_path: Path
    client: SupervisorClient
    log_path: Path
    """The init's log (dev mode) or the VM's serial console (QEMU)."""

    async def start(self) -> dict:
        """Boot; return the ready signal. Host services must already listen on `<uds>_53`."""

    async def configure(self, config: dict) -> dict:
        """Send the configuration; raise ConfigurationRejected when the program cannot start."""

    async def wait(self) -> int | None:
        """Return when the machine has died on its own (its exit status)."""

    async def stop(self) -> None:
        """Halt through the protocol, then make sure nothing is left (kill if needed)."""

    async def kill(self) -> None:
        """Stop at once, without the protocol (a second Ctrl-C)."""


class DevMachine:
    """The init as a local process (`DevInit`): no VM, no system duties.

    The init's private root stands for the VM's filesystem: volumes are made visible
    at `<root>/<mount>` (symlinks to a directory, an unpacked squashfs image, or the
    persistent volume's directory in the state directory), and squashfs code is
    unpacked at `<root>/opt/code`. Programs see absolute paths of the host, so
    `--env` values naming a volume's mount point are rewritten to `<root>/<mount>`.
    """

    def __init__(self, run_dir: Path, log_path: Path):
        from aleph_runtime.host.dev_init import DevInit

        self.run_dir = run_dir
        self.log_path = log_path
        self.root = run_dir / "root"
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        # The init runs in a session of its own, as a VM would be: Ctrl-C in a terminal
        # reaches only `aleph-runtime`, which halts the init through the protocol.
        # (`setsid` execs in place: the process is still the init, its PID DevInit's.)
        setsid = shutil.which("setsid")
        python, flags = (setsid, ("--", sys.executable, "-OO")) if setsid else (sys.executable, ("-OO",))
        self.init = DevInit(run_dir, python=python, python_flags=flags, root=self.root,
                            stdout=self._log, stderr=self._log)  # fmt: skip
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


class QemuMachine:
    """The runtime image in QEMU (host/qemu.py), drives in the order the config names them."""

    def __init__(self, run_dir: Path, log_path: Path, drives: list, memory_mb: int, vcpus: int):
        try:
            from aleph_runtime.host.qemu import Network, QemuVM, find_images
        except ImportError:
            raise SetupError(
                "--mode vm needs host/qemu.py (QEMU with our vsock backend), which this checkout does not have "
                "yet: use --mode dev"
            ) from None
        if shutil.which("qemu-system-x86_64") is None:
            raise SetupError("qemu-system-x86_64 is not installed (Debian's qemu-system-x86; scripts/setup.sh)")
        try:
            images = find_images()
        except Exception as error:  # noqa: BLE001 - a build failure, reported as such
            raise SetupError(f"could not build or find the runtime image and test kernel: {error}") from None
        if images is None:
            raise SetupError(
                "the runtime image and kernel are not available (host/image.py is missing and "
                "ALEPH_KERNEL/ALEPH_INITRAMFS/ALEPH_ROOTFS are not set): use --mode dev"
            )
        kernel, initramfs, rootfs = images
        self.log_path = log_path
        self.vm = QemuVM(
            kernel, initramfs, rootfs, drives, memory_mb=memory_mb, vcpus=vcpus,
            network=Network(ip=VM_IP, route=VM_ROUTE), workdir=run_dir / "vm", console_to=log_path,
        )  # fmt: skip
        self.uds_path = self.vm.uds_path
        self.client = self.vm.client

    @staticmethod
    def drive(path: Path, read_only: bool):
        from aleph_runtime.host.qemu import Drive

        return Drive(path, read_only=read_only)

    async def start(self) -> dict:
        return await self.vm.start(timeout=300)

    async def configure(self, config: dict) -> dict:
        return await self.vm.client.configure(config)

    async def wait(self) -> int | None:
        while self.vm.process is None:
            await asyncio.sleep(0.1)
        return await self.vm.process.wait()

    async def kill(self) -> None:
        await self.vm.kill()

    async def stop(self) -> None:
        if self.vm.process is not None and self.vm.process.returncode is None:
            await self.vm.stop()
        else:
            await self.vm.kill()


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
            elif _is_squashfs(volume.source):
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
        self.progress("finding the runtime image and kernel (built through their caches when missing)")
        machine = QemuMachine(self.run_dir, self.log_path, [], self.options.memory_mb, self.options.vcpus)
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
        from aleph_runtime.host.guest_api import DEFAULT_API_SERVER
        from aleph_runtime.host.services import HostServices

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
        await self.machine.configure(self.config)
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

