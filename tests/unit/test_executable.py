"""Executable programs: a shell script starting an HTTP server, proxied request by request."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from aleph_runtime import protocol
from aleph_runtime.guest.config import ConfigError
from aleph_runtime.guest.executable import ExecutableProgram
from tests.helpers import free_port

SERVER = Path(__file__).resolve().parent.parent / "programs" / "http_echo_server.py"


def write_script(directory: Path, body: str, shebang: bool = True, executable: bool = False) -> Path:
    script = directory / "run.sh"
    script.write_text(("#!/bin/sh\n" if shebang else "") + body)
    script.chmod(0o755 if executable else 0o644)
    return script


@pytest.fixture
async def program(tmp_path):
    programs: list[ExecutableProgram] = []

    def make(body: str, port: int, **kwargs) -> ExecutableProgram:
        script = write_script(tmp_path, body, **kwargs)
        instance = ExecutableProgram(str(script), {"PATH": os.environ["PATH"], "MY_VAR": "42"}, port=port)
        programs.append(instance)
        return instance

    yield make
    for instance in programs:
        await instance.stop(grace=1)


def server_script(port: int, delay: float = 0) -> str:
    # Not exec'd on purpose: the shell stays the parent, as in real-world start scripts.
    return f"sleep {delay}\n{sys.executable} {SERVER} {port}\n"


def scope(method="GET", path="/echo", query="", headers=None, body=b""):
    return protocol.http_scope(method, path, query, headers or [], body)


async def test_request_is_proxied_whole(program, tmp_path):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    assert os.stat(prog.path).st_mode & stat.S_IXUSR, "the entrypoint is made executable"
    status, headers, body = await prog.request(
        scope(
            "POST",
            "/echo/a b",
            "x=1&y=a%26b&pct=100%",
            [(b"x-custom", b"v"), (b"host", b"example.org")],
            b"payload",
        )
    )
    assert status == 200
    echoed = json.loads(body)
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo/a%20b"
    # The supervisor's decoded query, re-encoded: its kept `%26` stays, a bare `%` is `%25`.
    assert echoed["query"] == "x=1&y=a%26b&pct=100%25"
    assert ["x-custom", "v"] in echoed["headers"]
    assert ["host", "example.org"] in echoed["headers"]
    assert echoed["body"] == "payload"
    assert echoed["cwd"] == str(tmp_path)
    assert [name for name, _ in headers].count(b"Set-Cookie") == 2


async def test_environment_reaches_the_program(program):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    _, _, body = await prog.request(scope(path="/env"))
    assert json.loads(body)["MY_VAR"] == "42"


async def test_response_framings(program):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    status, headers, body = await prog.request(scope(path="/chunked"))
    assert (status, body) == (200, b"hello chunked world")
    assert b"transfer-encoding" not in [name.lower() for name, _ in headers]
    # A Content-Length sent with chunked is not the de-chunked body's: it is not passed on.
    status, headers, body = await prog.request(scope(path="/chunked-with-length"))
    assert (status, body) == (200, b"hello chunked world")
    assert [name.lower() for name, _ in headers] == [b"server", b"date", b"content-type"]
    status, headers, body = await prog.request(scope(path="/close"))
    assert (status, body) == (201, b"until EOF" * 1000)
    status, headers, body = await prog.request(scope(path="/big"))
    assert hashlib.sha256(body).hexdigest().encode() == dict(headers)[b"X-Sha"]
    status, headers, body = await prog.request(scope("HEAD", "/echo"))
    assert (status, body) == (200, b"")


async def test_handle_packs_the_answer_and_refuses_events(program):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    answer = protocol.unpack(await prog.handle(scope()))
    assert answer["headers"]["status"] == 200
    assert json.loads(answer["body"]["body"])["path"] == "/echo"
    error = protocol.unpack(await prog.handle(protocol.event_scope({"item_hash": "x"})))
    assert "HTTP" in error["error"] and error["traceback"]


async def test_slow_server_is_waited_for(program):
    port = free_port()
    prog = program(server_script(port, delay=0.7), port)
    await prog.start()
    status, _, _ = await prog.request(scope())
    assert status == 200


async def test_server_never_up_answers_503_loading_page(program):
    port = free_port()
    prog = program("sleep 30\n", port)
    prog.connect_timeout = 0.3
    await prog.start()
    status, _headers, body = await prog.request(scope())
    assert status == 503
    assert b"starting" in body


async def test_crash_is_restarted_and_status_logged(program, caplog):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    first_pid = json.loads((await prog.request(scope()))[2])["pid"]
    with pytest.raises(ConnectionError):
        await prog.request(scope(path="/crash"))
    status, _, body = await prog.request(scope())
    assert status == 200
    assert json.loads(body)["pid"] != first_pid
    assert prog.restarts == 1
    assert prog.exit_statuses == [3]
    assert any("status 3" in record.getMessage() for record in caplog.records)


async def test_crash_answer_is_an_error_not_an_exception(program):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    await prog.request(scope())
    answer = protocol.unpack(await prog.handle(scope(path="/crash")))
    assert "closed the connection" in answer["error"]


async def test_stop_kills_a_program_that_ignores_sigterm(program):
    port = free_port()
    prog = program("trap '' TERM\nwhile :; do sleep 0.1; done\n", port)
    await prog.start()
    await asyncio.sleep(0.2)
    await prog.stop(grace=0.5)
    assert prog.process.returncode is not None
    assert prog.restarts == 0


async def test_stop_terminates_the_whole_process_group(program):
    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    server_pid = json.loads((await prog.request(scope()))[2])["pid"]
    await prog.stop(grace=2)
    await asyncio.sleep(0.1)
    assert (
        not Path(f"/proc/{server_pid}").exists()
        or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2]
    )


async def test_script_without_shebang_runs_with_the_shell(program):
    port = free_port()
    prog = program(server_script(port), port, shebang=False)
    await prog.start()
    assert (await prog.request(scope()))[0] == 200


async def test_missing_entrypoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        await ExecutableProgram(str(tmp_path / "nope"), {}).start()


async def test_answers_carry_the_data_export_when_set(program, tmp_path):
    import io
    import zipfile

    from aleph_runtime.guest.data import DataExport

    port = free_port()
    prog = program(server_script(port), port)
    await prog.start()
    data = tmp_path / "data"
    data.mkdir()
    prog.data_export = DataExport(str(data))
    assert protocol.unpack(await prog.handle(scope()))["output_data"] is None
    (data / "result.txt").write_bytes(b"exported")
    answer = protocol.unpack(await prog.handle(scope()))
    with zipfile.ZipFile(io.BytesIO(answer["output_data"])) as archive:
        assert archive.read("result.txt") == b"exported"


def test_interpreter_command_for_scripts_without_execute_bit(tmp_path):
    from aleph_runtime.guest.executable import _interpreter_command

    script = tmp_path / "a"
    script.write_text("#!/usr/bin/env python3\nprint(1)\n")
    assert _interpreter_command(str(script)) == ["/usr/bin/env", "python3", str(script)]
    script.write_text("#!/bin/sh\necho\n")
    assert _interpreter_command(str(script)) == ["/bin/sh", str(script)]
    script.write_text("echo no shebang\n")
    assert _interpreter_command(str(script)) == ["/bin/sh", str(script)]
    script.write_bytes(b"\x7fELF\x02\x01\x01\0\0\0")
    assert _interpreter_command(str(script)) is None


async def test_program_exiting_before_serving_answers_502_with_status_and_output(program, capfd):
    port = free_port()
    prog = program("echo starting up\nnode-that-is-not-installed server.js\n", port, executable=True)
    prog.connect_timeout = 30  # the 502 must come from the exit, not from this running out
    await prog.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, headers, body = await prog.request(scope())
    assert status == 502
    assert loop.time() - started < 10
    assert [b"content-type", b"text/plain; charset=utf-8"] in headers
    text = body.decode()
    assert "exited with status 127" in text
    assert "starting up" in text and "node-that-is-not-installed: not found" in text
    # The output still reaches the init's stdout (the console log) as it is written.
    assert "node-that-is-not-installed: not found" in capfd.readouterr().out
    # Every request is answered the same way while it keeps failing, without waiting.
    assert (await prog.request(scope()))[0] == 502
    answer = protocol.unpack(await prog.handle(scope()))
    assert answer["headers"]["status"] == 502


async def test_failed_start_keeps_the_last_4_kib_of_the_last_run(program):
    from aleph_runtime.guest.executable import OUTPUT_TAIL_BYTES, OUTPUT_TAIL_LINES

    port = free_port()
    # 200 lines of 100 bytes, then one distinct last line; exit status 9.
    body = "i=0\nwhile [ $i -lt 200 ]; do printf '%099d\\n' $i; i=$((i+1)); done\necho the end\nexit 9\n"
    prog = program(body, port, executable=True)
    prog.connect_timeout = 30
    await prog.start()
    status, _, answer = await prog.request(scope())
    assert status == 502
    lines = answer.decode().splitlines()
    assert "exited with status 9" in lines[0]
    assert lines[-1] == "the end"
    assert len(lines) - 1 == OUTPUT_TAIL_LINES
    assert len(prog._output._tail) == OUTPUT_TAIL_BYTES
    assert lines[-2] == f"{199:099d}"


async def test_a_server_that_crashed_after_serving_is_waited_for_not_502(program):
    # Same shape as test_crash_is_restarted_and_status_logged, but checks the answer
    # while the restart is due: the run had served, so this is no failed start.
    port = free_port()
    prog = program(f"echo up\n{sys.executable} {SERVER} {port}\n", port)
    await prog.start()
    assert (await prog.request(scope()))[0] == 200
    with pytest.raises(ConnectionError):
        await prog.request(scope(path="/crash"))
    assert prog.failed_start is None
    assert (await prog.request(scope()))[0] == 200
