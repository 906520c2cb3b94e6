"""The init's sockets never sit on descriptors 0, 1 or 2.

An ASGI program runs inside the init and may close 0, 1 or 2 whenever it likes
(guest/stdio.py): the next socket the kernel hands the init would take that number.
The program's print() would then go into a host's connection, and uvloop never closes
0-2, so that connection would never end and the descriptor would stay a dead socket.
So every socket the init listens, accepts or connects with passes `above_standard` as
soon as it exists, and the init accepts connections itself (`Acceptor`) rather than
through the loop's servers, which hand a new socket to a transport unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from aleph_runtime.guest import stdio

logger = logging.getLogger("aleph_runtime.init")


def above_standard(sock: socket.socket) -> socket.socket:
    """`sock`, or when it sits on 0, 1 or 2 the same socket moved above 2 (that slot refilled)."""
    if sock.fileno() > 2:
        return sock
    timeout = sock.gettimeout()
    family, kind, proto = sock.family, sock.type, sock.proto
    moved = socket.socket(family, kind, proto, fileno=stdio.move_above_standard(sock.detach()))
    moved.settimeout(timeout)
    return moved


class Acceptor:
    """Accepts on a listening socket from the running loop; each connection, above 2, goes
    to `on_connection`, which must not block (the loop's transports make it non-blocking)."""

    def __init__(self, listener: socket.socket, on_connection: Callable[[socket.socket], None], name: str):
        self.listener: socket.socket | None = above_standard(listener)
        self.listener.setblocking(False)
        self.on_connection = on_connection
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.listener.fileno(), self._accept_one)

    def _accept_one(self) -> None:
        # A program may have closed 0, 1 or 2: refill them first, so that its print()
        # still reaches the console and the connections need no moving.
        stdio.reserve()
        # One connection per readiness event: the loop calls again while more wait, and
        # trying for another would cost a failed accept() per connection when they come
        # one by one.
        try:
            connection, _address = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            logger.error("%s: accept failed: %s", self.name, error)
            return
        self.on_connection(above_standard(connection))

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections already accepted go on)."""
        if self.listener is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None

    async def wait_closed(self) -> None:
        """As asyncio's servers have it: nothing to wait for once close() returned."""
