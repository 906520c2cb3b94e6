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

The bridge accepts its clients itself (guest/sockets.py's `Acceptor`), and the host
connections come from the transport: no socket of either side sits on descriptors 0-2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from aleph_runtime import protocol
from aleph_runtime.guest.sockets import Acceptor

logger = logging.getLogger(__name__)

OpenHostConnection = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Half(asyncio.Protocol):
    """One side of a forwarded connection; `peer` is the other side."""

    def __init__(self, pair: _Pair):
        self.pair = pair
        self.peer: _Half | None = None
        self.transport: asyncio.Transport | None = None
        self.got_eof = False
        self.closed = False
        self._pending: list[bytes] = []

    # Data from this side goes to the peer's transport.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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
    def __init__(self):
        self.client = _Half(self)
        self.host = _Half(self)
        self.host_writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        for half in (self.client, self.host):
            if half.transport is not None and not half.transport.is_closing():
                half.transport.close()

    async def connect(self, client: socket.socket, open_host_connection: OpenHostConnection) -> None:
        """Serve the accepted `client` socket, then open its host connection and link them."""
        try:
            transport, _protocol = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self.client, client
            )
        except OSError as error:
            logger.warning("guest API: could not serve a client connection: %s", error)
            client.close()
            return
        self.client.transport = self.client.transport or transport  # connection_made may come later
        try:
            reader, writer = await open_host_connection(protocol.GUEST_API_PORT)
        except Exception as error:  # noqa: BLE001 - the host API is down: drop this client only
            logger.warning("guest API: cannot reach the host on port %d: %s", protocol.GUEST_API_PORT, error)
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


#: Clients the kernel queues on the bridge's socket before the init accepts them.
BACKLOG = 128


async def start_guest_api_bridge(
    open_host_connection: OpenHostConnection, socket_path: str = protocol.GUEST_API_SOCKET
) -> Acceptor:
    """Listen on `socket_path` (replacing a stale socket); forward each connection to host
    port 53. close() on the result stops it."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def new_connection(client: socket.socket) -> None:
        task = loop.create_task(_Pair().connect(client, open_host_connection))
        tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(tasks.discard)

    directory = os.path.dirname(socket_path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_path)
        # Programs may drop privileges; the old socat socket was reachable by all.
        with contextlib.suppress(OSError):
            os.chmod(socket_path, 0o777)
        listener.listen(BACKLOG)
        acceptor = Acceptor(listener, new_connection, "guest API bridge")
    except BaseException:
        listener.close()
        raise
    logger.debug("guest API bridge listening on %s", socket_path)
    return acceptor
