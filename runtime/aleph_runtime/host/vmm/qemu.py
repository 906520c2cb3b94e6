"""QEMU's command line for a runtime VM: the kernel and its boot arguments, the drives,
the vsock device and the user network, as close to a node's Firecracker as QEMU gets.

A node boots the runtime squashfs in Firecracker; locally the same image boots in QEMU
(TCG works everywhere), behind the same host side (machines/qemu.py runs it):

- the kernel: by default the node-like one (rootfs-build/build-node-kernel.sh) on QEMU's
  `microvm` machine, as a node boots Firecracker: virtio-mmio devices, no initramfs, the
  node's boot arguments; or Debian's kernel with its initramfs on `q35` (virtio-pci);
- the image as read-only /dev/vda, the code and volume drives as vdb, vdc, ... in the
  order given (fixed PCI slots, or the creation order of virtio-mmio devices, keep it);
- vsock: `vhost-user-vsock` on the socket of our `VsockBackend` (vsock_backend.py); it
  needs the guest RAM in a shared memfd, the machine's memory backend;
- network: QEMU user networking (no host privileges, restricted to the VM) on the
  subnet of the address the config will give the guest, the gateway being QEMU's host
  address, so the guest's static configuration just works; nothing reaches the guest
  from outside but `tcp_forwards` (`--debug`'s port, from the host's 127.0.0.1);
- the serial console on stdio, and `-no-reboot`: the guest's `reboot=k` becomes QEMU's exit.

    line = QemuCommandLine(kernel, None, rootfs, vhost_path, drives=[Drive(code)])
    subprocess.Popen(line.argv())
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

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
#: against and hangs there. The CMOS RTC is added by `QemuCommandLine.argv` (see RTC_IRQ).
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
class UserNetwork:
    """QEMU's user network (slirp), built to match the guest's addresses as the config gives them."""

    ip: str | None = None
    """IPv4, with or without a prefix length (the init assumes /24 without one)."""
    route: str | None = None
    ipv6: str | None = None
    """IPv6 with its prefix length."""
    ipv6_gateway: str | None = None
    tcp_forwards: tuple[int, ...] = ()
    """Ports of the host's 127.0.0.1 forwarded to the same port of the guest (`--debug`)."""

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
        # restrict=on keeps the guest from reaching out; hostfwd still lets the host in. The
        # guest's address is named: slirp's default is its DHCP range's first, unused here.
        guest = ipaddress.ip_interface(self.ip if "/" in self.ip else f"{self.ip}/24").ip if self.ip else ""
        opts += [f"hostfwd=tcp:127.0.0.1:{port}-{guest}:{port}" for port in self.tcp_forwards]
        return ",".join(opts)


@dataclass
class Drive:
    path: str | os.PathLike
    read_only: bool = True


@dataclass
class QemuCommandLine:
    """Everything QEMU is started with for one VM; `argv()` is the command."""

    kernel: Path
    initramfs: Path | None
    rootfs: Path
    vhost_path: Path
    """The vhost-user socket of the vsock backend."""
    drives: list[Drive] = field(default_factory=list)
    memory_mb: int = 512
    vcpus: int = 1
    network: UserNetwork | None = None
    init: str | None = None
    """Another init for the kernel (`init=`)."""
    cmdline: list[str] = field(default_factory=list)
    """More boot arguments."""
    qemu_binary: str = QEMU_BINARY
    machine: str | None = None
    """q35 or microvm; None: from the kernel (see __post_init__)."""

    def __post_init__(self) -> None:
        self.kernel = Path(self.kernel)
        self.initramfs = Path(self.initramfs) if self.initramfs else None
        self.rootfs = Path(self.rootfs)
        self.drives = list(self.drives)
        self.cmdline = list(self.cmdline)
        # The kernel decides: the node kernel (no initramfs, everything built in) boots on
        # microvm as on a node; Debian's loads virtio-pci from its initramfs and hangs on
        # microvm here (TSC calibration), hence q35 for it.
        if self.machine is None:
            self.machine = "q35" if self.initramfs else "microvm"
        if self.machine not in ("q35", "microvm"):
            raise ValueError(f"unknown machine {self.machine!r} (q35, microvm)")

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
        args += self.cmdline
        return " ".join(args)

    def argv(self) -> list[str]:
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
