"""What one start of the local node's machine needs: the machine, with the program's code
and volumes as drives (vm mode) or placed directories (dev mode), and the configuration
that names them.

    provision = Provision(options, state_dir, vm_hash, progress)
    machine = provision.machine(run_dir, log_path)   # packs, builds; QemuMachine or ContainerMachine
    config = provision.config(machine)               # the volumes as the machine has them
    ... after an edit: provision.repack(run_dir); config = provision.config(last_machine)

The code is the first drive (vdb) when it is a squashfs image, the volumes follow in the
order given (`volume_device`), as a node attaches them, then the packages volume at
/opt/packages: `--packages FILE`, or the one built (cached) from the program directory's
requirements.txt or pyproject.toml dependencies (node/packages.py), rebuilt by `repack`
when they changed. A directory's code is packed with its bytecode (program.py) when this
Python writes what the runtime's loads. With `--debug`, debugpy (installed once into the
cache) comes last, at /opt/aleph-debug (guest/debugger.py), and its port is forwarded from
the host's 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aleph_runtime.guest.debugger import DEBUG_PORT_VARIABLE, DEBUG_WAIT_VARIABLE, DEBUGPY_PATH
from aleph_runtime.host.container import rootfs
from aleph_runtime.host.container.network import NetworkSpec, host_resolvers
from aleph_runtime.host.container.spawn import missing_tool, plan
from aleph_runtime.host.errors import NodeError, SetupError
from aleph_runtime.host.machines.base import Machine
from aleph_runtime.host.machines.dev import REPOSITORY, ContainerMachine
from aleph_runtime.host.machines.qemu import VM_IP, VM_ROUTE, QemuMachine
from aleph_runtime.host.node.inference import Program, is_squashfs
from aleph_runtime.host.node.packages import (
    DEFAULT_RUNTIME,
    PACKAGES_MOUNT,
    RUNTIME_PYTHON,
    PackagesVolume,
    Requirements,
    cached_packages,
    find_requirements,
)
from aleph_runtime.host.node.volumes import VolumeSpec
from aleph_runtime.host.program import (
    bytecode_matches,
    program_config,
    squashfs_directory,
    tar_directory,
    zip_directory,
)
from aleph_runtime.host.vmm.image import DEFAULT_COMPRESSION, cache_dir
from aleph_runtime.host.vmm.qemu import Drive
from aleph_runtime.protocol import Encoding

Progress = Callable[[str], None]
#: debugpy for `--debug`, installed once into the cache with the image's Python ABI (3.11).
DEBUGPY_VERSION = "1.8.22"
#: With `--debug-wait` the configuration is answered once a debugger attaches: a day at most.
DEBUG_WAIT_CONFIGURE_TIMEOUT = 86400
#: How long the dev init may take to send its ready signal.
DEV_READY_TIMEOUT = 60


def default_state_dir() -> Path:
    if os.environ.get("ALEPH_RUNTIME_STATE"):
        return Path(os.environ["ALEPH_RUNTIME_STATE"])
    if os.geteuid() == 0:
        return Path("/var/lib/aleph-runtime")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aleph-runtime"


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
    #: The runtime image's runtime, profile and compression (None: debian-12, lean and lz4,
    #: or ALEPH_ROOTFS).
    runtime: str | None = None
    profile: str | None = None
    compression: str | None = None
    kernel: str | None = None
    """vm mode: "node" (the node-like kernel, default) or "debian"."""
    packages: Path | None = None
    """`--packages FILE`: a built packages volume; None: built from the program's requirements."""
    debug_port: int | None = None
    """`--debug`: debugpy in the program, this port forwarded from the host's 127.0.0.1."""
    debug_wait: bool = False
    """`--debug-wait`: the program starts once a debugger has attached."""


def volume_device(index: int) -> str:
    """The guest device of the `index`th drive after the root: vdb, vdc, ..."""
    return f"vd{chr(ord('b') + index)}"


