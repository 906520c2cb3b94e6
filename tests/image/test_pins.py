"""The debian-12 runtime is the network's: its programs' libraries are the official
image's pins, and a pin that drifts fails here.

The official pins are copied below from aleph-vm's
runtimes/aleph-debian-12-python/create_disk_image.sh (aleph-im/aleph-vm at 6da21a3,
2026-08-07), whose `pip3 install --target /opt/aleph/libs` names them; its init0.sh puts
/opt/aleph/libs on PYTHONPATH. The file checks need nothing; the manifest's needs the
debian-12 image (root, built through the cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from aleph_runtime.host.vmm import image

BUILD = Path(__file__).resolve().parents[2] / "rootfs-build"

#: `pip3 install --target /opt/aleph/libs ...` in the official create_disk_image.sh.
OFFICIAL_PINS = ("aleph-sdk-python==2.0.5", "aleph-message~=1.0.5", "fastapi~=0.120.1", "protobuf==6.33.0")


def requirement_lines(path: Path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def locked(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock file (name==version lines)."""
    pins = {}
    for line in requirement_lines(path):
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    return pins


def drifted(versions: dict[str, str]) -> list[str]:
    """The official pins `versions` (canonical name -> version) does not satisfy."""
    wrong = []
    for pin in map(Requirement, OFFICIAL_PINS):
        version = versions.get(canonicalize_name(pin.name))
        if version is None or not pin.specifier.contains(version, prereleases=True):
            wrong.append(f"{pin} (have {version})")
    return wrong


def test_debian_12_top_level_requirements_are_the_official_pins():
    assert requirement_lines(BUILD / "requirements-debian-12.in") == list(OFFICIAL_PINS)


def test_debian_12_lock_satisfies_the_official_pins():
    assert drifted(locked(BUILD / "requirements-debian-12.txt")) == []


def test_the_drift_check_can_fail():
    versions = locked(BUILD / "requirements-debian-12.txt")
    assert drifted({**versions, "fastapi": "0.165.0"}) == ["fastapi~=0.120.1 (have 0.165.0)"]
    assert drifted({**versions, "aleph-sdk-python": "2.4.0"}) == ["aleph-sdk-python==2.0.5 (have 2.4.0)"]


def test_init_libraries_are_apart_from_the_programs():
    """Our init's own libraries (requirements-init-*.txt, /opt/aleph/init-libs) are not in
    the programs' locks, and the debian-12 one does not add what the network lacks to
    /opt/aleph/libs."""
    for runtime in image.RUNTIMES:
        ours = locked(BUILD / f"requirements-init-{runtime}.txt")
        assert "uvloop" in ours
        assert not set(ours) & set(locked(BUILD / f"requirements-{runtime}.txt")), runtime


@pytest.mark.image
@pytest.mark.root
def test_debian_12_image_manifest_keeps_the_official_pins(rootfs: Path):
    manifest = image.read_manifest(rootfs)
    assert manifest["runtime"] == "debian-12"
    versions = {canonicalize_name(name): version for name, version in manifest["python_packages"].items()}
    assert drifted(versions) == []
    assert versions == locked(BUILD / "requirements-debian-12.txt")
