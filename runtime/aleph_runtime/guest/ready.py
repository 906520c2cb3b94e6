"""Port 52 listening and the ready signal sent, before the rest of the init is imported.

The protocol asks only that the init listen on port 52 before it signals; the
supervisor then connects there and writes the configuration. The kernel queues that
connection, and the bytes the host writes into it, in the listening socket's backlog
while the interpreter imports asyncio, uvloop and the init (seconds under emulation,
tens of milliseconds on a node): the host prepares and sends the configuration during
the imports rather than after them. So this module needs nothing but the socket
module and the wire format; the event loop later adopts the listening socket.

No loop runs yet: the signal's socket is blocking, with a timeout, so a host that
accepts the connection and never reads cannot hold PID 1.
"""

from __future__ import annotations

import contextlib
import os
import socket

from aleph_runtime import __version__, protocol

#: How long the signal's connect and write may take before PID 1 gives up on it.
SEND_TIMEOUT = 10.0
#: Connections the kernel queues on port 52 before the loop accepts them.
BACKLOG = 128


class Early:
    """What main() managed before the imports: the listening socket, and whether the
    host has the signal; else the problem, which the init logs once logging is up."""

    __slots__ = ("listener", "problem", "sent")

    def __init__(self) -> None:
        self.listener: socket.socket | None = None
        self.sent = False
        self.problem = ""


def listen(uds: str | None) -> socket.socket:
    """A socket listening on port 52: vsock, or in dev mode the Unix socket `uds`
    (the host's side of Firecracker's hybrid vsock, which the init owns then)."""
    if uds:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uds)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = uds
    else:
        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        address = (socket.VMADDR_CID_ANY, protocol.INIT_PORT)
    try:
        listener.bind(address)
        listener.listen(BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def send(uds: str | None, timeout: float = SEND_TIMEOUT) -> None:
    """Send the ready signal to host port 52 and close; OSError when it could not."""
    if uds:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = f"{uds}_{protocol.INIT_PORT}"
    else:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        address = (protocol.HOST_CID, protocol.INIT_PORT)
    with sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(protocol.ready_signal(__version__))
