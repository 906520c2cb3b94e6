"""Unix-socket housekeeping shared by the host side (the supervisor client, the vsock backend)."""

from __future__ import annotations

import asyncio
import contextlib
import os


async def close_unix_server(server: asyncio.AbstractServer | None, path: str | os.PathLike) -> None:
    """Stop a Unix-socket server and remove its socket file (both may already be gone)."""
    if server is None:
        return
    server.close()
    await server.wait_closed()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
