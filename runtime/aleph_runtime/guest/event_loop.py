"""The guest's event loop: uvloop, spawning subprocesses the standard library's way.

uvloop (0.23) hands a child's stdio to libuv as duplicates it has made inheritable, and
the libuv it bundles no longer closes those duplicates in the child: every process a
program starts with asyncio.create_subprocess_* inherits stray copies of its own pipes
(and of /dev/null), and passes them on to whatever it starts. A script that leaves a
daemon behind (`dockerd &`, `setsid -f server`) then holds the program's pipe open, and
the program's `communicate()` waits for that daemon to exit: for ever. The standard
library's Popen closes every descriptor it is not asked to pass (close_fds), so this
loop spawns through it, with asyncio's own subprocess transport, and learns of the exit
from a pidfd on the loop: no thread, no SIGCHLD handler, and no waitpid(-1) that could
take another child's status. Everything else (sockets, pipes, timers) stays uvloop's.

This module imports uvloop: import it only on the path that uses it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from asyncio import unix_events
from typing import Any

import uvloop

from aleph_runtime.guest import linux


class GuestLoop(uvloop.Loop):
    """uvloop, whose subprocesses inherit only what they are given."""

    async def subprocess_exec(
        self, protocol_factory, program, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=False, shell=False, bufsize=0, encoding=None,
        errors=None, text=None, **kwargs,
    ):  # fmt: skip
        if shell:
            raise ValueError("shell must be False")
        _check_binary(universal_newlines, bufsize, encoding, errors, text)
        return await self._spawn(protocol_factory, [program, *args], False, stdin, stdout, stderr, kwargs)

    async def subprocess_shell(
        self, protocol_factory, cmd, *, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=False, shell=True, bufsize=0, encoding=None,
        errors=None, text=None, **kwargs,
    ):  # fmt: skip
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if not shell:
            raise ValueError("shell must be True")
        _check_binary(universal_newlines, bufsize, encoding, errors, text)
        return await self._spawn(protocol_factory, cmd, True, stdin, stdout, stderr, kwargs)

    async def _spawn(self, protocol_factory, args, shell, stdin, stdout, stderr, kwargs: dict[str, Any]):
        protocol = protocol_factory()
        waiter = self.create_future()
        # asyncio's Popen-based transport: close_fds, pass_fds, preexec_fn as the standard
        # library has them, argument for argument.
        transport = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, 0, waiter=waiter, **kwargs
        )
        pid = transport.get_pid()
        # The program waits for this child: PID 1's orphan reaper must leave its status alone.
        linux.MANAGED_CHILDREN.add(pid)
        self._watch_exit(pid, transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport, protocol

    def _watch_exit(self, pid: int, transport: unix_events._UnixSubprocessTransport) -> None:
        # The transport's Popen is the one to collect the status: its close() polls (and
        # so may reap) the child too, and then keeps the code for us.
        popen = transport._proc
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # A kernel older than 5.3: one thread per child, as asyncio's default watcher.
            thread = threading.Thread(target=self._wait_in_thread, args=(pid, transport), daemon=True)
            thread.start()
            return

        def exited() -> None:
            self.remove_reader(pidfd)
            os.close(pidfd)
            self._exited(pid, transport, popen.wait())  # it has exited: no wait

        self.add_reader(pidfd, exited)

    def _wait_in_thread(self, pid: int, transport: unix_events._UnixSubprocessTransport) -> None:
        returncode = transport._proc.wait()
        self.call_soon_threadsafe(self._exited, pid, transport, returncode)

    def _exited(self, pid: int, transport: unix_events._UnixSubprocessTransport, returncode: int) -> None:
        linux.MANAGED_CHILDREN.discard(pid)
        # A turn later, as asyncio does: output already read is delivered first.
        self.call_soon(transport._process_exited, returncode)


def _check_binary(universal_newlines, bufsize, encoding, errors, text) -> None:
    if universal_newlines or text:
        raise ValueError("universal_newlines must be False")
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


def new_event_loop() -> asyncio.AbstractEventLoop:
    return GuestLoop()
