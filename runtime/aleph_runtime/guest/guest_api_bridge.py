"""/tmp/socat-socket inside the VM, forwarded to the host's guest API on vsock port 53.

Replaces the old init's `socat UNIX-LISTEN:/tmp/socat-socket,fork VSOCK-CONNECT:2:53`
with an in-process asyncio server: each connection is piped both ways to a fresh host
connection, with half-close (EOF on one side is passed on as shutdown(SHUT_WR) on the
other), so HTTP clients that close their write side still get their answer. The SDK's
VmCache and RemoteAccount (aiohttp over a UnixConnector) work through it unchanged.
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
_CHUNK = 256 * 1024

OpenHostConnection = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await reader.read(_CHUNK)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        # One side went away: close both, which ends the other direction's read too.
        writer.close()
        other.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def start_guest_api_bridge(
    open_host_connection: OpenHostConnection, socket_path: str = SOCKET_PATH
) -> asyncio.AbstractServer:
    """Listen on `socket_path` (replacing a stale socket); forward each connection to host port 53."""

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            host_reader, host_writer = await open_host_connection(GUEST_API_PORT)
        except Exception as error:  # noqa: BLE001 - the host API is down: drop this client only
            logger.warning("guest API: cannot reach the host on port %d: %s", GUEST_API_PORT, error)
            await _close(client_writer)
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, host_writer, client_writer), _pipe(host_reader, client_writer, host_writer)
            )
        finally:
            await asyncio.gather(_close(host_writer), _close(client_writer))

    directory = os.path.dirname(socket_path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(forward, path=socket_path)
    # Programs may drop privileges; the old socat socket was reachable by all.
    with contextlib.suppress(OSError):
        os.chmod(socket_path, 0o777)
    logger.debug("guest API bridge listening on %s", socket_path)
    return server
