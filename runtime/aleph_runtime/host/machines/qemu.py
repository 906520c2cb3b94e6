"""The runtime image booted in QEMU, with the vsock device served by our vhost-user backend: a `Machine`.

QEMU's command line is vmm/qemu.py's (the kernel, the drives, the user network); this
module runs it: our `VsockBackend` (vmm/vsock_backend.py) presents Firecracker's
hybrid-vsock layout on `uds_path`, so the supervisor client drives the VM as a node's;
the serial console is captured to a log, each line also stamped with the host's
monotonic clock for boot timelines; teardown is `halt` through the protocol, then QEMU
exits by itself (the guest reboots with `reboot=k`, and `-no-reboot` turns that into an
exit), killed only after a timeout. Sockets are removed and no process survives `stop()`.
QEMU always emulates here (TCG): no KVM is asked for.

    async with QemuMachine(kernel, None, rootfs, workdir=d) as vm:   # boots, waits for ready
        await vm.client.configure(config)
        await vm.client.http("GET", "/")
    # halted and gone

`QemuMachine.for_node` is the local node's VM: the runtime image and kernel found (or
built) through their caches, QEMU's restricted user network on `VM_IP`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aleph_runtime.host.children import die_with_parent
from aleph_runtime.host.errors import SetupError
from aleph_runtime.host.machines.base import Machine
from aleph_runtime.host.supervisor import HaltResult
from aleph_runtime.host.vmm import image
from aleph_runtime.host.vmm.qemu import QEMU_BINARY, Drive, QemuCommandLine, UserNetwork
from aleph_runtime.host.vmm.vsock_backend import VsockBackend

log = logging.getLogger(__name__)

#: The guest network a node's VM gets (QEMU's user network, restricted: no traffic leaves it).
VM_IP, VM_ROUTE = "172.16.0.2", "172.16.0.1"
#: How long a program may take to start: the supervisor's 60 s, more under emulation (TCG).
CONFIGURE_TIMEOUT = 60
CONFIGURE_TIMEOUT_EMULATED = 300
#: How long a node's VM may take to boot under emulation.
NODE_READY_TIMEOUT = 300


@dataclass
class ConsoleLine:
    host_time: float
    """Seconds since QEMU was started (host monotonic clock)."""
    text: str


class QemuMachine(Machine):
    """One runtime VM in QEMU, its vsock backend and its console."""

    ready_timeout = 120
    # A VM first syncs its disks and powers off: longer than an init's exit.
    exit_grace = 10

    def __init__(
        self,
        kernel: str | os.PathLike,
        initramfs: str | os.PathLike | None,
        rootfs: str | os.PathLike,
        drives: list[Drive] | tuple[Drive, ...] = (),
        *,
        memory_mb: int = 512,
        vcpus: int = 1,
        network: UserNetwork | None = None,
        init: str | None = None,
        cmdline: tuple[str, ...] | list[str] = (),
        workdir: str | os.PathLike | None = None,
        qemu_binary: str = QEMU_BINARY,
        console_to: str | os.PathLike | None = None,
        machine: str | None = None,
        ready_timeout: float | None = None,
        configure_timeout: float | None = None,
    ):
        self._own_workdir = workdir is None
        # Unix socket paths are limited to 107 bytes: keep the directory short.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-vm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            self.workdir / "v.sock", ready_timeout=ready_timeout, configure_timeout=configure_timeout
        )
        self.vhost_path = self.workdir / "vhost.sock"
        self.qemu = QemuCommandLine(
            kernel, initramfs, rootfs, self.vhost_path, list(drives), memory_mb=memory_mb, vcpus=vcpus,
            network=network, init=init, cmdline=list(cmdline), qemu_binary=qemu_binary, machine=machine,
        )  # fmt: skip
        self._console_to = console_to
        self.console_log = Path(console_to) if console_to else self.workdir / "console.log"
        self.backend = VsockBackend(self.vhost_path, self.uds_path)
        self.console: list[ConsoleLine] = []
        self._t0 = 0.0
        self._console_task: asyncio.Task | None = None
        self._stderr_task: asyncio.Task | None = None
        self._stderr = bytearray()

    @classmethod
    def for_node(
        cls,
        run_dir: Path,
        log_path: Path,
        drives: list[Drive],
        memory_mb: int,
        vcpus: int,
        kernel: str | None = None,
        profile: str | None = None,
        compression: str | None = None,
        runtime: str | None = None,
    ) -> QemuMachine:
        """The local node's VM, drives in the order the config names them. `kernel`: "node"
        (the node-like kernel on microvm, the default) or "debian" (Debian's kernel and
        initramfs on q35), with the `runtime` and `profile` image packed with `compression`
        (see find_images). Its `renew` reuses the images: no cache check runs on the loop."""
        if shutil.which(QEMU_BINARY) is None:
            raise SetupError(f"{QEMU_BINARY} is not installed (Debian's qemu-system-x86; scripts/setup.sh)")
        try:
            images = find_images(kernel, profile, compression, runtime)
        except Exception as error:  # noqa: BLE001 - a build failure, reported as such
            raise SetupError(f"could not build or find the runtime image and kernel: {error}") from None
        return cls(
            *images, drives, memory_mb=memory_mb, vcpus=vcpus, network=UserNetwork(ip=VM_IP, route=VM_ROUTE),
            workdir=run_dir / "vm", console_to=log_path,
            # A node allows 60 s to start a program, with KVM; QEMU emulates here, many times slower.
            ready_timeout=NODE_READY_TIMEOUT, configure_timeout=CONFIGURE_TIMEOUT_EMULATED,
        )  # fmt: skip

    # --- what the node asks of it ---

    def renew(self) -> QemuMachine:
        """A new VM with the same images, drives and command line, for a restart (this one is stopped)."""
        line = self.qemu
        return QemuMachine(
            line.kernel, line.initramfs, line.rootfs, line.drives, memory_mb=line.memory_mb, vcpus=line.vcpus,
            network=line.network, init=line.init, cmdline=line.cmdline, qemu_binary=line.qemu_binary,
            machine=line.machine, workdir=None if self._own_workdir else self.workdir, console_to=self._console_to,
            ready_timeout=self.ready_timeout, configure_timeout=self.configure_timeout,
        )  # fmt: skip

    def describe_exit(self, status: int | None) -> str:
        return f"the VM powered off (status {status})"

    def boot_phases(self, ready: float) -> dict[str, float]:
        # Host times of init0's first and last console lines, from QEMU's start: its
        # last is the exec of init1, whose first line comes after the ready signal.
        marks: dict[str, float] = {}
        for line in self.console:
            if "init0:" in line.text:
                marks.setdefault("init0", line.host_time)
                marks["exec"] = line.host_time
        if "init0" not in marks:
            return {"booted": ready}
        return {
            "kernel": marks["init0"],
            "init0": marks["exec"] - marks["init0"],
            "init1 ready": ready - marks["exec"],
        }

    # --- the command line (vmm/qemu.py) ---

    @property
    def drives(self) -> list[Drive]:
        return self.qemu.drives

    @property
    def machine(self) -> str:
        """QEMU's machine: microvm or q35."""
        return self.qemu.machine

    def kernel_cmdline(self) -> str:
        return self.qemu.kernel_cmdline()

    def command(self) -> list[str]:
        return self.qemu.argv()

    # --- lifecycle ---

    async def _launch(self) -> None:
        await self.backend.start()
        self._t0 = time.monotonic()
        cmd = self.command()
        log.debug("starting %s", " ".join(cmd))
        self.process = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C reaches us, and we halt it properly;
            # but if we die without doing so, the kernel takes QEMU down with us.
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        self._console_task = asyncio.create_task(self._read_console())
        self._stderr_task = asyncio.create_task(self._read_stderr())

    def failure_detail(self) -> str:
        return f"QEMU: {self._stderr.decode(errors='replace').strip()}\n{self.console_tail()}"

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    async def _read_console(self) -> None:
        with open(self.console_log, "ab", buffering=0) as out:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    return
                out.write(line)
                self.console.append(
                    ConsoleLine(time.monotonic() - self._t0, line.decode(errors="replace").rstrip())
                )

    async def _read_stderr(self) -> None:
        while True:
            chunk = await self.process.stderr.read(4096)
            if not chunk:
                return
            self._stderr += chunk[: 65536 - len(self._stderr)]
            log.debug("qemu: %s", chunk.decode(errors="replace").rstrip())

    def console_text(self) -> str:
        return "\n".join(line.text for line in self.console)

    def console_tail(self, lines: int = 30) -> str:
        return "console:\n" + "\n".join(line.text for line in self.console[-lines:])

    async def stop(self, halt_timeout: float = 5, exit_timeout: float = 30) -> HaltResult | None:
        """Halt as the supervisor does; QEMU must then exit by itself, or it is killed."""
        return await super().stop(halt_timeout, exit_timeout)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            if await self.wait_exit(5) is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await self._cleanup()

    async def _cleanup(self) -> None:
        for task in (self._console_task, self._stderr_task):
            if task is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, 5)
        self._console_task = self._stderr_task = None
        await self.backend.close()
        for path in self.workdir.glob("v.sock*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._own_workdir:
            keep = os.environ.get("ALEPH_KEEP_VM_DIR")
            if not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)


