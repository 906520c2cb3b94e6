"""Child processes the host tools start (QEMU, Redis, a container) must not outlive them,
and what owns one asks it the same two questions (`OwnsProcess`)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the kernel sends `sig` to the child when its parent dies.

    Children run in sessions of their own (a terminal's Ctrl-C must reach only the tool,
    which stops them in order), so nothing else would take them down if the tool is
    killed outright.
    """

    def preexec() -> None:  # runs in the child between fork and exec
        # No libc or no prctl: the child just lacks the safety net; it must still start.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class OwnsProcess:
    """What is one child process of ours once started (`process`): when it ends, and whether it runs."""

    process: asyncio.subprocess.Process | None = None

    async def wait(self) -> int | None:
        """The process's exit status once it has ended (None if never started)."""
        if self.process is None:
            return None
        return await self.process.wait()

    @property
    def running(self) -> bool:
        """Started and not ended yet."""
        return self.process is not None and self.process.returncode is None
