"""Small helpers shared by the tests (imported as `tests.helpers`)."""

from __future__ import annotations

import io
import socket
import zipfile


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive holding these files (name: content), as bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()
