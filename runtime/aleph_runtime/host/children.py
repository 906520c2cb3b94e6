"""Child processes the host tools start (QEMU, Redis) must not outlive them."""

from __future__ import annotations

import contextlib
import ctypes
import signal
from collections.abc import Callable

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
