"""The namespace harness itself: private files, PID 1, and no leftovers after a stop."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aleph_runtime.host.machines.sandbox import Sandbox
from tests.integration.nsguest import host_file_snapshot, make_ext4

pytestmark = pytest.mark.root

WRITER = r"""
echo "nameserver 192.0.2.1" > /etc/resolv.conf
: > /etc/hosts
echo evil > /etc/hostname
hostname sandboxed
mkdir -p /root/.ssh /data /opt/new && echo key > /root/.ssh/authorized_keys && echo d > /data/f
echo pid=$$
ls /dev/vdc
sleep 30
"""


def _loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def test_writes_stay_private_and_stop_leaves_nothing(tmp_path):
    before = host_file_snapshot()
    hostname = os.uname().nodename
    opt_before = sorted(os.listdir("/opt"))
    image = make_ext4(tmp_path / "disk.ext4")
    box = Sandbox(["/bin/sh", "-c", WRITER], volumes={"vdc": image}, veth=True, stdout=subprocess.PIPE)
    box.start()
    try:
        assert box.process.stdout.readline() == b"pid=1\n"
        assert box.process.stdout.readline() == b"/dev/vdc\n"
        assert box.read_file("/etc/resolv.conf") == "nameserver 192.0.2.1\n"
        assert box.run(["hostname"]).stdout.strip() == "sandboxed"
        assert "eth0" in box.run(["ip", "-br", "link"]).stdout
        loop = box.loops[0].device
        veth = box.host_veth
        workdir = box.workdir
        assert loop in _loops()
    finally:
        box.stop(timeout=0.2)  # a shell as PID 1 of a namespace ignores SIGTERM: quick kill
    assert host_file_snapshot() == before
    assert os.uname().nodename == hostname
    assert sorted(os.listdir("/opt")) == opt_before
    assert loop not in _loops()
    assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
    assert not workdir.exists()


def test_pid1_that_ignores_sigterm_is_killed():
    box = Sandbox(
        ["/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"], stdout=subprocess.PIPE
    )
    box.start()
    assert box.process.stdout.readline() == b"up\n"
    started = time.monotonic()
    box.stop(timeout=0.5)
    assert box.returncode is not None
    assert time.monotonic() - started < 10


def test_workdir_is_shared_with_the_inside():
    box = Sandbox(["true"], stdout=subprocess.PIPE)
    box.command = ["/bin/sh", "-c", 'echo hello > "$1/sock/from-inside"; sleep 30', "sh", str(box.workdir)]
    box.start()
    try:
        deadline = time.monotonic() + 10
        target = box.workdir / "sock" / "from-inside"
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert target.read_text() == "hello\n"
    finally:
        box.stop(timeout=0)


ESCAPE = r"""
import os, sys
# The classic chroot escape: a chroot into a subdirectory, then '..' from outside it.
os.makedirs("/tmp/jail", exist_ok=True)
os.chroot("/tmp/jail")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
with open(sys.argv[1], "w") as marker:
    marker.write("escaped")
print("written")
"""


def test_a_chroot_escape_changes_no_file_of_the_machine():
    """pivot_root with the machine's root detached, not chroot: climbing out of a chroot
    lands in the sandbox's own overlay, whose writes stay private."""
    marker = Path(f"/var/tmp/aleph-escape-{secrets.token_hex(4)}")
    box = Sandbox([sys.executable, "-c", ESCAPE, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    box.start()
    try:
        stdout, stderr = box.process.communicate(timeout=60)
    finally:
        box.stop()
    try:
        assert stdout == b"written\n", stderr
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
