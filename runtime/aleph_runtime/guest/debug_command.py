"""Debug commands: `!<command line>` on port 52 runs through a shell, and the answer is
its combined output (docs/protocol.md, section 7).

`command_output` runs it: its output is bounded like a response, and the command
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
from aleph_runtime.guest import linux

logger = logging.getLogger("aleph_runtime.init")


async def command_output(command: str, limit: int) -> bytes:
    """A debug command's combined output, cut at `limit` bytes; killed (with its process
    group) when it outgrows it, or when the awaiting task is cancelled."""
    logger.info("Debug command: %s", command)
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
