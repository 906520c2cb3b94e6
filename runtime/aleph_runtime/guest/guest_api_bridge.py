"""/tmp/socat-socket inside the VM, forwarded to the host's guest API on vsock port 53.

Replaces the old init's `socat UNIX-LISTEN:/tmp/socat-socket,fork VSOCK-CONNECT:2:53`
with an in-process forwarder: each connection is piped both ways to a fresh host
connection, with half-close (EOF on one side is passed on as shutdown(SHUT_WR) on the
other), so HTTP clients that close their write side still get their answer. The SDK's
VmCache and RemoteAccount (aiohttp over a UnixConnector) work through it unchanged.

The pipe works at the protocol level: each side's data_received writes straight into
the other side's transport, and a full write buffer pauses reading on the other side
(flow control), with no stream objects or tasks per chunk. That halves the CPU per
forwarded request against a StreamReader/StreamWriter loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

SOCKET_PATH = "/tmp/socat-socket"
GUEST_API_PORT = 53

OpenHostConnection = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Half(asyncio.Protocol):
    """One side of a forwarded connection; `peer` is the other side."""

    def __init__(self, pair: _Pair, made: asyncio.Future | None = None):
        self.pair = pair
        self.made = made
        self.peer: _Half | None = None
        self.transport: asyncio.Transport | None = None
        self.got_eof = False
        self.closed = False
        self._pending: list[bytes] = []

    # Data from this side goes to the peer's transport.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.made is not None and not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self._pending.append(data)  # the host connection is not open yet
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            _write_eof(peer.transport)
            if peer.got_eof:
                self.pair.close()
        return True  # keep our write side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.made is not None and not self.made.done():
            self.made.set_result(None)
        self.pair.close()

    # The peer's transport buffers too much of what we send it: stop reading from it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(Exception):
                self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(Exception):
                self.peer.transport.resume_reading()

    def link(self, peer: _Half) -> None:
        """The peer is connected: pass on what arrived meanwhile."""
        self.peer = peer
        pending, self._pending = self._pending, []
        for data in pending:
            peer.transport.write(data)
        if self.got_eof:
            _write_eof(peer.transport)


def _write_eof(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):
        if transport.can_write_eof():
            transport.write_eof()


class _Pair:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.client = _Half(self, loop.create_future())
        self.host = _Half(self)
        self.host_writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        for half in (self.client, self.host):
            if half.transport is not None and not half.transport.is_closing():
                half.transport.close()

    async def connect(self, open_host_connection: OpenHostConnection) -> None:
        await self.client.made  # connection_made comes after the protocol factory returns
        try:
            reader, writer = await open_host_connection(GUEST_API_PORT)
        except Exception as error:  # noqa: BLE001 - the host API is down: drop this client only
            logger.warning("guest API: cannot reach the host on port %d: %s", GUEST_API_PORT, error)
            self.close()
            return
        transport = writer.transport
        # Python 3.12+ closes a StreamWriter's transport when the writer is collected:
        # keep it as long as the pair lives, though only its transport is used.
        self.host_writer = writer
        if self.client.closed:
            transport.close()
            return
        # From now on the host connection's bytes go straight to our protocol; whatever
        # its StreamReader already holds (nothing, normally: the guest speaks first) too.
        transport.set_protocol(self.host)
        self.host.transport = transport  # type: ignore[assignment]
        self.host.peer = self.client
        self.client.link(self.host)
        buffered = bytes(getattr(reader, "_buffer", b""))
        if buffered:
            self.client.transport.write(buffered)
        if reader.at_eof():
            self.host.eof_received()


async def start_guest_api_bridge(
    open_host_connection: OpenHostConnection, socket_path: str = SOCKET_PATH
) -> asyncio.AbstractServer:
    """Listen on `socket_path` (replacing a stale socket); forward each connection to host port 53."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def new_connection() -> _Half:
        pair = _Pair(loop)
        task = loop.create_task(pair.connect(open_host_connection))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return pair.client

    directory = os.path.dirname(socket_path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await loop.create_unix_server(new_connection, path=socket_path)
    # Programs may drop privileges; the old socat socket was reachable by all.
    with contextlib.suppress(OSError):
        os.chmod(socket_path, 0o777)
    logger.debug("guest API bridge listening on %s", socket_path)
    return server