class Provision:
    """The options made into a machine and its configuration, for every start of the node."""

    def __init__(self, options: NodeOptions, state_dir: Path, vm_hash: str, progress: Progress):
        self.options = options
        self.state_dir = state_dir
        self.vm_hash = vm_hash
        self.progress = progress
        self.volumes: list[dict] = []
        """The configuration's volumes, as the last `machine` attached them."""
        self.requirements: Requirements | None = None
        """The program's requirements its packages volume was built from (None: none, or --packages)."""
        self.packages_volume: PackagesVolume | None = None
        self.packages_origin = ""
        """Where the packages at /opt/packages came from, for the startup line."""
        self.bytecode = bytecode_matches(RUNTIME_PYTHON[options.runtime or DEFAULT_RUNTIME])
        """Whether a directory's code is packed with bytecode: this Python writes the runtime's."""
        self.image: Path | None = None
        """The runtime squashfs the last `machine` runs (dev mode: unpacked)."""

    def runtime_description(self) -> str:
        """`debian-13 (Python 3.13.5), the lean image`: which runtime runs the program, from
        the image's manifest (build-rootfs.sh writes it beside the image)."""
        if self.image is None:
            return "unknown"
        try:
            manifest = json.loads((self.image.parent / "manifest.json").read_text())
            runtime, python, profile = (manifest.get(k) for k in ("runtime", "python", "profile"))
        except (OSError, ValueError, AttributeError):
            return f"the image {self.image} (no manifest beside it)"
        return (f"{runtime or 'a runtime image from before runtimes'}"
                f"{f' (Python {python})' if isinstance(python, str) else ''}"
                f"{f', the {profile} image' if isinstance(profile, str) else ''}")  # fmt: skip

    def persistent_path(self, name: str) -> Path:
        return self.state_dir / "volumes" / name

    def machine(self, run_dir: Path, log_path: Path) -> Machine:
        """The machine for the mode, with the program's code and volumes attached."""
        if self.options.mode == "dev":
            return self.dev_machine(run_dir, log_path)
        return self.vm_machine(run_dir, log_path)

    def config(self, machine: Machine) -> dict:
        """The program's configuration for `machine` (its code packed now).

        A VM and a container get the VM's address and route (a container also this
        machine's resolvers as its DNS servers). A container's volumes are bound by the host where the
        configuration mounts them: the init finds them mounted.
        """
        program = self.options.program
        network: dict = {"ip": VM_IP, "route": VM_ROUTE}
        volumes = self.volumes
        if isinstance(machine, ContainerMachine) and machine.network is not None:
            network["dns_servers"] = host_resolvers()[0]
        return program_config(
            self._code(), program.entrypoint, encoding=program.encoding, interface=program.interface,
            vm_hash=self.vm_hash, volumes=volumes, variables=self._variables(machine.guest_path), **network,
        )  # fmt: skip

    def repack(self, run_dir: Path) -> None:
        """Read or pack the program's code again (after an edit): the next `config` sends it;
        the packages volume is rebuilt when the requirements changed."""
        program = self.options.program
        if self.requirements is not None and program.directory is not None:
            requirements = find_requirements(program.directory)
            if requirements is None or requirements.identity() != self.requirements.identity():
                self._install_packages(requirements, run_dir)
                if requirements is not None:
                    self.progress(f"packages at {self.packages_origin}")
        if program.directory is None and program.code is not None:
            program.code = program.source.read_bytes()  # a .py file, a zip or tar archive
        elif (
            program.encoding is Encoding.SQUASHFS
            and self.options.mode == "vm"
            and program.directory is not None
        ):
            squashfs_directory(program.directory, run_dir / "code.squashfs", bytecode=self.bytecode)
        elif program.encoding is Encoding.SQUASHFS and program.image is not None:
            raise NodeError("--watch cannot follow a squashfs image: restart the command after rebuilding it")

    # --- the code and the variables ---

    def _code(self) -> bytes | None:
        program = self.options.program
        if program.code is not None or program.directory is None or program.encoding is Encoding.SQUASHFS:
            return program.code
        began = time.monotonic()
        if program.encoding is Encoding.TAR:
            code = tar_directory(program.directory, bytecode=self.bytecode)
        else:
            code = zip_directory(program.directory, bytecode=self.bytecode)
        took = (time.monotonic() - began) * 1000
        with_bytecode = ", with bytecode" if self.bytecode else ""
        self.progress(
            f"packed {program.directory} as {program.encoding}{with_bytecode} ({len(code) / 1024:.0f} KiB, {took:.0f} ms)"
        )
        return code

    # --- the packages volume ---

    def _packages_source(self, run_dir: Path) -> Path | None:
        """The packages volume to mount at /opt/packages (a squashfs file), if any: --packages,
        else the one built from the program directory's requirements (cached)."""
        if any(volume.mount == PACKAGES_MOUNT for volume in self.options.volumes):
            if self.options.packages is not None:
                raise NodeError(f"--packages and --volume {PACKAGES_MOUNT}=...: give one of them")
            self.packages_origin = f"{PACKAGES_MOUNT}: the --volume given"
            return None
        if self.options.packages is not None:
            path = self.options.packages.expanduser().resolve()
            if not path.is_file() or not is_squashfs(path):
                raise NodeError(
                    f"--packages {self.options.packages}: not a squashfs image (aleph-runtime packages)"
                )
            self.packages_origin = f"{PACKAGES_MOUNT}: {path} (--packages)"
            return path
        program = self.options.program
        if program.directory is None:
            return None
        requirements = find_requirements(program.directory)
        if requirements is None:
            return None
        return self._install_packages(requirements, run_dir)

    def _install_packages(self, requirements: Requirements | None, run_dir: Path) -> Path | None:
        """Build (or take from the cache) the volume for `requirements`; put it where the
        machine finds it (run_dir/packages.squashfs, or run_dir/packages in dev mode)."""
        self.requirements = requirements
        drive = run_dir / "packages.squashfs"
        if requirements is None:
            # The machine's drives are fixed for this command: the last volume stays mounted.
            self.progress(
                f"the requirements are gone: {PACKAGES_MOUNT} keeps its packages until the command restarts"
            )
            return drive
        volume, cached = cached_packages(
            requirements, self.state_dir / "cache" / "packages", runtime=self.options.runtime or DEFAULT_RUNTIME,
            profile=self.options.profile, progress=self.progress,
        )  # fmt: skip
        for warning in volume.warnings:
            self.progress(f"packages: {warning}")
        partial = drive.with_name(drive.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            os.link(volume.path, partial)
        except OSError:
            shutil.copyfile(volume.path, partial)
        partial.replace(drive)
        if self.options.mode == "dev":
            # A directory per volume, `packages` the link to the current one: the running init
            # keeps what it mounted until it is replaced; the next start mounts the new one.
            unpacked = self._unsquash(drive, run_dir / f"packages-{volume.sha256[:12]}")
            link = run_dir / "packages.link"
            link.unlink(missing_ok=True)
            link.symlink_to(unpacked.name)
            link.replace(run_dir / "packages")
        self.packages_volume = volume
        how = "cached" if cached else "built"
        self.packages_origin = (
            f"{PACKAGES_MOUNT}: {len(volume.distributions)} distributions from {requirements.source} "
            f"({how}, {volume.size / 2**20:.1f} MiB, sha256 {volume.sha256[:12]})"
        )
        return drive

    def _variables(self, guest_path: Callable[[str], str]) -> dict[str, str] | None:
        """`--env` values naming a volume's mount point (or a path under it), where the program finds it."""
        variables = dict(self.options.env)
        if self.options.debug_port is not None:
            variables[DEBUG_PORT_VARIABLE] = str(self.options.debug_port)
            if self.options.debug_wait:
                variables[DEBUG_WAIT_VARIABLE] = "1"
        for key, value in self.options.env.items():
            for volume in self.options.volumes:
                if value == volume.mount or value.startswith(volume.mount + "/"):
                    variables[key] = guest_path(volume.mount) + value[len(volume.mount) :]
                    break
        return variables or None

    # --- dev mode: directories placed at the guest's paths ---

    def dev_machine(self, run_dir: Path, log_path: Path) -> ContainerMachine:
        """A container of the runtime image (host/container/), the code and volumes bound in."""
        if why := missing_tool():
            raise SetupError(why)
        ids, user_namespace, why_not = plan()
        profile = self.options.profile or "lean"
        image = self.image = rootfs.dev_image(profile, self.options.runtime, progress=self.progress)
        tree = rootfs.image_tree(image, ids, progress=self.progress)
        checkout = _checkout_to_bind(ids)
        if why_not is not None:
            self.progress(f"dev mode without a user namespace ({why_not}): root inside is the host's root, "
                          "with a bounded capability set")  # fmt: skip
        resolvers, on_loopback = host_resolvers()
        if not resolvers and on_loopback:
            self.progress(f"dev mode without DNS: this machine's resolver ({on_loopback[0]}) is on its loopback, "
                          "out of the container's reach; name one in /etc/resolv.conf that is not")  # fmt: skip
        self.progress(f"dev mode: a container of {self.runtime_description()}: {image}"
                      + (", the checkout's init bound over the image's" if checkout else ""))  # fmt: skip
        machine = ContainerMachine(
            run_dir, tree, ids=ids, user_namespace=user_namespace, log_path=log_path,
            memory_mb=self.options.memory_mb, vcpus=self.options.vcpus,
            network=NetworkSpec(ip=f"{VM_IP}/24", gateway=VM_ROUTE, tcp_forwards=self._forwards()),
            checkout=checkout, ready_timeout=DEV_READY_TIMEOUT, configure_timeout=self._configure_timeout(),
        )  # fmt: skip
        if self.options.debug_port is not None:
            machine.place(DEBUGPY_PATH, self.debugpy_directory(), read_only=True)
        program = self.options.program
        volumes: list[dict] = []
        if program.encoding is Encoding.SQUASHFS:
            machine.place("/opt/code", program.directory or self._unsquash(program.image), read_only=True)
            volumes.append({"mount": "/opt/code", "device": volume_device(len(volumes)), "read_only": True})
        for volume in self.options.volumes:
            if volume.persistent:
                target = self.persistent_path(volume.persistent)
                target.mkdir(parents=True, exist_ok=True)
                rootfs.give(target, ids)
            elif volume.source.is_dir():
                target = volume.source
            elif is_squashfs(volume.source):
                target = self._unsquash(volume.source)
            else:
                raise NodeError(f"--volume {volume.mount}: dev mode takes a directory or a squashfs image, "
                                f"not {volume.source}")  # fmt: skip
            machine.place(volume.mount, target, volume.read_only)
            volumes.append(
                {"mount": volume.mount, "device": volume_device(len(volumes)), "read_only": volume.read_only}
            )
            self.progress(f"volume {volume.mount}: {target}")
        if self._packages_source(run_dir) is not None:
            if self.requirements is not None:
                target = run_dir / "packages"  # a link `repack` points at the rebuilt volume
            else:
                target = self._unsquash(self.options.packages.expanduser().resolve())
            machine.place(PACKAGES_MOUNT, target, True)
            volumes.append(
                {"mount": PACKAGES_MOUNT, "device": volume_device(len(volumes)), "read_only": True}
            )
        if self.packages_origin:
            self.progress(f"packages at {self.packages_origin}")
        self.volumes = volumes
        return machine

    def _unsquash(self, image: Path, target: Path | None = None) -> Path:
        """A squashfs image unpacked once into the state directory's cache (dev mode), or into
        `target` (named after the image's content: an existing one is kept)."""
        if target is None:
            info = image.stat()
            key = hashlib.sha256(f"{image}:{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()[:16]
            target = self.state_dir / "cache" / "unsquashed" / key
        if not target.is_dir():
            self.progress(f"unpacking {image} (dev mode cannot mount it)")
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            error = rootfs.unsquash(image, partial)
            if error is not None:
                shutil.rmtree(partial, ignore_errors=True)
                raise NodeError(f"unsquashfs {image} failed: {error}")
            partial.rename(target)
        return target

    # --- vm mode: drives ---

    def vm_machine(self, run_dir: Path, log_path: Path) -> QemuMachine:
        program = self.options.program
        # The machine first: a missing QEMU or image is reported before anything is packed.
        image = (f"the {self.options.runtime or DEFAULT_RUNTIME} {self.options.profile or 'lean'} runtime image "
                 f"({self.options.compression or DEFAULT_COMPRESSION})")  # fmt: skip
        chosen = any(
            o is not None for o in (self.options.runtime, self.options.profile, self.options.compression)
        )
        if not chosen and os.environ.get("ALEPH_ROOTFS"):
            image = "the runtime image (ALEPH_ROOTFS)"
        self.progress(f"finding {image} and the kernel (built through their caches when missing)")
        machine = QemuMachine.for_node(
            run_dir, log_path, [], self.options.memory_mb, self.options.vcpus,
            kernel=self.options.kernel, profile=self.options.profile, compression=self.options.compression,
            runtime=self.options.runtime,
        )  # fmt: skip
        self.image = Path(machine.qemu.rootfs)
        if self.options.debug_port is not None:
            machine.qemu.network.tcp_forwards = self._forwards()
            if (timeout := self._configure_timeout()) is not None:
                machine.configure_timeout = timeout
        volumes: list[dict] = []

        def add(path: Path, mount: str, read_only: bool) -> None:
            machine.drives.append(Drive(path, read_only=read_only))
            volumes.append({"mount": mount, "device": volume_device(len(volumes)), "read_only": read_only})

        if program.encoding is Encoding.SQUASHFS:
            code_image = program.image
            if code_image is None:
                self.progress(f"packing {program.directory} as squashfs")
                code_image = squashfs_directory(
                    program.directory, run_dir / "code.squashfs", bytecode=self.bytecode
                )
            add(code_image, "/opt/code", True)
        for i, volume in enumerate(self.options.volumes):
            if volume.persistent:
                add(self.persistent_image(volume), volume.mount, False)
            elif volume.source.is_dir():
                self.progress(f"packing {volume.source} as squashfs for {volume.mount}")
                add(squashfs_directory(volume.source, run_dir / f"volume{i}.squashfs"), volume.mount, True)
            else:
                add(volume.source, volume.mount, True)
        packages = self._packages_source(run_dir)
        if packages is not None:
            add(packages, PACKAGES_MOUNT, True)
        if self.packages_origin:
            self.progress(f"packages at {self.packages_origin}")
        if self.options.debug_port is not None:
            # Last, and not in the configuration's volumes' way: the program's drives keep their names.
            add(self.debugpy_image(), DEBUGPY_PATH, True)
        self.volumes = volumes
        return machine

    # --- --debug: debugpy, brought only when asked ---

    def _forwards(self) -> tuple[int, ...]:
        return () if self.options.debug_port is None else (self.options.debug_port,)

    def _configure_timeout(self) -> float | None:
        return DEBUG_WAIT_CONFIGURE_TIMEOUT if self.options.debug_wait else None

    def debugpy_directory(self) -> Path:
        """debugpy (DEBUGPY_VERSION) installed once under the cache, for the image's Python
        3.11 on x86_64 whatever this machine's Python is, byte-compiled (it is mounted
        read-only at DEBUGPY_PATH, where the guest could not write its bytecode: under
        emulation, compiling pydevd at each start cost seconds)."""
        target = cache_dir() / "debugpy" / f"{DEBUGPY_VERSION}-cp311"
        if (target / "debugpy" / "__init__.py").is_file():
            return target
        self.progress(f"installing debugpy {DEBUGPY_VERSION} for --debug into {target}")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--target", str(partial), "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
            "--platform", "manylinux_2_34_x86_64", f"debugpy=={DEBUGPY_VERSION}",
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(partial, ignore_errors=True)
            last = (error.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise SetupError(
                f"debugpy {DEBUGPY_VERSION} could not be installed for --debug: {last}"
            ) from None
        if sys.version_info[:2] == (3, 11):  # the image's bytecode: the same magic number
            import compileall

            # Level 2 for the init (python -OO), 0 for debugpy's adapter, a plain python3.
            compileall.compile_dir(partial, quiet=2, optimize=[0, 2], workers=0)
        for path in [partial, *partial.rglob("*")]:  # readable by the container's root, whoever it is
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        partial.rename(target)
        return target

    def debugpy_image(self) -> Path:
        """debugpy_directory as a squashfs image (a VM's drive), packed once."""
        directory = self.debugpy_directory()
        packed = directory.with_name(directory.name + ".squashfs")
        if not packed.is_file():
            partial = packed.with_name(packed.name + ".partial")
            squashfs_directory(directory, partial)
            partial.rename(packed)
        return packed

    def persistent_image(self, volume: VolumeSpec) -> Path:
        """The persistent volume's ext4 image, made once (seeded from its dev-mode directory)."""
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


def _checkout_to_bind(ids: rootfs.IdMap) -> bool:
    """Whether dev mode runs the checkout's init (a checkout, readable by the container's
    root, with bytecode at -OO for the image's Python 3.11) rather than the image's copy."""
    init1 = REPOSITORY / "init" / "init1.py"
    guest = REPOSITORY / "runtime" / "aleph_runtime" / "guest"
    if not init1.is_file() or not guest.is_dir():
        return False  # an installed package: the image's init it is
    if (
        os.geteuid() == 0
        and ids.uid != 0
        and not all(p.stat().st_mode & 0o004 for p in (init1, guest / "main.py"))
    ):
        return False  # not readable by others: the container's root is someone else
    if sys.version_info[:2] == (3, 11):
        # The image's Python reads the checkout's bytecode when it is there and fresh: a
        # start that compiles nothing (written by this Python, the same 3.11 magic number).
        import compileall

        for path in (
            REPOSITORY / "init",
            REPOSITORY / "runtime" / "aleph_runtime",
            REPOSITORY / "runtime" / "compat",
        ):
            compileall.compile_dir(path, quiet=2, optimize=2, rx=re.compile(r"/host/"))  # fmt: skip
    return True
