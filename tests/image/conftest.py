"""Fixtures of the image tests: the runtime squashfs and both kernels, built through
their caches (a cold build takes minutes; later runs reuse it), and the image mounted
read-only from a loop device.

`rootfs` and `mounted_rootfs` are the default runtime's (debian-12). A module tests
every runtime by overriding them with `runtime_rootfs` / `runtime_mounted` over
RUNTIME_PARAMS: the debian-13 parameter carries the `debian13` marker, so only the tests
that need it build that image (`-m "not debian13"` leaves it out)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]

#: Every runtime, as pytest parameters; debian-13's marked (its image is a second build).
RUNTIME_PARAMS = [
    pytest.param(runtime, marks=[pytest.mark.debian13] if runtime == "debian-13" else [], id=runtime)
    for runtime in image.RUNTIMES
]


def pytest_configure(config):
    config.addinivalue_line("markers", "debian13: needs the debian-13 runtime image (a second image build)")


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


class RuntimeImages:
    """Each runtime's lean image, built (or found in the cache) and mounted on first use,
    unmounted at the end of the session."""

    def __init__(self) -> None:
        self.rootfs: dict[str, Path] = {}
        self.mounts: dict[str, Path] = {}

    def image(self, runtime: str) -> Path:
        if runtime not in self.rootfs:
            self.rootfs[runtime] = image.ensure_rootfs(runtime=runtime)
        return self.rootfs[runtime]

    def mounted(self, runtime: str) -> Path:
        if runtime not in self.mounts:
            squashfs = self.image(runtime)
            mnt = Path(tempfile.mkdtemp(prefix=f"aleph-rootfs-{runtime}-"))
            subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(squashfs), str(mnt)], check=True)
            self.mounts[runtime] = mnt
        return self.mounts[runtime]

    def close(self) -> None:
        for mnt in self.mounts.values():
            subprocess.run(["umount", "-l", str(mnt)], check=False)
            mnt.rmdir()


@pytest.fixture(scope="session")
def runtime_images():
    images = RuntimeImages()
    try:
        yield images
    finally:
        images.close()


@pytest.fixture(params=RUNTIME_PARAMS)
def runtime(request) -> str:
    """Each runtime in turn (a module's tests that take it run once per runtime)."""
    return request.param


@pytest.fixture
def runtime_rootfs(runtime_images: RuntimeImages, runtime: str) -> Path:
    return runtime_images.image(runtime)


@pytest.fixture
def runtime_mounted(runtime_images: RuntimeImages, runtime: str) -> Path:
    return runtime_images.mounted(runtime)
