"""PID 1's orphan reaper in a real init, PID 1 of private namespaces: the in-process ASGI
program's own children keep their exit status however long they wait as zombies, and a
true orphan (a grandchild whose parent died) is still reaped.

The grace is a setting (ALEPH_ORPHAN_GRACE, 1 s here): the test waits until the orphan
is reaped, which proves the program's children, zombies since before it, are past the
grace too, whatever it is (10 s in an init without the setting)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from aleph_runtime.host.machines.sandbox import Sandbox, SandboxMachine
from aleph_runtime.host.program import program_config
from tests.integration.nsguest import INIT1, REPOSITORY, guest_env

pytestmark = pytest.mark.root

APP = b"""
import json, multiprocessing, os, subprocess

children = {}


def state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


async def app(scope, receive, send):
    await receive()
    if scope["path"] == "/start":
        children["popen"] = subprocess.Popen(["sh", "-c", "exit 3"])
        children["process"] = multiprocessing.Process(target=os._exit, args=(5,))
        children["process"].start()
        # The shell exits at once, before its background child: that child is an orphan.
        command = "sh -c 'sleep 0.3; exit 4' >/dev/null 2>&1 & echo $!"
        children["orphan"] = int(subprocess.run(["sh", "-c", command], capture_output=True).stdout)
        body = {"init": os.getpid(), "orphan": children["orphan"]}
    elif scope["path"] == "/states":
        body = {
            "popen": state(children["popen"].pid),
            "process": state(children["process"].pid),
            "orphan": state(children["orphan"]),
        }
    else:
        children["process"].join(5)
        body = {
            "popen": children["popen"].wait(),
            "process": children["process"].exitcode,
            "alive": children["process"].is_alive(),
        }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
"""


async def get(machine: SandboxMachine, path: str) -> dict:
    answer = await machine.client.http("GET", path)
    assert "traceback" not in answer, answer["traceback"]
    return json.loads(answer["body"]["body"])


async def test_pid1_reaps_a_true_orphan_and_leaves_the_programs_children_to_it(tmp_path):
    console = tmp_path / "console.log"
    with console.open("wb") as console_file:
        box = Sandbox(
            [sys.executable, "-OO", str(INIT1)], env=guest_env(ALEPH_ORPHAN_GRACE="1"), binds=[REPOSITORY],
            stdout=console_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        machine = SandboxMachine(box)
        try:
            await machine.start(timeout=30)
            await machine.client.configure(program_config(APP, "main:app"))
            started = await get(machine, "/start")
            assert started["init"] == 1
            deadline = time.monotonic() + 40
            states = await get(machine, "/states")
            while states["orphan"] is not None:  # a zombie until PID 1 reaps it
                assert time.monotonic() < deadline, states
                await asyncio.sleep(0.2)
                states = await get(machine, "/states")
            # Zombies since before the orphan exited: past the grace as long as it is.
            assert states == {"popen": "Z", "process": "Z", "orphan": None}, states
            await asyncio.sleep(2.5)  # two more sweeps
            assert await get(machine, "/wait") == {"popen": 3, "process": 5, "alive": False}
        finally:
            await machine.kill()
    assert "Traceback" not in console.read_text(errors="replace")
