"""The init survives what programs and hosts do wrong (issue 9), shown on a real dev-mode
init over real sockets: calls the host gave up on, endless responses, a program closing
its stdio, a halt during a long extraction, orphans, a failed start.

An executable program listens on 127.0.0.1:8080; those tests run the init in a network
namespace of its own (`unshare -n`), so the port is private to the test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from aleph_runtime import protocol
from aleph_runtime.host.machines.base import MachineExited
from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config
from aleph_runtime.host.supervisor import ConfigurationRejected

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
APP = (PROGRAMS / "guardrails_app.py").read_bytes()
SERVER = (PROGRAMS / "guardrails_server.py").read_bytes()
CAP = 1 << 20


#: `unshare -n` before the init: loopback only, so an executable's port 8080 is the test's own.
PRIVATE_NETWORK = {
    "python": "unshare",
    "python_flags": ("-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, "-OO"),
}


@pytest.fixture(params=["uvloop", "asyncio"])
async def init(tmp_path, request):
    instance = DevMachine(
        tmp_path / "vm", env={"ALEPH_EVENT_LOOP": request.param, "ALEPH_MAX_RESPONSE_BYTES": str(CAP)},
        log_path=tmp_path / "init.log",  # an init that ends early: its last lines are in the error
    )  # fmt: skip
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
async def executable_init(tmp_path, short_dir):
    """The init in its own network namespace (its users are marked `root`), running
    guardrails_server.py as its program."""
    instance = DevMachine(short_dir / "vm", env={"ALEPH_MAX_RESPONSE_BYTES": str(CAP)}, **PRIVATE_NETWORK)
    await instance.start()
    code = zip_bytes(
        {"run.sh": b'#!/bin/sh\nexec python3 "$(dirname "$0")/server.py" 8080\n', "server.py": SERVER}
    )
    await instance.configure(program_config(code, "run.sh", encoding="zip", interface="executable"))
    yield instance
    await instance.stop()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def eventually(check, timeout: float = 15):
    """check() until it is truthy; its last value. A bound on a wait, not a speed test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def abandon(init: DevMachine, path: str, count: int, body: bytes = b"") -> None:
    """`count` calls the host gives up on once all of them reached the program, as the
    supervisor gives up at `seconds`: it closes each connection."""
    calls = [
        asyncio.ensure_future(init.client.http("POST", path, body=body, timeout=300)) for _ in range(count)
    ]
    reached = await eventually(lambda: _hanging(init, count))
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert reached, f"the {count} calls did not all reach the program"


async def _hanging(init: DevMachine, count: int) -> bool:
    return (await stats(init))["hanging"] == count


async def stats(init: DevMachine) -> dict:
    answer = await init.client.http("GET", "/stats")
    return json.loads(answer["body"]["body"])


async def halts(init: DevMachine) -> bool:
    result = await init.client.halt()
    return result.stopped and result.shut_down and await asyncio.wait_for(init.process.wait(), 10) == 0


# --- 1. a call the host gave up on is released ---


async def test_abandoned_asgi_calls_are_cancelled_and_their_descriptors_closed(init):
    await init.configure(program_config(APP, "main:app"))
    await stats(init)
    before = descriptors(init.process.pid)
    await abandon(init, "/hang", 40, body=b"b" * 100_000)
    settled = await eventually(lambda: _settled(init))
    assert settled == {"hanging": 0, "cancelled": 40}, settled
    assert await eventually(lambda: descriptors(init.process.pid) <= before), (
        descriptors(init.process.pid),
        before,
    )
    assert await halts(init)


async def _settled(init: DevMachine) -> dict | None:
    counts = await stats(init)
    picked = {"hanging": counts["hanging"], "cancelled": counts["cancelled"]}
    return picked if picked == {"hanging": 0, "cancelled": 40} else None


