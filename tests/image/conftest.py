"""Fixtures of the image tests: the runtime squashfs and both kernels, built through
their caches (a cold build takes minutes; later runs reuse it), and the image mounted
read-only from a loop device."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]


# Building the image (debootstrap, chroot) and loop-mounting it need root: the tests
# that use these fixtures are marked `root` (tests/conftest.py skips them otherwise).
@pytest.fixture(scope="session")
def rootfs() -> Path:
    return image.ensure_rootfs()


@pytest.fixture(scope="session")
def kernel() -> image.KernelFiles:
    return image.ensure_kernel()


@pytest.fixture(scope="session")
def node_kernel() -> image.NodeKernel:
    return image.ensure_node_kernel()


@pytest.fixture(scope="session")
def mounted_rootfs(rootfs: Path):
    """The image mounted read-only (squashfs on a loop device), as a node serves it."""
    mnt = Path(tempfile.mkdtemp(prefix="aleph-rootfs-"))
    subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(rootfs), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()
