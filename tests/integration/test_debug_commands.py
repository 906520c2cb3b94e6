"""Debug commands (`!<command>`, docs/protocol.md section 7) on a real dev-mode init: what
runs is the whole command the host wrote, however its bytes were split, and nothing runs
when the host left before it was whole."""

from __future__ import annotations

import asyncio

import pytest

from aleph_runtime import protocol
from aleph_runtime.host.machines.dev import DevMachine


@pytest.fixture(params=["uvloop", "asyncio"])
async def init(tmp_path, request):
    instance = DevMachine(tmp_path / "vm", env={"ALEPH_EVENT_LOOP": request.param})
    await instance.start()
    yield instance
    await instance.stop()


async def connect(init: DevMachine) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(init.uds_path)
    writer.write(protocol.connect_line(protocol.INIT_PORT))
    return reader, writer


async def command_in_segments(init: DevMachine, segments: list[bytes], pause: float) -> bytes:
    """Write the segments with a pause between them, as a host's write can reach the
    guest; then read the answer until EOF, as host/supervisor.py's `command` does."""
    reader, writer = await connect(init)
    try:
        for index, segment in enumerate(segments):
            if index:
                await asyncio.sleep(pause)
            writer.write(segment)
            await writer.drain()
        assert (await reader.readline()).startswith(b"OK ")
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_a_command_split_across_two_segments_runs_whole(init):
    # The init signals ready before its imports: once it answers, its loop reads as they come.
    assert await init.client.command("echo serving") == b"serving\n"
    pause = protocol.COMMAND_QUIET_SECONDS / 5  # a pause within one write, not the write's end
    output = await command_in_segments(init, [b"!echo first-half", b"-second-half"], pause)
    assert output == b"first-half-second-half\n"


async def test_a_command_whose_host_half_closes_runs_whole(init):
    reader, writer = await connect(init)
    writer.write(b"!echo whole")
    writer.write_eof()
    assert (await reader.readline()).startswith(b"OK ")
    assert await asyncio.wait_for(reader.read(), 30) == b"whole\n"
    writer.close()


async def test_a_command_the_host_left_before_it_was_whole_does_not_run(init, tmp_path):
    marker = tmp_path / "marker"
    _reader, writer = await connect(init)
    writer.write(b"!touch " + str(marker).encode())
    await writer.drain()
    writer.close()
    # The init has seen that connection's end before it answers this later command.
    assert await init.client.command("echo later") == b"later\n"
    assert not marker.exists()


async def test_a_command_longer_than_a_shell_argument_is_refused(init):
    output = await init.client.command("true " + "x" * protocol.MAX_COMMAND_BYTES)
    assert output.startswith(protocol.INIT_FAILURE.encode()), output[:200]
    assert str(protocol.MAX_COMMAND_BYTES).encode() in output and len(output) < 200
    assert await init.client.command("echo still serving") == b"still serving\n"
