"""Volumes on real loop devices, mounted by the guest code as PID 1 of private namespaces."""

from __future__ import annotations

import json

import pytest

from tests.integration.nsguest import (
    guest_env,
    host_file_snapshot,
    make_ext4,
    make_squashfs,
    run_python,
)
from tests.sandbox_tools import read_from_image

pytestmark = pytest.mark.root

SCRIPT = r"""
import json, os, sys
from aleph_runtime.guest.config import Volume, ConfigError
from aleph_runtime.guest.volumes import mount_volumes, unmount_volumes, detect_filesystem
volumes = [Volume(**v) for v in json.loads(sys.argv[1] if len(sys.argv) > 1 else %r)]
report = {"detected": {v.device: detect_filesystem("/dev/" + v.device) for v in volumes if os.path.exists("/dev/" + v.device)}}
try:
    mounted = mount_volumes(volumes)
except ConfigError as error:
    report["error"] = str(error)
    report["mounts"] = open("/proc/mounts").read()
    print(json.dumps(report)); sys.exit(0)
report["mounts"] = open("/proc/mounts").read()
report["lib"] = open("/opt/venv/lib.py").read()
try:
    open("/opt/venv/new", "w")
except OSError as error:
    report["ro_errno"] = error.errno
with open("/mnt/store/value", "w") as f:
    f.write("written before halt")
keep_open = open("/mnt/store/busy", "w") if os.environ.get("KEEP_OPEN") else None
if keep_open:
    keep_open.write("still open at halt"); keep_open.flush()
unmount_volumes(mounted)
report["after"] = open("/proc/mounts").read()
print(json.dumps(report))
"""


@pytest.fixture
def volume_images(tmp_path):
    squash = make_squashfs(tmp_path / "venv.squashfs", {"lib.py": b"VALUE = 42\n"})
    ext4 = make_ext4(tmp_path / "store.ext4", {"existing": b"from the host"})
    return squash, ext4


VOLUMES = [
    {"mount": "/opt/venv", "device": "vdc", "read_only": True},
    {"mount": "/mnt/store", "device": "vdd", "read_only": False},
]


def test_squashfs_and_ext4_mounted_and_writes_survive_unmount(volume_images):
    squash, ext4 = volume_images
    before = host_file_snapshot()
    result = run_python(SCRIPT % json.dumps(VOLUMES), volumes={"vdc": squash, "vdd": ext4})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["detected"] == {"vdc": "squashfs", "vdd": "ext4"}
    assert "/dev/vdc /opt/venv squashfs ro" in report["mounts"]
    assert "/dev/vdd /mnt/store ext4 rw" in report["mounts"]
    assert report["lib"] == "VALUE = 42\n"
    assert report["ro_errno"] == 30  # EROFS
    assert "/opt/venv" not in report["after"] and "/mnt/store" not in report["after"]
    assert read_from_image(ext4, "/value") == b"written before halt"
    assert read_from_image(ext4, "/existing") == b"from the host"
    assert host_file_snapshot() == before


def test_busy_volume_is_still_flushed(volume_images):
    squash, ext4 = volume_images
    result = run_python(
        SCRIPT % json.dumps(VOLUMES),
        volumes={"vdc": squash, "vdd": ext4},
        env={**guest_env(), "KEEP_OPEN": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "/mnt/store" not in json.loads(result.stdout)["after"]
    assert read_from_image(ext4, "/busy") == b"still open at halt"
    assert read_from_image(ext4, "/value") == b"written before halt"


def test_missing_device_is_a_config_error_naming_the_volume(volume_images):
    squash, _ = volume_images
    volumes = [*VOLUMES[:1], {"mount": "/mnt/missing", "device": "vdz", "read_only": False}]
    result = run_python(SCRIPT % json.dumps(volumes), volumes={"vdc": squash})
    report = json.loads(result.stdout)
    assert "/mnt/missing" in report["error"] and "vdz" in report["error"]
    # What was mounted before the failure is unmounted again.
    assert "/opt/venv" not in report["mounts"]


def test_unmountable_device_is_a_config_error(tmp_path, volume_images):
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"\0" * (1 << 20))
    volumes = [{"mount": "/mnt/garbage", "device": "vdc", "read_only": False}]
    result = run_python(SCRIPT % json.dumps(volumes), volumes={"vdc": garbage})
    report = json.loads(result.stdout)
    assert "/mnt/garbage" in report["error"] and "no known filesystem" in report["error"]


PREMOUNTED = r"""
import json, os, subprocess
from aleph_runtime.guest.config import Volume
from aleph_runtime.guest.volumes import mount_volumes
# As dev mode's container has it: no block device, the host bound the directory in place
# (a space in the name: mountinfo escapes it).
os.makedirs("/mnt/bound dir", exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "bound", "/mnt/bound dir"], check=True)
mounted = mount_volumes([Volume(mount="/mnt/bound dir", device="vdx", read_only=False)])
print(json.dumps([(m.mount_point, m.fstype) for m in mounted]))
"""


def test_a_volume_already_mounted_without_its_device_is_taken_as_is():
    result = run_python(PREMOUNTED)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [["/mnt/bound dir", "bind"]]
