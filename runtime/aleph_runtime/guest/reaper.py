"""Zombie reaping for PID 1, without stealing the exit status of our own children.

PID 1 adopts every orphaned process and must wait() for it, or zombies pile up. But
the children the init starts itself (debug commands, the executable program, sshd)
are waited for by the event loop's child watcher, which needs their exit status. So
we peek (WNOWAIT) before reaping, and leave the pids registered in `tracked` alone.
"""

from __future__ import annotations

import os

#: Pids whose exit status someone else (the event loop's watcher) will collect.
tracked: set[int] = set()


def reap_orphans() -> int:
    """Reap every exited child that nobody tracks; return how many were reaped."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in tracked:
            # A tracked child is first in line: its owner will reap it, we try again later.
            return reaped
        try:
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:
            pass
