"""Shared by every test: the checkout's package on sys.path, the one "needs root" rule, the
fake aleph API (a plugin), a short directory and the runtime image and kernel."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "runtime"))

#: The `fake_api` fixture: a local server speaking the aleph API's JSON.
pytest_plugins = ["tests.fake_aleph_api"]


#: The one reason a `root`-marked test is skipped.
NEEDS_ROOT = "needs root (namespaces, loop devices, mounts, image builds); CI runs as root"


def images_given() -> bool:
    """The runtime image and kernel come from ALEPH_KERNEL/ALEPH_ROOTFS: nothing to build."""
    return all(os.environ.get(name) for name in ("ALEPH_KERNEL", "ALEPH_ROOTFS"))


def pytest_collection_modifyitems(config, items):
    """The one place that decides "needs root": tests marked `root`, and those that boot
    the `images` fixture when it has to build them, are skipped unless running as root."""
    for item in items:
        if "images" in item.fixturenames and not images_given():
            item.add_marker(pytest.mark.root)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NEEDS_ROOT)
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.fixture
def short_dir():
    """A short directory: Unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def images() -> tuple[Path, Path | None, Path]:
    """(kernel, initramfs or None, rootfs): ALEPH_KERNEL/ALEPH_ROOTFS (and ALEPH_INITRAMFS
    for a kernel that needs one), or built through the caches (minutes when cold): the
    node-like kernel unless ALEPH_VM_KERNEL=debian. A build that fails fails the test.
    Building needs root: pytest_collection_modifyitems marks its users `root` then."""
    from aleph_runtime.host.machines.qemu import find_images

    found = find_images()
    missing = [str(path) for path in found if path is not None and not Path(path).exists()]
    assert not missing, f"the runtime image or kernel is missing: {missing}"
    return found
