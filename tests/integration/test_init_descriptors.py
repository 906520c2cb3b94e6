"""Descriptors 0-2 of a real dev-mode init (guest/stdio.py, guest/sockets.py): no host
connection lands on one a program has closed, and the ones the init fills when it
starts without them are inherited by the program's children."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config

HOLDS_STDOUT_CLOSED = b"""
import asyncio
import json
import os
import subprocess
import sys

released = None


async def app(scope, receive, send):
    global released
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/close-stdout-and-hold":
        # A call still running while descriptor 1 is closed: calls go on meanwhile.
        os.close(1)
        released = asyncio.get_running_loop().create_future()
        await released
        body = b"released"
    elif scope["path"] == "/release":
        released.set_result(None)
        body = b"released"
    elif scope["path"] == "/print":
        try:
            print("a line printed by the program", flush=True)
        except OSError:
            pass  # nothing on descriptor 1 at that moment: the line is lost, as on a closed stdout
        body = b"printed"
    elif scope["path"] == "/child-stdio":
        # What a child started without redirections sees of 0, 1 and 2.
        probe = "import os\\nfor fd in (0, 1, 2):\\n    os.fstat(fd)\\n"
        body = json.dumps(subprocess.run([sys.executable, "-c", probe]).returncode).encode()
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture(params=["uvloop", "asyncio"])
async def init(tmp_path, request):
    instance = DevMachine(tmp_path / "vm", env={"ALEPH_EVENT_LOOP": request.param})
    await instance.start()
    await instance.configure(program_config(HOLDS_STDOUT_CLOSED, "main:app"))
    yield instance
    await instance.stop()


async def eventually(check, timeout: float = 15) -> bool:
    """check() until it is true; a bound on a wait, not a speed test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def closed(pid: int, fd: int) -> bool:
    return not os.path.exists(f"/proc/{pid}/fd/{fd}")


async def test_calls_made_while_the_program_holds_stdout_closed_answer_cleanly(init):
    held = asyncio.ensure_future(init.client.http("GET", "/close-stdout-and-hold", timeout=60))
    assert await eventually(lambda: closed(init.process.pid, 1)), "the program did not close descriptor 1"
    for _ in range(3):
        # Whole msgpack, no printed line in it, and an end: the host reads until EOF.
        answer = await init.client.http("GET", "/print", timeout=10)
        assert answer["body"]["body"] == b"printed"
        for fd in (0, 1, 2):
            assert not os.readlink(f"/proc/{init.process.pid}/fd/{fd}").startswith("socket:"), fd
    assert (await init.client.http("GET", "/release", timeout=10))["body"]["body"] == b"released"
    assert (await held)["body"]["body"] == b"released"


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_an_init_started_without_0_1_2_gives_children_open_ones(tmp_path, event_loop):
    instance = DevMachine(
        tmp_path / "vm", python="sh", env={"ALEPH_EVENT_LOOP": event_loop},
        python_flags=("-c", 'exec "$0" "$@" <&- >&- 2>&-', sys.executable, "-OO"),
    )  # fmt: skip
    await instance.start()
    try:
        await instance.configure(program_config(HOLDS_STDOUT_CLOSED, "main:app"))
        answer = await instance.client.http("GET", "/child-stdio")
        assert json.loads(answer["body"]["body"]) == 0, "a child started with 0, 1 or 2 closed"
    finally:
        await instance.stop()
