"""PID 1's orphan reaper, on real child processes of this test."""

from __future__ import annotations

import os
import subprocess
import time

from aleph_runtime.guest import linux


def exited_child(code: int) -> subprocess.Popen:
    child = subprocess.Popen(["sh", "-c", f"exit {code}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a zombie once it has exited
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            return child
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


def test_a_young_zombie_is_left_to_its_owner_and_an_old_one_reaped():
    reaper = linux.OrphanReaper(grace=10)
    owned = exited_child(5)
    assert reaper.sweep(now=100.0) == []
    assert owned.pid in reaper.first_seen
    assert owned.wait() == 5  # its owner still gets its status
    orphan = exited_child(3)
    assert reaper.sweep(now=200.0) == []  # first seen now
    assert reaper.sweep(now=209.0) == []
    assert reaper.sweep(now=210.0) == [(orphan.pid, 3 << 8)]
    assert reaper.first_seen == {}


def test_managed_children_are_never_reaped():
    reaper = linux.OrphanReaper(grace=0)
    child = exited_child(4)
    linux.MANAGED_CHILDREN.add(child.pid)
    try:
        assert reaper.sweep(now=1.0) == []
        assert child.wait() == 4
    finally:
        linux.MANAGED_CHILDREN.discard(child.pid)


def test_no_zombie_costs_one_peek_and_forgets_the_past():
    reaper = linux.OrphanReaper()
    reaper.first_seen[123456789] = 0.0
    assert reaper.sweep(now=1.0) == []
    assert reaper.first_seen == {}
