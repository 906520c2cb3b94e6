"""Port 52 listening and the ready signal sent, before the rest of the init is imported.

The protocol asks only that the init listen on port 52 before it signals; the
supervisor then connects there and writes the configuration. The kernel queues that
connection, and the bytes the host writes into it, in the listening socket's backlog
while the interpreter imports asyncio, uvloop and the init (seconds under emulation,
tens of milliseconds on a node): the host prepares and sends the configuration during
the imports rather than after them. So this module needs nothing but the wire format
(which loads msgpack after the signal, protocol.py says why) and _socket, the C module
behind `socket`: socket.py builds four IntEnums from _socket's constants at import, a
third of the instructions the interpreter ran before the signal. The event loop later
adopts the listening socket as a socket.socket (`adopt`).

No loop runs yet: the signal's socket is blocking, with a timeout, so a host that
accepts the connection and never reads cannot hold PID 1.
"""

from __future__ import annotations

import _socket
import os

from aleph_runtime import __version__, protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the signal
if TYPE_CHECKING:
    import socket

#: How long the signal's connect and write may take before PID 1 gives up on it.
SEND_TIMEOUT = 10.0
#: Connections the kernel queues on port 52 before the loop accepts them.
BACKLOG = 128


class Early:
    """What main() managed before the imports: the listening socket, and whether the
    host has the signal; else the problem, which the init logs once logging is up."""

    __slots__ = ("listener", "problem", "sent")

    def __init__(self) -> None:
        self.listener: _socket.socket | None = None
        self.sent = False
        self.problem = ""


def listen(uds: str | None) -> _socket.socket:
    """A socket listening on port 52: vsock, or in dev mode the Unix socket `uds`
    (the host's side of Firecracker's hybrid vsock, which the init owns then). A bare
    _socket.socket: `adopt` makes it a socket.socket for the loop."""
    if uds:
        try:  # noqa: SIM105 - contextlib would import collections before the signal
            os.unlink(uds)
        except FileNotFoundError:
            pass
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        address: object = uds
    else:
        listener = _socket.socket(_socket.AF_VSOCK, _socket.SOCK_STREAM)
        address = (_socket.VMADDR_CID_ANY, protocol.INIT_PORT)
    try:
        listener.bind(address)
        listener.listen(BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def adopt(listener: _socket.socket) -> socket.socket:
    """`listener` as the socket.socket asyncio wants (the same descriptor)."""
    import socket

    if isinstance(listener, socket.socket):
        return listener
    return socket.socket(listener.family, listener.type, fileno=listener.detach())


def send(uds: str | None, timeout: float = SEND_TIMEOUT) -> None:
    """Send the ready signal to host port 52 and close; OSError when it could not."""
    if uds:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        address: object = f"{uds}_{protocol.INIT_PORT}"
    else:
        sock = _socket.socket(_socket.AF_VSOCK, _socket.SOCK_STREAM)
        address = (protocol.HOST_CID, protocol.INIT_PORT)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(protocol.ready_signal(__version__))
    finally:
        sock.close()
