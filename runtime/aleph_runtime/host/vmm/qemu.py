"""Boot the runtime image in QEMU, with the vsock device served by our vhost-user backend.

A node boots the runtime squashfs in Firecracker; locally we boot the same image in
QEMU (TCG works everywhere) and present the same host side, so the supervisor client
drives both alike:

- the kernel: by default the node-like one (rootfs-build/build-node-kernel.sh) on QEMU's
  `microvm` machine, as a node boots Firecracker: virtio-mmio devices, no initramfs, the
  node's boot arguments; or Debian's kernel with its initramfs on `q35` (virtio-pci);
- the image as read-only /dev/vda, the code and volume drives as vdb, vdc, ... in the
  order given (fixed PCI slots, or the creation order of virtio-mmio devices, keep it);
- vsock: `vhost-user-vsock` on our `VsockBackend` (guest CID 3, the `<uds>` layout);
  it needs the guest RAM in a shared memfd, the machine's memory backend;
- network: QEMU user networking (no host privileges, restricted to the VM) on the
  subnet of the address the config will give the guest, the gateway being QEMU's host
  address, so the guest's static configuration just works;
- the serial console captured to a log, each line also stamped with the host's
  monotonic clock for boot timelines;
- teardown: `halt` through the protocol, then QEMU exits by itself (the guest reboots
  with `reboot=k`, and `-no-reboot` turns that into an exit); killed only after a
  timeout. Sockets are removed and no process survives `stop()`.

    async with QemuVM(kernel, None, rootfs, workdir=d) as vm:   # boots, waits for ready
        await vm.client.configure(config)
        await vm.client.http("GET", "/")
    # halted and gone
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aleph_runtime.host.children import die_with_parent
from aleph_runtime.host.machines.base import Machine
from aleph_runtime.host.supervisor import HaltResult
from aleph_runtime.host.vmm import image
from aleph_runtime.host.vmm.vsock_backend import VsockBackend

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
#: The boot arguments a node gives Firecracker, verbatim (aleph-vm
#: src/aleph/vm/hypervisors/firecracker/config.py, BootSource.args with the console on
#: and the root read-only).
NODE_BOOT_ARGS = (
    "console=ttyS0", "reboot=k", "panic=1", "pci=off", "ro", "nomodule",
    "swiotlb=noforce", "random.trust_cpu=on", "i8042.noaux", "i8042.nomux", "i8042.dumbkbd",
)  # fmt: skip
#: What booting the node kernel on QEMU's microvm adds to them: only `root=/dev/vda`,
#: which Firecracker appends itself for the drive marked is_root_device and QEMU does
#: not. (QEMU appends the `virtio_mmio.device=` entries itself; the kernel finds the
#: I/O APIC in the MP table the microvm firmware writes, so no `noapic` is needed.)
MICROVM_BOOT_ARGS = ("root=/dev/vda",)
#: The node kernel's full command line on microvm.
NODE_CMDLINE = NODE_BOOT_ARGS + MICROVM_BOOT_ARGS
#: The microvm machine, as close to Firecracker's as QEMU gets: the PIT and PIC that
#: Firecracker's KVM provides (the kernel calibrates its TSC against the PIT), and no
#: ACPI: the devices are announced on the command line, as Firecracker did before 1.8.
#: With ACPI (QEMU 7.2, TCG) this kernel finds no HPET or PM timer to calibrate the TSC
#: against and hangs there. The CMOS RTC is added by `QemuVM.command` (see RTC_IRQ).
MICROVM_MACHINE = "microvm,acpi=off,pit=on,pic=on"
#: Firecracker has no CMOS RTC; without one, QEMU answers the kernel's reads of its ports
#: with all ones ("update in progress") and three probes wait out a second each: 3 s of
#: every boot under TCG, seen in the console's gaps (Firecracker's unhandled port reads are
#: not all ones, and a node's guest does not wait there). So a VM gets an RTC, unless a
#: virtio device needs its IRQ: microvm gives its transports IRQs 12, 11, 10... in the
#: order the devices are created, and the RTC's is 8; a fifth device there would lose its
#: interrupt to the kernel's rtc driver (a vsock device on IRQ 8: "No such device").
RTC_IRQ = 8
FIRST_VIRTIO_IRQ = 12
#: `-cpu max` on microvm: RDRAND, which `random.trust_cpu=on` credits, so the kernel's
#: random pool is ready at once, as on a node; TCG's default CPU has none, and the pool
#: waits for timing jitter (ready at 4.9 s of uptime instead of 0 in a boot here).
MICROVM_CPU = "max"
#: Debian's kernel with its initramfs (q35): the node's arguments minus what it cannot
#: take (`pci=off`: q35's devices are PCI; `nomodule`: its initramfs loads the drivers as
#: modules), plus root=.
DEBIAN_CMDLINE = ("console=ttyS0", "reboot=k", "panic=1", "ro", "root=/dev/vda")
FIRST_DRIVE_SLOT = 0x10
VSOCK_SLOT = 0x05
NET_SLOT = 0x06


@dataclass
class Drive:
    path: str | os.PathLike
    read_only: bool = True


@dataclass
class Network:
    """The guest's addresses as the config gives them; QEMU's user network is built to match."""

    ip: str | None = None
    """IPv4, with or without a prefix length (the init assumes /24 without one)."""
    route: str | None = None
    ipv6: str | None = None
    """IPv6 with its prefix length."""
    ipv6_gateway: str | None = None

    def netdev(self, netdev_id: str = "net0") -> str:
        opts = [f"user,id={netdev_id}", "restrict=on"]
        if self.ip:
            iface = ipaddress.ip_interface(self.ip if "/" in self.ip else f"{self.ip}/24")
            net = iface.network
            host = ipaddress.ip_address(self.route) if self.route else next(net.hosts())
            hosts = list(net.hosts()) if net.num_addresses <= 65536 else list(net.hosts())[:1024]
            # slirp needs a DNS address and a DHCP range inside the subnet, apart from its
            # host address; we never use them (the init configures the address statically).
            free = [h for h in hosts if h not in (host, iface.ip)]
            if len(free) < 2:
                raise ValueError(f"{net} is too small for QEMU's user network")
            dns, dhcp = free[-1], free[len(free) // 2 - 1]
            opts += [f"net={net}", f"host={host}", f"dns={dns}", f"dhcpstart={dhcp}"]
        if self.ipv6:
            iface6 = ipaddress.ip_interface(self.ipv6)
            net6 = iface6.network
            if net6.prefixlen > 64:  # slirp only routes /64 or shorter
                net6 = ipaddress.ip_network(f"{iface6.ip}/64", strict=False)
            host6 = self.ipv6_gateway or str(next(net6.hosts()))
            opts += [f"ipv6-net={net6}", f"ipv6-host={host6}"]
        return ",".join(opts)


@dataclass
class ConsoleLine:
    host_time: float
    """Seconds since QEMU was started (host monotonic clock)."""
    text: str


class QemuVM(Machine):
    """One runtime VM in QEMU, its vsock backend and its console: a `Machine`."""

    def __init__(
        self,
        kernel: str | os.PathLike,
        initramfs: str | os.PathLike | None,
        rootfs: str | os.PathLike,
        drives: list[Drive] | tuple[Drive, ...] = (),
        *,
        memory_mb: int = 512,
        vcpus: int = 1,
        network: Network | None = None,
        init: str | None = None,
        cmdline: tuple[str, ...] | list[str] = (),
        workdir: str | os.PathLike | None = None,
        qemu_binary: str = QEMU_BINARY,
        console_to: str | os.PathLike | None = None,
        machine: str | None = None,
    ):
        self.kernel = Path(kernel)
        self.initramfs = Path(initramfs) if initramfs else None
        self.rootfs = Path(rootfs)
        self.drives = list(drives)
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.network = network
        self.init = init
        self.extra_cmdline = list(cmdline)
        self.qemu_binary = qemu_binary
        # The kernel decides: the node kernel (no initramfs, everything built in) boots on
        # microvm as on a node; Debian's loads virtio-pci from its initramfs and hangs on
        # microvm here (TSC calibration), hence q35 for it.
        if machine is None:
            machine = "q35" if self.initramfs else "microvm"
        if machine not in ("q35", "microvm"):
            raise ValueError(f"unknown machine {machine!r} (q35, microvm)")
        self.machine = machine
        self._own_workdir = workdir is None
        # Unix socket paths are limited to 107 bytes: keep the directory short.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-vm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.workdir / "v.sock")
        self.vhost_path = self.workdir / "vhost.sock"
        self.console_log = Path(console_to) if console_to else self.workdir / "console.log"
        self.backend = VsockBackend(self.vhost_path, self.uds_path)
        self.console: list[ConsoleLine] = []
        self._t0 = 0.0
        self._console_task: asyncio.Task | None = None
        self._stderr_task: asyncio.Task | None = None
        self._stderr = bytearray()

    # --- the command line ---

    def kernel_cmdline(self) -> str:
        if self.initramfs is not None:
            args = list(DEBIAN_CMDLINE)
        elif self.machine == "microvm":
            args = list(NODE_CMDLINE)
        else:
            # The node kernel on q35: its devices are on PCI.
            args = [arg for arg in NODE_BOOT_ARGS if arg != "pci=off"] + ["root=/dev/vda"]
        if self.init:
            args.append(f"init={self.init}")
        args += self.extra_cmdline
        return " ".join(args)

    def command(self) -> list[str]:
        mem = f"{self.memory_mb}M"
        mmio = self.machine == "microvm"
        # The rootfs, the other drives, vsock and the network card, IRQs counting down from 12.
        virtio_devices = 2 + len(self.drives) + (self.network is not None)
        rtc = "on" if FIRST_VIRTIO_IRQ - virtio_devices + 1 > RTC_IRQ else "off"
        machine = f"{MICROVM_MACHINE},rtc={rtc},memory-backend=mem" if mmio else "q35,memory-backend=mem"

        def device(kind: str, args: str, slot: int) -> str:
            # virtio-mmio devices have no PCI address; their order is their creation order.
            return f"{kind}-device,{args}" if mmio else f"{kind}-pci,{args},addr=0x{slot:x}"

        cmd = [
            self.qemu_binary,
            "-machine", machine,
            "-accel", "tcg",
            "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            *(["-cpu", MICROVM_CPU] if mmio else []),
            "-smp", str(self.vcpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
            "-kernel", str(self.kernel),
        ]  # fmt: skip
        if self.initramfs:
            cmd += ["-initrd", str(self.initramfs)]
        cmd += ["-append", self.kernel_cmdline()]
        for i, drive in enumerate([Drive(self.rootfs, True), *self.drives]):
            ro = ",readonly=on" if drive.read_only else ""
            cmd += [
                "-drive", f"id=vd{i},file={drive.path},format=raw,if=none,cache=unsafe{ro}",
                "-device", device("virtio-blk", f"drive=vd{i}", FIRST_DRIVE_SLOT + i),
            ]  # fmt: skip
        cmd += [
            "-chardev", f"socket,id=vsock,path={self.vhost_path}",
            "-device", device("vhost-user-vsock", "chardev=vsock", VSOCK_SLOT),
        ]  # fmt: skip
        if self.network is not None:
            cmd += [
                "-netdev", self.network.netdev("net0"),
                "-device", device("virtio-net", "netdev=net0", NET_SLOT),
            ]  # fmt: skip
        return cmd

    # --- lifecycle ---

    async def start(self, timeout: float = 120) -> dict:
        """Boot; return the init's ready signal (`Machine.start`, with a VM's patience)."""
        return await super().start(timeout)

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
    kernel: str | None = None, profile: str | None = None, compression: str | None = None
) -> tuple[Path, Path | None, Path]:
    """(kernel, initramfs or None, rootfs): from ALEPH_KERNEL and ALEPH_ROOTFS when both are
    set (ALEPH_INITRAMFS with them for a kernel that needs one), else built or found
    through the image caches (host/vmm/image.py): the node-like kernel (no initramfs) by
    default, Debian's kernel and initramfs for kernel="debian"; the `profile` image (lean
    by default) packed with `compression` (image.DEFAULT_COMPRESSION by default), its build's progress on stderr."""
    kernel = kernel or default_kernel()
    if kernel not in image.KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: one of {', '.join(image.KERNELS)}")
    path, initramfs, rootfs = (os.environ.get(k) for k in ("ALEPH_KERNEL", "ALEPH_INITRAMFS", "ALEPH_ROOTFS"))
    if path and rootfs and profile is None and compression is None:
        return Path(path), Path(initramfs) if initramfs else None, Path(rootfs)

    profile, compression = profile or "lean", compression or image.DEFAULT_COMPRESSION
    if kernel == "node":
        return image.ensure_node_kernel().vmlinux, None, image.ensure_rootfs(profile, compression)
    files = image.ensure_kernel()
    return files.vmlinuz, files.initramfs, image.ensure_rootfs(profile, compression)
