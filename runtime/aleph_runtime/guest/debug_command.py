"""Debug commands: `!<command line>` on port 52 runs through a shell, and the answer is
its combined output (docs/protocol.md, section 7).

Reading the command (`read_command`): it has no length, and the host writes it, then
reads until EOF without closing its own side (host/supervisor.py's `command`, as the
tools written for aleph-vm's init1.py do). So the first read is not the command: one
split across two segments would run cut (`rm -rf /data` for `rm -rf /data/cache`). The
command is whole once no byte has come for COMMAND_QUIET_SECONDS, or at EOF where a host
that half-closes still reads the answer (dev mode); never longer than
MAX_COMMAND_BYTES, never waited for beyond COMMAND_READ_SECONDS. A host that left before
the command was whole gets nothing run.

Running it (`command_output`): its output is bounded like a response, and the command
is killed with its process group when the output outgrows that, or when the host gives
up on it (the init cancels the call: guest/call_watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aleph_runtime import protocol
from aleph_runtime.guest import linux, stdio
from aleph_runtime.guest.call_watch import peer_hung_up

logger = logging.getLogger("aleph_runtime.init")


class CommandRefused(Exception):
    """The command is not run; the message says why in one sentence."""


async def read_command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, half_close_passes: bool
) -> str | None:
    """The whole command whose first bytes (`!` included) are `first`; None when the host
    left before it was whole. Raises CommandRefused for one too long, too slow or with a NUL.

    The command's bytes are kept as they came (surrogate escapes for what is not UTF-8),
    so the shell gets exactly what the host wrote."""
    command = bytearray(first[len(protocol.COMMAND_PREFIX) :])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + protocol.COMMAND_READ_SECONDS
    while True:
        if len(command) > protocol.MAX_COMMAND_BYTES:
            raise CommandRefused(f"the command is longer than {protocol.MAX_COMMAND_BYTES} bytes")
        left = deadline - loop.time()
        if left <= 0:
            raise CommandRefused(
                f"the command did not arrive whole within {protocol.COMMAND_READ_SECONDS:g} s"
            )
        try:
            async with asyncio.timeout(min(protocol.COMMAND_QUIET_SECONDS, left)):
                more = await reader.read(protocol.READ_CHUNK)
        except TimeoutError:
            if loop.time() < deadline:
                break  # quiet: the host wrote all of it and waits for the answer
            continue  # the deadline, said above
        except OSError:
            return None  # reset: the host is gone
        if not more:
            # EOF: the end of the command where the host still reads (a half-close);
            # else (vsock: Firecracker turns any EOF into a full shutdown) it left.
            if not half_close_passes or peer_hung_up(writer):
                return None
            break
        command += more
    if b"\0" in command:
        raise CommandRefused("the command holds a NUL byte, which no shell argument can")
    return command.decode("utf-8", "surrogateescape")


def refusal(error: CommandRefused) -> bytes:
    """A refused command's answer: raw text, as a command's output is."""
    return f"{protocol.INIT_FAILURE}{error}\n".encode()


async def command_output(command: str, limit: int) -> bytes:
    """A debug command's combined output, cut at `limit` bytes; killed (with its process
    group) when it outgrows it, or when the awaiting task is cancelled."""
    logger.info("Debug command: %s", command.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    stdio.reserve()  # the command's pipes must not land on a 0, 1 or 2 a program closed
    process = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    linux.MANAGED_CHILDREN.add(process.pid)  # its status is the loop's watcher's, not the reaper's
    output = bytearray()
    try:
        while chunk := await process.stdout.read(protocol.READ_CHUNK):
            output += chunk
            if len(output) > limit:
                del output[limit:]
                output += f"\n[output cut: {protocol.response_too_large(limit)}]\n".encode()
                _sigkill_group(process.pid)
                # Its pipe stops being read here, maybe paused by flow control with
                # the EOF unseen, and asyncio's wait() also waits for the pipes to
                # close: close them, or wait() can hang on a full buffer.
                process._transport.close()
                break
        await process.wait()
    except asyncio.CancelledError:
        _sigkill_group(process.pid)
        raise
    finally:
        linux.MANAGED_CHILDREN.discard(process.pid)
    if process.returncode:
        # Today's runtime prefixes a failing command's output with the error.
        output[0:0] = f"Command '{command}' returned non-zero exit status {process.returncode}.\n".encode(
            "utf-8", "surrogateescape"
        )
    return bytes(output)


def _sigkill_group(pid: int) -> None:
    """SIGKILL the command's process group (the shell's session: it leads it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
