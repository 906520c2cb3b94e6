"""The test kernel and initramfs boot the runtime image under QEMU (TCG) far enough
that the console shows init0's log lines: the initramfs loaded its modules, mounted
/dev/vda read-only and switched root to our /sbin/init, which set up its overlay root and
mounts and exec'd init1."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

pytestmark = [pytest.mark.image, pytest.mark.root]

BOOT_TIMEOUT = float(os.environ.get("ALEPH_TEST_BOOT_TIMEOUT", "180"))


def boot_until(
    kernel: image.KernelFiles, rootfs: Path, pattern: str, timeout: float, then: str | None = None, grace: float = 0
) -> tuple[list[str], float]:
    """Boot, collect console lines until one matches `pattern` (and then, for at most
    `grace` more seconds, until one matches `then`); return them and the wall time to
    `pattern`."""
    cmd = [
        "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "512M", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initramfs),
        "-append", image.KERNEL_CMDLINE + " quiet",
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-pci,drive=root",
    ]
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
        raise AssertionError(f"no console line matching {pattern!r} within {timeout} s:\n" + "\n".join(lines[-40:]))
    finally:
        proc.kill()
        proc.wait()


def test_boots_to_init0(kernel: image.KernelFiles, rootfs: Path):
    # Past init0, note when init1 logs its first line (not required: no vsock device here).
    lines, wall = boot_until(kernel, rootfs, r"init0: exec python3", BOOT_TIMEOUT, then=r"init1 \w+:", grace=30)
    text = "\n".join(lines)
    stamped = {}
    for line in lines:
        m = re.match(r"^(\d+\.\d+) (initramfs|init0): (.*)$", line)
        if m:
            stamped.setdefault(m.group(2), float(m.group(1)))
    assert "initramfs" in stamped and "init0" in stamped, text
    assert "init0: started" in text
    assert "root is a tmpfs overlay over the image" in text, text
    assert "ERROR" not in text, text
    print("\n" + "\n".join(line for line in lines if re.match(r"^(\d+\.\d+ |\[ *\d+\.\d+\] init1)", line)))
    print(f"initramfs at {stamped['initramfs']:.2f} s, init0 at {stamped['init0']:.2f} s uptime; "
          f"{wall:.1f} s wall from QEMU's start to init0's exec of init1")


def test_initramfs_is_reproducible(kernel: image.KernelFiles, tmp_path: Path):
    """Built again from the same inputs, the initramfs is the same bytes."""
    again = image.ensure_kernel(out=tmp_path / "kernel")
    assert again.initramfs.read_bytes() == kernel.initramfs.read_bytes()
    assert again.vmlinuz.read_bytes() == kernel.vmlinuz.read_bytes()
    assert again.modules == kernel.modules
    for needed in ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport",
                   "squashfs", "overlay", "loop"):
        assert needed in kernel.modules
    assert kernel.modules.index("vsock") < kernel.modules.index("vmw_vsock_virtio_transport_common") \
        < kernel.modules.index("vmw_vsock_virtio_transport")
