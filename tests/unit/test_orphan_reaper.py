"""PID 1's orphan reaper, on real processes: each scenario runs in a child Python that
is a subreaper (as PID 1 is everyone's), so a real orphan is re-parented to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

PRELUDE = """
import json, multiprocessing, os, subprocess, sys, time
from aleph_runtime.guest import linux

linux.set_child_subreaper()


def state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return None


def zombies(*pids):
    deadline = time.monotonic() + 10
    while any(state(pid) != b"Z" for pid in pids):
        assert time.monotonic() < deadline, [state(pid) for pid in pids]
        time.sleep(0.01)


def orphan(code):
    # The shell exits at once, before its background child (which it would reap had it
    # exited first): the child is re-parented to this subreaper.
    command = f"sh -c 'sleep 0.2; exit {code}' >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", command], capture_output=True)
    return int(out.stdout)


def exit_code(pid):
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return "stolen"
"""


def scenario(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(RUNTIME)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_programs_own_children_keep_their_status_and_a_true_orphan_is_reaped():
    """Issue 28: a zombie PID 1 had not forked itself was reaped after the grace even when
    the program's own Popen or multiprocessing child: Popen.wait() answered 0 for a child
    that exited 3, and Process.is_alive() stayed True."""
    outcome = scenario("""
        reaper = linux.OrphanReaper(grace=10)
        popen = subprocess.Popen(["sh", "-c", "exit 3"])
        process = multiprocessing.Process(target=os._exit, args=(5,))
        process.start()
        forked = os.fork()
        if forked == 0:
            os._exit(6)
        spawned = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], os.environ)
        lost = orphan(4)
        zombies(popen.pid, process.pid, forked, spawned, lost)
        reaped = reaper.sweep(now=100.0) + reaper.sweep(now=109.0)  # young: left alone
        reaped += reaper.sweep(now=110.0)  # past the grace
        process.join(5)
        print(json.dumps({
            "reaped": reaped, "orphan": lost, "popen": popen.wait(), "process": process.exitcode,
            "alive": process.is_alive(), "forked": exit_code(forked), "spawned": exit_code(spawned),
            "records": len(getattr(linux, "CREATED_CHILDREN", {})),
        }))
    """)
    assert outcome["reaped"] == [[outcome["orphan"], 4 << 8]]
    assert (outcome["popen"], outcome["process"], outcome["alive"]) == (3, 5, False)
    assert (outcome["forked"], outcome["spawned"]) == (6, 7)


def test_records_of_collected_children_are_forgotten():
    outcome = scenario("""
        reaper = linux.OrphanReaper(grace=0)
        children = [subprocess.Popen(["true"]) for _ in range(100)]
        codes = {child.wait() for child in children}
        recorded = len(linux.CREATED_CHILDREN)
        lost = orphan(9)  # a zombie, so the sweep reads /proc
        zombies(lost)
        reaped = reaper.sweep(now=1.0)
        print(json.dumps({"codes": sorted(codes), "recorded": recorded, "left": len(linux.CREATED_CHILDREN),
                          "reaped": reaped, "orphan": lost}))
    """)
    assert outcome["codes"] == [0] and outcome["recorded"] >= 100
    assert outcome["left"] == 0 and outcome["reaped"] == [[outcome["orphan"], 9 << 8]]


def test_a_child_created_outside_python_still_has_the_grace():
    """C code's fork() is not recorded: the grace is what protects its status then."""
    outcome = scenario("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        reaper = linux.OrphanReaper(grace=10)
        pid = libc.fork()
        if pid == 0:
            libc._exit(8)
        zombies(pid)
        young = reaper.sweep(now=100.0) + reaper.sweep(now=109.0)
        old = reaper.sweep(now=110.0)
        print(json.dumps({"young": young, "old": old, "pid": pid}))
    """)
    assert outcome["young"] == [] and outcome["old"] == [[outcome["pid"], 8 << 8]]


def test_managed_children_are_never_reaped():
    outcome = scenario("""
        import ctypes
        reaper = linux.OrphanReaper(grace=0)
        pid = ctypes.CDLL(None).fork()  # unrecorded: only MANAGED_CHILDREN protects it
        if pid == 0:
            ctypes.CDLL(None)._exit(4)
        linux.MANAGED_CHILDREN.add(pid)
        zombies(pid)
        print(json.dumps({"reaped": reaper.sweep(now=1.0), "code": exit_code(pid)}))
    """)
    assert outcome == {"reaped": [], "code": 4}


def test_no_zombie_costs_one_peek_and_forgets_the_past():
    outcome = scenario("""
        reaper = linux.OrphanReaper()
        reaper.first_seen[123456789] = 0.0
        print(json.dumps({"reaped": reaper.sweep(now=1.0), "seen": reaper.first_seen}))
    """)
    assert outcome == {"reaped": [], "seen": {}}
