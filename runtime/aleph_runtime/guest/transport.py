"""How the init reaches the host: AF_VSOCK in a VM, a Unix socket in dev mode.

Both present the same thing to the rest of the init: a server on port 52 handing each
accepted connection over as an asyncio stream pair, a way to open a stream to a host
port, and the ready signal.

Production (`VsockTransport`): listen on vsock port 52, connect to (CID 2, port P).
uvloop's transports only take TCP and Unix sockets (an AF_VSOCK socket given to
`connect_accepted_socket` is refused), so we accept on the vsock socket ourselves and
hand each descriptor to the loop as a plain stream socket labelled AF_UNIX: the
kernel's vsock stream supports every call a Unix stream transport makes
(recv/send/shutdown), and the label only picks the transport class. Works the same
with asyncio's default loop.

Development (`UnixTransport`): the host's side of Firecracker's hybrid vsock is a Unix
socket; in dev mode the init owns it. It listens on `<base>`, answers the host's
`CONNECT 52\\n` with `OK <n>\\n` as Firecracker does, and reaches host port P at the
Unix socket `<base>_P`. One host-side client drives Firecracker, the QEMU backend
and dev mode alike.

Both accept connections themselves (guest/sockets.py's `Acceptor`) and pass every socket
they open through `above_standard`: none may sit on descriptors 0-2 (guest/stdio.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from aleph_runtime import protocol
from aleph_runtime.guest import ready
from aleph_runtime.guest.sockets import Acceptor, above_standard

logger = logging.getLogger("aleph_runtime.transport")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Stream buffer limit: big enough for a control line, small enough to keep memory flat.
STREAM_LIMIT = 2**20


async def _streams_for(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)


async def _streams_for_accepted(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An accepted connection's streams, as the loop's own servers make them."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _protocol = await loop.connect_accepted_socket(lambda: protocol, sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _as_stream_socket(sock: socket.socket) -> socket.socket:
    """The same descriptor, labelled AF_UNIX so any event loop accepts it as a stream."""
    sock.setblocking(False)
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=sock.detach())


class Transport:
    """What the init needs from its link to the host."""

    description = "transport"
    #: Whether a host that shuts down only its writing side reaches the init as such (and
    #: still reads): then EOF alone does not mean the host gave up on a call.
    half_close_passes = True
    #: Set once guest/ready.py has signalled the host, before the loop existed.
    ready_sent = False
    _acceptor: Acceptor | None = None
    _listener: socket.socket | None = None

    def _accept(self, listener: socket.socket, serve: Handler) -> None:
        """Accept on `listener` from the loop; `serve` each connection's streams in a task of its own."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()

        async def serve_streams(connection: socket.socket) -> None:
            try:
                reader, writer = await _streams_for_accepted(self._stream_socket(connection))
            except OSError as error:
                logger.error("Could not set up a stream for a host connection: %s", error)
                connection.close()
                return
            await serve(reader, writer)

        def on_connection(connection: socket.socket) -> None:
            task = loop.create_task(serve_streams(connection))
            tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(tasks.discard)

        self._acceptor = Acceptor(listener, on_connection, self.description)

    @staticmethod
    def _stream_socket(connection: socket.socket) -> socket.socket:
        """An accepted connection as the loop's streams take it."""
        return connection

    async def start_server(self, handler: Handler) -> None:
        raise NotImplementedError

    async def open_host_connection(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    async def send_ready(self, payload: bytes) -> None:
        """Send the ready signal to host port 52 and close, as the supervisor expects."""
        try:
            _reader, writer = await self.open_host_connection(protocol.INIT_PORT)
        except OSError as error:
            logger.warning("Could not send the ready signal to the host (%s); serving anyway", error)
            return
        writer.write(payload)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def close(self) -> None:
        if self._listener is not None:  # never adopted: the loop did not get to serve
            self._listener.close()
            self._listener = None
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None


class VsockTransport(Transport):
    # Firecracker turns any EOF of the host's stream into a full shutdown of the guest's
    # (SHUTDOWN with RCV|SEND): on vsock, EOF means the host is gone.
    half_close_passes = False

    def __init__(self, listener: socket.socket | None = None):
        self.port = protocol.INIT_PORT
        self.description = f"vsock port {self.port}"
        self._listener = listener

    async def start_server(self, handler: Handler) -> None:
        # Listening already, unless guest/ready.py could not before the imports.
        listener = ready.adopt(self._listener or ready.listen(None))
        self._listener = None
        self._accept(listener, handler)

    _stream_socket = staticmethod(_as_stream_socket)

    async def open_host_connection(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = above_standard(socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            # A non-blocking connect done by hand: uvloop's sock_connect would try to
            # resolve the (cid, port) pair as a host name.
            try:
                sock.connect((protocol.HOST_CID, port))
            except BlockingIOError:
                connected = loop.create_future()
                loop.add_writer(sock.fileno(), lambda: connected.done() or connected.set_result(None))
                try:
                    await connected
                finally:
                    loop.remove_writer(sock.fileno())
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
        except BaseException:
            sock.close()
            raise
        return await _streams_for(_as_stream_socket(sock))


class UnixTransport(Transport):
    def __init__(self, base_path: str, listener: socket.socket | None = None):
        self.base_path = base_path
        self.port = protocol.INIT_PORT
        self.description = f"Unix socket {base_path} (dev mode)"
        self._listener = listener
        # Firecracker names each host connection by a local port number; so do we.
        self._local_ports = itertools.count(1 << 30)

    async def start_server(self, handler: Handler) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await reader.readuntil(b"\n")
                port = protocol.parse_connect_line(line)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, protocol.ProtocolError) as error:
                logger.warning("Refused a host connection that did not start with CONNECT: %s", error)
                writer.close()
                return
            if port != self.port:
                # Firecracker closes the connection when nothing listens on that guest port.
                writer.close()
                return
            writer.write(protocol.ok_line(next(self._local_ports)))
            await handler(reader, writer)

        # Listening already, unless guest/ready.py could not before the imports.
        listener = ready.adopt(self._listener or ready.listen(self.base_path))
        self._listener = None
        self._accept(listener, accept)

    async def open_host_connection(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = above_standard(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, f"{self.base_path}_{port}")
        except BaseException:
            sock.close()
            raise
        return await _streams_for(sock)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.base_path)


def transport_for(uds_path: str | None, listener: socket.socket | None = None) -> Transport:
    """Dev mode when a Unix socket base path is given (`Settings.uds`), else vsock; on
    `listener` when port 52 already listens (guest/ready.py)."""
    return UnixTransport(uds_path, listener=listener) if uds_path else VsockTransport(listener=listener)
