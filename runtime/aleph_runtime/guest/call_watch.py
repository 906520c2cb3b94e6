"""The watch that cancels a call whose host left.

The supervisor gives up on a call by closing its connection (its `seconds` passed, its
client went away); it never sends anything more. A call that lasts is watched for
that: when the host has closed the connection, the call's work is cancelled, which
drops its body and response buffers, and closes an executable's connection to the
program or kills a debug command.

Most calls answer before the watch would start: a call is watched only once it has
run for WATCH_AFTER to 2 x WATCH_AFTER seconds (`CallWatches.watch_lasting_calls`),
so a quick one costs a set insertion, not a task or a timer.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Awaitable

from aleph_runtime import protocol

logger = logging.getLogger("aleph_runtime.init")

#: A call is watched for its host's going away once it has run this long (up to twice).
WATCH_AFTER = 0.25
#: How often a half-closed call's connection is checked for the host's full close.
HALF_CLOSED_POLL_INTERVAL = 1.0


class CallWatches:
    """The calls in progress, each with its watch."""

    def __init__(self, half_close_passes: bool):
        #: Whether a host that shuts down only its writing side reaches the init as such
        #: (`Transport.half_close_passes`): then EOF alone does not mean it left.
        self.half_close_passes = half_close_passes
        self._calls: set[CallWatch] = set()

    async def answer_of(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, work: Awaitable[bytes]
    ) -> bytes | None:
        """What `work` returns, awaited in the current task while the connection is
        watched; None when the host closed the connection first (`work` is cancelled)."""
        handler = asyncio.current_task()
        watch = CallWatch(reader, writer, handler, self.half_close_passes)
        self._calls.add(watch)
        try:
            return await work
        except asyncio.CancelledError:
            if not watch.host_gone:
                raise
            handler.uncancel()
            logger.info("The host closed a call's connection before the answer: the call is cancelled")
            return None
        finally:
            self._calls.discard(watch)
            watch.stop()

    async def watch_lasting_calls(self) -> None:
        """Start watching each call that has run for WATCH_AFTER to 2 x WATCH_AFTER seconds; forever."""
        while True:
            await asyncio.sleep(WATCH_AFTER)
            for watch in list(self._calls):
                if watch.aged:
                    watch.start()
                else:
                    watch.aged = True


class CallWatch:
    """Cancels a call's task when the host has closed the call's connection."""

    __slots__ = ("aged", "call", "half_close_passes", "host_gone", "reader", "task", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        call: asyncio.Task,
        half_close_passes: bool,
    ):
        self.reader = reader
        self.writer = writer
        self.call = call
        self.half_close_passes = half_close_passes
        self.aged = False
        self.task: asyncio.Task | None = None
        self.host_gone = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            await host_gone(self.reader, self.writer, self.half_close_passes)
        except Exception:
            # A bug of ours must not cost the call its answer.
            logger.exception("Watching a call's connection failed")
            return
        self.host_gone = True
        self.call.cancel()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def host_gone(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close_passes: bool
) -> None:
    """Return when the host has closed the connection; bytes it sends meanwhile are dropped.

    The supervisor never half-closes a call, but where a half-close can arrive (a Unix
    socket, in dev mode) a client that shuts down only its writing side still reads
    the answer: there EOF is not enough, the peer must have hung up (POLLHUP), which a
    half-closed connection shows only once it is closed.
    """
    try:
        while await reader.read(protocol.READ_CHUNK):
            pass
    except OSError:
        return  # reset: gone
    if not half_close_passes:
        return
    while not peer_hung_up(writer):
        await asyncio.sleep(HALF_CLOSED_POLL_INTERVAL)


def peer_hung_up(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer has closed the connection both ways (or it is ours no more)."""
    sock = writer.get_extra_info("socket")
    if sock is None or writer.is_closing():
        return True
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
    except (OSError, ValueError):
        return True  # no descriptor left: closed
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, events in poller.poll(0))
