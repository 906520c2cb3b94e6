"""Port 52 and the ready signal before the imports (guest/ready.py), on real Unix sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from aleph_runtime import __version__, protocol
from aleph_runtime.guest import ready
from tests.conftest import REPOSITORY


def test_the_entry_point_imports_no_event_loop_before_the_signal():
    """What main() needs up to the signal must not pull asyncio (seconds under emulation),
    nor socket.py, msgpack or re: what runs before the signal delays it, at every boot."""
    code = (
        "import sys; import aleph_runtime.guest.main, aleph_runtime.protocol; "
        "heavy = [m for m in ('asyncio', 'uvloop', 'logging', 'dataclasses', 'typing', 'socket', 'msgpack', "
        "'re', 'base64') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-OO", "-c", code],
        cwd=REPOSITORY / "runtime",
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_listen_then_signal_then_the_config_waits_in_the_backlog(short_dir):
    base = str(short_dir / "v.sock")
    host_side = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_side.bind(f"{base}_52")
    host_side.listen(1)
    listener = ready.adopt(ready.listen(base))
    try:
        ready.send(base)
        connection, _ = host_side.accept()
        with connection:
            payload = b"".join(iter(lambda: connection.recv(4096), b""))
        assert protocol.unpack(payload) == {"version": protocol.PROTOCOL_VERSION, "runtime": __version__}
        # The supervisor connects at once: the kernel holds it until the loop accepts.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as supervisor:
            supervisor.connect(base)
            supervisor.sendall(b"CONNECT 52\n")
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(64) == b"CONNECT 52\n"
    finally:
        listener.close()
        host_side.close()


def test_no_host_is_an_error_at_once(short_dir):
    with pytest.raises(OSError):
        ready.send(str(short_dir / "nobody.sock"))


def test_a_host_that_accepts_and_never_reads_does_not_hold_pid_1(short_dir):
    base = str(short_dir / "v.sock")
    host_side = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_side.bind(f"{base}_52")
    host_side.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(host_side.accept()[0]))
    thread.start()
    try:
        ready.send(base, timeout=5)  # a few bytes: they fit the socket's buffer
        thread.join(5)
        assert accepted, "the host never saw the connection"
    finally:
        for connection in accepted:
            connection.close()
        host_side.close()


def test_listening_twice_on_one_path_replaces_a_stale_socket_file(short_dir):
    base = str(short_dir / "v.sock")
    first = ready.listen(base)
    first.close()  # a previous init's file, left behind
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, pytest.raises(ConnectionRefusedError):
        client.connect(base)  # stale: nobody listens behind it
    second = ready.adopt(ready.listen(base))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(base)
            client.sendall(b"CONNECT 52\n")
            accepted, _ = second.accept()  # the new listener holds the path
            with accepted:
                assert accepted.recv(64) == b"CONNECT 52\n"
    finally:
        second.close()


async def test_a_transport_with_no_early_listener_listens_itself(short_dir):
    """When guest/ready.py could not listen before the imports, the loop's transport
    listens the same way (ready.listen), stale socket file replaced, and answers CONNECT."""
    import asyncio

    from aleph_runtime.guest.transport import transport_for

    base = str(short_dir / "v.sock")
    ready.listen(base).close()  # a stale file where the socket goes
    transport = transport_for(base)
    seen = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        seen.set_result(await reader.readexactly(4))
        writer.close()

    await transport.start_server(handler)
    try:
        reader, writer = await asyncio.open_unix_connection(base)
        writer.write(b"CONNECT 52\nping")
        assert (await reader.readline()).startswith(b"OK ")
        assert await asyncio.wait_for(seen, 10) == b"ping"
        writer.close()
    finally:
        transport.close()


def test_the_hand_encoded_signal_is_what_msgpack_writes():
    import msgpack

    for version in (None, "", "0.1.0", "v" * 31, "v" * 32, "é" * 200, "x" * 300, "x" * 65535):
        expected = {"version": protocol.PROTOCOL_VERSION, **({"runtime": version} if version else {})}
        assert protocol.ready_signal(version) == msgpack.packb(expected, use_bin_type=True), version
    with pytest.raises(ValueError, match="64 KiB"):
        protocol.ready_signal("x" * 65536)


def test_the_loop_adopts_the_early_listener_as_a_socket(short_dir):
    base = str(short_dir / "v.sock")
    raw = ready.listen(base)
    fd = raw.fileno()
    adopted = ready.adopt(raw)
    try:
        assert isinstance(adopted, socket.socket) and adopted.fileno() == fd
        assert (adopted.family, adopted.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
        assert raw.fileno() == -1  # detached: one owner for the descriptor
        assert ready.adopt(adopted) is adopted
    finally:
        adopted.close()