def default_kernel() -> str:
    """ "node" (the node-like kernel), or what ALEPH_VM_KERNEL says ("node" or "debian")."""
    kind = os.environ.get("ALEPH_VM_KERNEL") or image.DEFAULT_KERNEL
    if kind not in image.KERNELS:
        raise ValueError(f"ALEPH_VM_KERNEL={kind!r}: one of {', '.join(image.KERNELS)}")
    return kind


def find_images(
    kernel: str | None = None,
    profile: str | None = None,
    compression: str | None = None,
    runtime: str | None = None,
) -> tuple[Path, Path | None, Path]:
    """(kernel, initramfs or None, rootfs): from ALEPH_KERNEL and ALEPH_ROOTFS when both are
    set (ALEPH_INITRAMFS with them for a kernel that needs one) and no image is chosen,
    else built or found through the image caches (host/vmm/image.py): the node-like kernel
    (no initramfs) by default, Debian's kernel and initramfs for kernel="debian"; the
    `runtime` (image.DEFAULT_RUNTIME by default) and `profile` (lean by default) image
    packed with `compression` (image.DEFAULT_COMPRESSION by default), its build's progress
    on stderr. An unknown runtime raises ValueError naming the known ones."""
    kernel = kernel or default_kernel()
    if kernel not in image.KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: one of {', '.join(image.KERNELS)}")
    path, initramfs, rootfs = (os.environ.get(k) for k in ("ALEPH_KERNEL", "ALEPH_INITRAMFS", "ALEPH_ROOTFS"))
    if runtime is not None:
        image.check_runtime(runtime)
    if path and rootfs and profile is None and compression is None and runtime is None:
        return Path(path), Path(initramfs) if initramfs else None, Path(rootfs)

    profile, compression = profile or "lean", compression or image.DEFAULT_COMPRESSION
    runtime = runtime or image.DEFAULT_RUNTIME
    if kernel == "node":
        return (
            image.ensure_node_kernel().vmlinux,
            None,
            image.ensure_rootfs(profile, compression, runtime=runtime),
        )
    files = image.ensure_kernel()
    return files.vmlinuz, files.initramfs, image.ensure_rootfs(profile, compression, runtime=runtime)
