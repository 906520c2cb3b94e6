"""Descriptors 0, 1 and 2 stay the init's: a program that closes one must not free it.

An ASGI program runs inside the init: `os.close(1)`, or `open(1, "w")` used as a
context manager, frees descriptor 1, and the next socket the init accepts or opens
would get it. The program's own print() would then write into a supervisor's answer
(and the init's log lines too, if it logged through fd 2). So:

- at start, the init keeps a duplicate of each of 0, 1, 2 (the console in a VM), and
  logs through the duplicate of 2, a descriptor no program knows about;
- `reserve()` puts the duplicate back on any of 0, 1, 2 found closed. The init calls it
  before it accepts connections and after each call, so a freed slot is refilled before
  anything of the init's can land there. It costs one poll() call;
- a program can still free one just before the init gets a socket (from a thread, or
  during a call before the init connects to the host): `move_above_standard` moves a
  socket found there off the slot; guest/sockets.py calls it for every socket of the init.

Whatever fills 0, 1 and 2 is inherited: children (the executable, the program's own
subprocesses) start with them open, as they would under any other init.
"""

from __future__ import annotations

import os
import select

_STANDARD = (0, 1, 2)
#: A private duplicate of each standard descriptor as the init found it, close-on-exec.
_originals: dict[int, int] = {}


def _open_devnull_on(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    if devnull != fd:
        os.dup2(devnull, fd)  # inheritable, as dup2 makes it
        os.close(devnull)
    else:
        # os.open made it close-on-exec: children would start with `fd` closed.
        os.set_inheritable(fd, True)


def setup() -> int:
    """Fill any closed standard descriptor, keep duplicates; the descriptor to log through."""
    if not _originals:
        for fd in _STANDARD:
            try:
                os.fstat(fd)
            except OSError:
                # Started without it: /dev/null, so no later open() can land here.
                _open_devnull_on(fd)
        for fd in _STANDARD:
            # os.dup gives a descriptor above 2 (they are all open) that is not inherited.
            _originals[fd] = os.dup(fd)
    return _originals[2]


def reserve() -> None:
    """Put the original back on every standard descriptor a program closed.

    One poll() tells which are closed (POLLNVAL): it runs for every connection."""
    global _poller
    if _poller is None:
        _poller = select.poll()
        for fd in _STANDARD:
            _poller.register(fd, 0)
    for fd, events in _poller.poll(0):
        if events & select.POLLNVAL:
            original = _originals.get(fd)
            if original is None:
                _open_devnull_on(fd)
            else:
                os.dup2(original, fd)  # inheritable: the executable's children get it


_poller: select.poll | None = None


def move_above_standard(fd: int) -> int:
    """`fd`'s open file on a descriptor above 2 (close-on-exec), `fd` closed and
    refilled (`reserve`); the new descriptor. For an init's socket found on 0, 1 or 2."""
    import fcntl  # only ever needed after a program closed one of them

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    reserve()
    return moved
