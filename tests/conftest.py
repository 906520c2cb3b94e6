"""Shared by every test: the checkout's package on sys.path, the root/skip rules, the
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


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, loop devices, mounts); CI runs as root")
    for item in items:
        if "root" in item.keywords:
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
    node-like kernel unless ALEPH_VM_KERNEL=debian. A build that fails fails the test."""
    from aleph_runtime.host.machines.qemu import find_images
    from aleph_runtime.host.machines.sandbox import require_root

    if not all(os.environ.get(name) for name in ("ALEPH_KERNEL", "ALEPH_ROOTFS")):
        reason = require_root()
        if reason:
            pytest.skip(f"building the runtime image: {reason}")
    found = find_images()
    missing = [str(path) for path in found if path is not None and not Path(path).exists()]
    assert not missing, f"the runtime image or kernel is missing: {missing}"
    return found
