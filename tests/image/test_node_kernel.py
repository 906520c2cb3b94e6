"""The node-like kernel (rootfs-build/build-node-kernel.sh) is configured as a node's:
each option a program VM relies on, as aleph-vm's microvm config sets it, is in the
built .config; every line of our fragment survived Kconfig; the vmlinux has the PVH
entry QEMU's microvm boots it through."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

pytestmark = [pytest.mark.image]

FRAGMENT = image.BUILD_DIR / "node-kernel.config"

#: What a program VM needs from the kernel, as aleph-vm's
#: kernels/microvm-kernel-x86_64-6.1.config has it (None: not set).
REQUIRED = {
    # no loadable modules: a node passes `nomodule`, and ships no initramfs
    "CONFIG_MODULES": None,
    # virtio over MMIO (Firecracker has no PCI), devices from the command line
    "CONFIG_VIRTIO_MMIO": "y",
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "y",
    "CONFIG_VIRTIO_BLK": "y",
    "CONFIG_VIRTIO_NET": "y",
    # the supervisor's channel: vsock over virtio
    "CONFIG_VSOCKETS": "y",
    "CONFIG_VIRTIO_VSOCKETS": "y",
    # the runtime image and code volumes: squashfs with lz4 (the image's), zlib (gzip), xz, zstd
    "CONFIG_SQUASHFS": "y",
    "CONFIG_SQUASHFS_LZ4": "y",
    "CONFIG_SQUASHFS_ZLIB": "y",
    "CONFIG_SQUASHFS_XZ": "y",
    "CONFIG_SQUASHFS_ZSTD": "y",
    # init0's writable root, persistent volumes
    "CONFIG_OVERLAY_FS": "y",
    "CONFIG_EXT4_FS": "y",
    "CONFIG_TMPFS": "y",
    # no initramfs: the kernel mounts /dev itself
    "CONFIG_DEVTMPFS": "y",
    "CONFIG_DEVTMPFS_MOUNT": "y",
    # init0 mounts cgroup2; programs' runtimes use the controllers
    "CONFIG_CGROUPS": "y",
    "CONFIG_MEMCG": "y",
    "CONFIG_CGROUP_PIDS": "y",
    "CONFIG_CPUSETS": "y",
    # the config's ipv6 address
    "CONFIG_IPV6": "y",
    "CONFIG_UNIX": "y",
    "CONFIG_INET": "y",
    # the console a node reads
    "CONFIG_SERIAL_8250": "y",
    "CONFIG_SERIAL_8250_CONSOLE": "y",
    # QEMU's microvm enters the ELF vmlinux through its PVH note
    "CONFIG_PVH": "y",
}


def fragment_lines() -> dict[str, str | None]:
    wanted: dict[str, str | None] = {}
    for line in FRAGMENT.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, value = line.split("=", 1)
            wanted[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            wanted[line.split()[1]] = None
    return wanted


def test_the_fragment_asks_for_what_a_node_kernel_has():
    """The fragment itself names every required option (so the build fails if Kconfig drops one)."""
    wanted = fragment_lines()
    assert {name: wanted.get(name, "absent") for name in REQUIRED} == REQUIRED


def test_built_config_has_each_required_option(node_kernel: image.NodeKernel):
    config = node_kernel.config
    assert {name: config.get(name) for name in REQUIRED} == REQUIRED


def test_built_config_has_every_fragment_line(node_kernel: image.NodeKernel):
    config = node_kernel.config
    wanted = fragment_lines()
    assert len(wanted) > len(REQUIRED)
    assert {name: config.get(name) for name in wanted} == wanted


def pvh_entry(vmlinux: Path) -> int | None:
    """The 32-bit PVH entry point of an ELF64 vmlinux (Xen ELF note 18), or None."""
    data = vmlinux.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64 file"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        offset, end = p_offset, p_offset + p_filesz
        while offset + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", data, offset)
            name = data[offset + 12 : offset + 12 + namesz].rstrip(b"\0")
            desc_at = offset + 12 + (namesz + 3) // 4 * 4
            if name == b"Xen" and note_type == 18:
                return int.from_bytes(data[desc_at : desc_at + descsz], "little")
            offset = desc_at + (descsz + 3) // 4 * 4
    return None


def test_vmlinux_has_a_pvh_entry_point(node_kernel: image.NodeKernel):
    assert pvh_entry(node_kernel.vmlinux), "no PVH entry note: QEMU's microvm cannot boot this vmlinux"


def test_kernel_info_names_the_source(node_kernel: image.NodeKernel):
    info = node_kernel.info
    assert info["source"] == "linux-source-6.1" and info["release"].startswith("6.1.")