async def test_a_half_closed_call_is_still_answered(init):
    """A client that only shuts down its writing side still reads: the call goes on."""
    await init.configure(program_config(APP, "main:app"))
    reader, writer = await asyncio.open_unix_connection(init.uds_path)
    writer.write(
        protocol.connect_line(protocol.INIT_PORT) + protocol.run_request(protocol.http_scope("GET", "/"))
    )
    await writer.drain()
    writer.write_eof()
    await reader.readline()
    answer = protocol.unpack(await asyncio.wait_for(reader.read(), 30))
    writer.close()
    assert answer["body"]["body"] == b"ok"


@pytest.mark.root
async def test_abandoned_executable_calls_close_their_connection_to_the_program(executable_init):
    init = executable_init
    await abandon(init, "/hang", 10)
    counts = await eventually(lambda: _server_settled(init, 10))
    assert counts and counts["hanging"] == 0 and counts["closed"] == 10, counts
    assert await halts(init)


async def _server_settled(init: DevMachine, closed: int) -> dict | None:
    counts = await stats(init)
    return counts if counts["hanging"] == 0 and counts["closed"] == closed else None


def processes_running(argv: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/cmdline").read_bytes() == argv:
                    found.append(int(name))
            except OSError:
                pass
    return found


async def test_a_debug_command_the_host_gave_up_on_is_killed(init):
    with pytest.raises(asyncio.TimeoutError):
        await init.client.command("sleep 3017", timeout=0.5)
    assert await eventually(lambda: not processes_running(b"sleep\x003017\x00"))
    assert await halts(init)


# --- 2. responses are bounded ---


async def test_a_debug_commands_output_is_bounded(init):
    output = await init.client.command("yes", timeout=30)
    assert len(output) < CAP + 200 and output.endswith(b"ALEPH_MAX_RESPONSE_BYTES)]\n"), output[-200:]
    assert await halts(init)


async def test_an_endless_asgi_stream_ends_with_an_error_naming_the_cap(init):
    await init.configure(program_config(APP, "main:app"))
    answer = await init.client.http("GET", "/endless")
    assert str(CAP) in answer["error"] and "ALEPH_MAX_RESPONSE_BYTES" in answer["error"], answer
    assert answer["traceback"], "the supervisor shows the traceback as the 500's body: it must not be empty"
    counts = await stats(init)
    # The stream was stopped where it crossed the cap, not read on.
    assert counts["streams_ended"] == 1 and counts["chunks"] <= CAP // 65536 + 1, counts
    exact = await init.client.http("GET", "/big", str(CAP))
    assert len(exact["body"]["body"]) == CAP
    over = await init.client.http("GET", "/big", str(CAP + 1))
    assert str(CAP) in over["error"]
    assert await halts(init)


@pytest.mark.root
@pytest.mark.parametrize("path", ["/endless-chunked", "/endless-eof", "/huge-length", "/endless-head"])
async def test_an_endless_executable_answer_is_an_error_and_no_longer_read(executable_init, path):
    init = executable_init
    answer = await init.client.http("GET", path)
    expected = "head is larger" if path == "/endless-head" else f"larger than {CAP} bytes"
    assert expected in answer["error"], answer
    # The init closed the program's connection: the server's next write fails (how much it
    # wrote before depends on the kernel's socket buffers, not on the init).
    counts = await eventually(lambda: _server_reset(init))
    assert counts, "the program's connection was not closed"
    assert (await init.client.http("GET", "/"))["body"]["body"] == b"ok"


async def _server_reset(init: DevMachine) -> dict | None:
    counts = await stats(init)
    return counts if counts["reset"] >= 1 else None


# --- 3. descriptors 0, 1, 2 stay reserved ---


async def test_a_program_closing_stdout_and_stderr_does_not_get_them_onto_connections(init, tmp_path):
    await init.configure(program_config(APP, "main:app"))
    assert (await init.client.http("GET", "/close-stdio"))["body"]["body"] == b"closed"
    for _ in range(20):
        # Every answer is whole msgpack: no log line or print() inside it.
        answers = await asyncio.gather(*(init.client.http("GET", "/print", timeout=10) for _ in range(4)))
        assert [answer["body"]["body"] for answer in answers] == [b"printed"] * 4
    for fd in (0, 1, 2):
        assert not os.readlink(f"/proc/{init.process.pid}/fd/{fd}").startswith("socket:"), fd
    assert await halts(init)
    log = (tmp_path / "init.log").read_text()
    # The init's log went on through its own descriptor, and fd 2 is the console again.
    assert "Halted" in log and "a line from the program on stderr" in log


# --- 7. halt is answered whatever runs ---


async def test_halt_is_answered_during_a_long_extraction(tmp_path):
    entries = 30_000
    files = {"main.py": APP, **{f"d{index // 1000}/f{index}": b"" for index in range(entries)}}
    async with DevMachine(tmp_path / "vm") as init:
        configure = asyncio.ensure_future(
            init.configure(program_config(zip_bytes(files), "main:app", encoding="zip"))
        )
        opt = init.root / "opt"
        assert await eventually(lambda: opt.is_dir() and any(opt.iterdir()), timeout=60)
        result = await init.client.halt()  # the supervisor's 5 s
        extracted = sum(len(names) for _, _, names in os.walk(opt))
        assert result.stopped and result.shut_down, result.lines
        assert extracted < entries, "the extraction was over before the halt: the test shows nothing"
        assert await asyncio.wait_for(init.process.wait(), 10) == 0
        # Refused as halted, or left unanswered by an init that has ended.
        with pytest.raises((ConfigurationRejected, MachineExited)):
            await configure


# --- 10. smaller ones ---


async def test_after_a_failed_start_every_call_answers_the_start_error_and_its_traceback(init):
    with pytest.raises(ConfigurationRejected):
        await init.configure(program_config(b"import json\nvalue = 1 / 0\n", "main:app"))
    answer = await init.client.http("GET", "/")
    assert "failed to start" in answer["error"]
    assert "ZeroDivisionError" in answer["traceback"] and "value = 1 / 0" in answer["traceback"]
    assert await halts(init)


async def test_the_dev_init_adopts_and_reaps_its_programs_orphans(init):
    code = b"""
import subprocess
async def app(scope, receive, send):
    await receive()
    # The shell exits at once; its background sleep is an orphan.
    out = subprocess.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"], capture_output=True).stdout
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": out.strip()})
"""
    await init.configure(program_config(code, "main:app"))
    orphan = int((await init.client.http("GET", "/"))["body"]["body"])
    parent = Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[1]
    assert int(parent) == init.process.pid
    # Once it exits, the init reaps it (after linux.ORPHAN_GRACE): no zombie is left under it.
    assert await eventually(lambda: not Path(f"/proc/{orphan}").exists(), timeout=40)
    assert await halts(init)


async def test_a_programs_own_subprocesses_keep_their_exit_status(init):
    """The program's children are the init's children: PID 1's orphan reaper must leave
    them to the program (asyncio's child watcher, uvloop's SIGCHLD handler, subprocess),
    or their status is lost (255, -1) or, under uvloop, process.wait() never returns."""
    code = b"""
import asyncio, subprocess
async def app(scope, receive, send):
    await receive()
    slow = await asyncio.create_subprocess_exec("sh", "-c", "sleep 2.5; exit 7")
    popen = subprocess.Popen(["sh", "-c", "exit 5"])
    await asyncio.sleep(2)  # past a reaper sweep while popen's child is a zombie
    statuses = [await asyncio.wait_for(slow.wait(), 20), popen.wait()]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": repr(statuses).encode()})
"""
    await init.configure(program_config(code, "main:app"))
    answer = await init.client.http("GET", "/", timeout=30)
    assert answer.get("body", {}).get("body") == b"[7, 5]", answer
    assert await halts(init)


@pytest.mark.root
async def test_a_plain_executable_in_a_subdirectory_runs(short_dir):
    async with DevMachine(short_dir / "vm", **PRIVATE_NETWORK) as init:
        code = b"#!" + sys.executable.encode() + b"\n" + SERVER
        await init.configure(program_config(code, "bin/server", encoding="plain", interface="executable"))
        assert (await init.client.http("GET", "/"))["body"]["body"] == b"ok"
