"""`aleph-runtime run --debug`: a Debug Adapter Protocol client (written here: JSON messages
with Content-Length headers over TCP) attaches to debugpy in the program's process through
the forwarded port, stops at a breakpoint in a route and reads its locals."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli.example_checks import stop_cleanly
from tests.helpers import free_port

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

#: A route with locals to read; the breakpoint is at BREAK_LINE (1-based), once both are set.
PROGRAM = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    asked = scope["path"]
    answer = f"you asked for {asked}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": answer})
"""
BREAK_LINE = 13
#: Where a directory's code is in the guest: zipped, unpacked into /opt (guest/code.py).
GUEST_SOURCE = "/opt/main.py"
WAIT = 60
VM_BOOT_TIMEOUT = 600  # TCG on a loaded machine: generous, never asserted


class DapClient:
    """Just enough of the Debug Adapter Protocol's client side, blocking, bounded waits."""

    def __init__(self, port: int, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.socket.makefile("rb")
        self.seq = 0
        self.pending: list[dict] = []
        self.timeout = timeout

    def close(self) -> None:
        self.file.close()
        self.socket.close()

    def send(self, command: str, **arguments) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments})
        self.socket.sendall(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        return self.seq

    def _read(self) -> dict:
        length = None
        while True:
            line = self.file.readline(1024)
            if not line:
                raise ConnectionError("the debug adapter closed the connection")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        assert length is not None and length < 1 << 24
        return json.loads(self.file.read(length))

    def wait_for(self, matches, what: str) -> dict:
        for index, message in enumerate(self.pending):
            if matches(message):
                return self.pending.pop(index)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = self._read()
            if matches(message):
                return message
            self.pending.append(message)
        raise TimeoutError(f"no {what} from the debug adapter in {self.timeout} s")

    def response(self, seq: int) -> dict:
        message = self.wait_for(
            lambda m: m.get("type") == "response" and m.get("request_seq") == seq, str(seq)
        )
        assert message["success"], message
        return message.get("body") or {}

    def request(self, command: str, **arguments) -> dict:
        return self.response(self.send(command, **arguments))

    def event(self, name: str) -> dict:
        return self.wait_for(lambda m: m.get("type") == "event" and m.get("event") == name, f"{name} event")


def attach(debug_port: int) -> DapClient:
    """Connect, attach, a breakpoint at BREAK_LINE of the program."""
    client = DapClient(debug_port)
    try:
        client.request("initialize", adapterID="debugpy", clientID="test", pathFormat="path",
                       linesStartAt1=True, columnsStartAt1=True)  # fmt: skip
        attach = client.send("attach", justMyCode=True)
        client.event("initialized")
        breakpoints = client.request(
            "setBreakpoints", source={"path": GUEST_SOURCE}, breakpoints=[{"line": BREAK_LINE}]
        )["breakpoints"]
        assert breakpoints and breakpoints[0]["line"] == BREAK_LINE, breakpoints
        client.request("configurationDone")
        client.response(attach)
    except BaseException:
        client.close()
        raise
    return client


def break_in_a_call(client: DapClient, url: str) -> dict[str, str]:
    """Call the route, return the locals seen at the stop; the call then completes."""
    try:
        answer: dict = {}

        def call() -> None:
            with urllib.request.urlopen(f"{url}some/where", timeout=WAIT) as response:
                answer["status"], answer["body"] = response.status, response.read()

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        stopped = client.event("stopped")["body"]
        assert stopped["reason"] == "breakpoint", stopped
        frame = client.request("stackTrace", threadId=stopped["threadId"], levels=1)["stackFrames"][0]
        assert (frame["source"]["path"], frame["line"]) == (GUEST_SOURCE, BREAK_LINE), frame
        scopes = client.request("scopes", frameId=frame["id"])["scopes"]
        local_scope = next(scope for scope in scopes if scope["name"] == "Locals")
        variables = client.request("variables", variablesReference=local_scope["variablesReference"])
        seen = {variable["name"]: variable["value"] for variable in variables["variables"]}
        assert not answer, "the call must wait at the breakpoint"
        client.request("continue", threadId=stopped["threadId"])
        caller.join(WAIT)
        assert answer == {"status": 200, "body": b"you asked for /some/where"}, answer
        client.request("disconnect")
        return seen
    finally:
        client.close()


def debug_a_call(debug_port: int, url: str) -> dict[str, str]:
    return break_in_a_call(attach(debug_port), url)


def write_program(directory: Path) -> Path:
    program = directory / "program"
    program.mkdir()
    (program / "main.py").write_text(PROGRAM)
    return program


async def test_breakpoint_in_a_route_in_dev_mode(cli_factory, short_dir):
    program = write_program(short_dir)
    debug_port = free_port()
    cli = await cli_factory("--mode", "dev", "--port", "0", f"--debug={debug_port}", "--watch", str(program))
    url = await cli.wait_url()
    seen = await asyncio.to_thread(debug_a_call, debug_port, url)
    assert seen["asked"] == "'/some/where'", seen
    assert seen["answer"] == "b'you asked for /some/where'", seen

    # --watch: the restarted program listens again, with the edit's code.
    (program / "main.py").write_text(PROGRAM + "\n# edited\n")
    deadline = time.monotonic() + WAIT
    while "restarted in" not in cli.output():
        assert time.monotonic() < deadline, cli.output()
        await asyncio.sleep(0.1)
    seen = await asyncio.to_thread(debug_a_call, debug_port, url)
    assert seen["asked"] == "'/some/where'", seen
    await stop_cleanly(cli)


async def test_debug_wait_holds_the_start_until_a_client_attaches(cli_factory, short_dir):
    program = write_program(short_dir)
    debug_port = free_port()
    cli = await cli_factory(
        "--mode", "dev", "--port", "0", f"--debug={debug_port}", "--debug-wait", str(program)
    )
    url_task = asyncio.create_task(cli.wait_url())
    await asyncio.sleep(3)
    assert not url_task.done(), "the program must not start before a client attaches"
    client = await asyncio.to_thread(attach, debug_port)
    url = await asyncio.wait_for(url_task, WAIT)
    seen = await asyncio.to_thread(break_in_a_call, client, url)
    assert seen["asked"] == "'/some/where'", seen
    await stop_cleanly(cli)


async def test_a_taken_debug_port_is_one_sentence(cli_factory, short_dir):
    program = write_program(short_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = await cli_factory("--mode", "dev", "--port", "0", f"--debug={port}", str(program))
        assert await cli.wait() == 2
    assert f"error: 127.0.0.1:{port} is taken (Address already in use): --debug's port" in cli.output()


async def test_the_variable_without_debugpys_volume_is_ignored(cli_factory, short_dir):
    # A program on the network may set ALEPH_DEBUG_PORT itself: no node mounts debugpy,
    # and the program must start as it did before --debug existed, with one warning.
    program = write_program(short_dir)
    cli = await cli_factory("--mode", "dev", "--port", "0", "--env", "ALEPH_DEBUG_PORT=5678", str(program))
    url = await cli.wait_url(60)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
    assert await cli.interrupt() == 0
    assert "ALEPH_DEBUG_PORT is set but no debugger is mounted at /opt/aleph-debug" in cli.output()


def test_debugpy_that_cannot_load_is_one_sentence(tmp_path):
    """debugpy's volume is there but debugpy does not import: the configuration fails with one
    sentence (an interpreter without site-packages stands for an image without debugpy)."""
    probe = (
        "from aleph_runtime.guest import debugger\n"
        f"debugger.DEBUGPY_PATH = {str(tmp_path)!r}\n"
        "try:\n"
        "    debugger.start_from_variables({'ALEPH_DEBUG_PORT': '5678'})\n"
        "except debugger.DebuggerError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPOSITORY / "runtime")},
    )  # fmt: skip
    assert result.stdout.strip() == f"debugpy could not be loaded from {tmp_path} (No module named 'debugpy')"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
async def test_breakpoint_in_a_route_in_a_vm(images, cli_factory, short_dir):
    """The same through QEMU's user network (hostfwd), debugpy on a squashfs drive."""
    program = write_program(short_dir)
    debug_port = free_port()
    cli = await cli_factory("--port", "0", f"--debug={debug_port}", str(program))
    url = await cli.wait_url(VM_BOOT_TIMEOUT)
    seen = await asyncio.to_thread(debug_a_call, debug_port, url)
    assert seen["asked"] == "'/some/where'", seen
    assert seen["answer"] == "b'you asked for /some/where'", seen
    await stop_cleanly(cli)


def test_the_forwards_bind_the_hosts_loopback_only():
    from aleph_runtime.host.container.network import NetworkSpec, pasta_command
    from aleph_runtime.host.vmm.qemu import UserNetwork

    pasta = pasta_command(NetworkSpec(tcp_forwards=(5678,)), 1, Path("/nonexistent"))
    assert pasta[pasta.index("--tcp-ports") + 1] == "127.0.0.1/5678"
    closed = pasta_command(NetworkSpec(), 1, Path("/nonexistent"))
    assert closed[closed.index("--tcp-ports") + 1] == "none"  # nothing inbound without --debug
    netdev = UserNetwork(ip="172.16.0.2", route="172.16.0.1", tcp_forwards=(5678,)).netdev()
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:5678-172.16.0.2:5678" in netdev.split(",")
    assert "hostfwd" not in UserNetwork(ip="172.16.0.2", route="172.16.0.1").netdev()


async def test_a_port_out_of_range_is_one_sentence(cli_factory, short_dir):
    cli = await cli_factory("--mode", "dev", "--debug=70000", str(write_program(short_dir)))
    assert await cli.wait() == 2
    assert "error: --debug=70000 is not a TCP port (1 to 65535)" in cli.output()
