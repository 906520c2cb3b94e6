"""Both kernels boot the runtime image under QEMU (TCG) far enough that the console shows
init0's log lines and init1's first: the node-like kernel as a node boots it (microvm,
virtio-mmio, no initramfs, the node's boot arguments), and Debian's kernel, whose
initramfs loads its modules, mounts /dev/vda read-only and switches root to our
/sbin/init. init0 then sets up its overlay root and mounts and execs init1."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image
from aleph_runtime.host.vmm.qemu import MICROVM_CPU, MICROVM_MACHINE, NODE_BOOT_ARGS, NODE_CMDLINE

pytestmark = [pytest.mark.image, pytest.mark.root]

BOOT_TIMEOUT = float(os.environ.get("ALEPH_TEST_BOOT_TIMEOUT", "180"))


def debian_command(kernel: image.KernelFiles, rootfs: Path) -> list[str]:
    return [
        "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "512M", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initramfs),
        "-append", image.KERNEL_CMDLINE + " quiet",
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-pci,drive=root",
    ]  # fmt: skip


def node_command(kernel: image.NodeKernel, rootfs: Path) -> list[str]:
    """As host/vmm/qemu.py boots it, without the vsock and network devices."""
    return [
        "qemu-system-x86_64", "-M", f"{MICROVM_MACHINE},rtc=on", "-cpu", MICROVM_CPU, "-accel", "tcg", "-m", "512M",
        "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel.vmlinux), "-append", " ".join(NODE_CMDLINE),
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip


def boot_until(
    cmd: list[str], pattern: str, timeout: float, then: str | None = None, grace: float = 0
) -> tuple[list[str], float]:
    """Boot, collect console lines until one matches `pattern` (and then, for at most
    `grace` more seconds, until one matches `then`); return them and the wall time to
    `pattern`."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    buf = b""
    found_at = None
    try:
        while time.monotonic() - start < (timeout if found_at is None else found_at + grace):
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").strip("\r")
                lines.append(line)
                if found_at is None and re.search(pattern, line):
                    found_at = time.monotonic() - start
                    if then is None:
                        return lines, found_at
                elif found_at is not None and then and re.search(then, line):
                    return lines, found_at
        if found_at is not None:
            return lines, found_at
        raise AssertionError(
            f"no console line matching {pattern!r} within {timeout} s:\n" + "\n".join(lines[-40:])
        )
    finally:
        proc.kill()
        proc.wait()


def check_init0(lines: list[str]) -> dict[str, float]:
    """init0 ran without error; the uptime of each stage's first stamped line."""
    text = "\n".join(lines)
    stamped = {}
    for line in lines:
        m = re.match(r"^(\d+\.\d+) (initramfs|init0): (.*)$", line)
        if m:
            stamped.setdefault(m.group(2), float(m.group(1)))
    assert "init0" in stamped, text
    assert "init0: started" in text
    assert "root is a tmpfs overlay over the image" in text, text
    assert "ERROR" not in text, text
    return stamped


def test_debian_kernel_boots_to_init0(kernel: image.KernelFiles, rootfs: Path):
    # Past init0, note when init1 logs its first line (not required: no vsock device here).
    lines, wall = boot_until(
        debian_command(kernel, rootfs), r"init0: exec python3", BOOT_TIMEOUT, then=r"init1 \w+:", grace=30
    )
    stamped = check_init0(lines)
    assert "initramfs" in stamped, "\n".join(lines)
    print("\n" + "\n".join(line for line in lines if re.match(r"^(\d+\.\d+ |\[ *\d+\.\d+\] init1)", line)))
    print(
        f"initramfs at {stamped['initramfs']:.2f} s, init0 at {stamped['init0']:.2f} s uptime; "
        f"{wall:.1f} s wall from QEMU's start to init0's exec of init1"
    )


def test_node_kernel_boots_to_init1_as_a_node_does(node_kernel: image.NodeKernel, runtime_rootfs: Path):
    """Each runtime's image: the console shows the node's command line, no initramfs, and
    init1 running (it then finds no vsock device here, which the e2e tests provide)."""
    lines, wall = boot_until(node_command(node_kernel, runtime_rootfs), r"init0: exec python3", BOOT_TIMEOUT,
                             then=r"init1 \w+:", grace=60)  # fmt: skip
    text = "\n".join(lines)
    stamped = check_init0(lines)
    command_line = next((line for line in lines if "Command line:" in line), "")
    assert command_line.split("Command line:", 1)[1].split()[: len(NODE_BOOT_ARGS)] == list(NODE_BOOT_ARGS), (
        text
    )
    assert "initramfs" not in text.lower() and "initrd" not in text.lower(), text
    assert "VFS: Mounted root (squashfs filesystem) readonly" in text, text
    assert re.search(r"init1 \w+:", text), text
    print(
        f"\ninit0 at {stamped['init0']:.2f} s uptime; {wall:.1f} s wall from QEMU's start to init0's exec of init1"
    )


def test_initramfs_is_reproducible(kernel: image.KernelFiles, tmp_path: Path):
    """Built again from the same inputs, the initramfs is the same bytes."""
    again = image.ensure_kernel(out=tmp_path / "kernel")
    assert again.initramfs.read_bytes() == kernel.initramfs.read_bytes()
    assert again.vmlinuz.read_bytes() == kernel.vmlinuz.read_bytes()
    assert again.modules == kernel.modules
    for needed in (
        "virtio_pci",
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "vmw_vsock_virtio_transport",
        "squashfs",
        "overlay",
        "loop",
    ):
        assert needed in kernel.modules
    assert (
        kernel.modules.index("vsock")
        < kernel.modules.index("vmw_vsock_virtio_transport_common")
        < kernel.modules.index("vmw_vsock_virtio_transport")
    )
