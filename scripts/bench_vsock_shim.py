"""Run an init that speaks AF_VSOCK (today's aleph-vm init1.py) over dev mode's Unix sockets.

Usage: `python3 -OO bench_vsock_shim.py /path/to/init1.py`, with ALEPH_VSOCK_UDS set.
Used by scripts/bench_dev.py (`--against`) so today's runtime can be driven by the same
host-side client as ours, as PID 1 of the same sandbox, with no VM: vsock is not
namespaced, and the real /dev/vsock must never be used outside a VM.

What it maps, as Firecracker's hybrid vsock does on the host side:
- a listening vsock socket on port P: the Unix socket `<base>` (only port 52 is served);
  each accepted connection first gets the host's `CONNECT P\\n` line read off it and
  answered with `OK <n>\\n`, before the init sees the connection;
- a connection to (CID 2, port P): the Unix socket `<base>_P`.
The handshake costs a few system calls per connection, which today's init pays here
and not in a VM: the comparison is, if anything, tilted in its favour.
"""

import contextlib
import os
import runpy
import socket
import sys

_BASE = os.environ["ALEPH_VSOCK_UDS"]
_Socket = socket.socket
_local_ports = iter(range(1 << 30, 1 << 31))


def _read_connect_line(conn: socket.socket) -> None:
    timeout = conn.gettimeout()
    conn.settimeout(10)
    try:
        while True:
            peeked = conn.recv(64, socket.MSG_PEEK)
            newline = peeked.find(b"\n")
            if newline >= 0:
                break
            if not peeked or len(peeked) >= 64:
                raise ConnectionError(f"no CONNECT line: {peeked!r}")
        conn.recv(newline + 1)
        conn.sendall(b"OK %d\n" % next(_local_ports))
    finally:
        conn.settimeout(timeout)


class VsockOverUnix(_Socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        self.mapped = family == socket.AF_VSOCK
        if self.mapped:
            family, proto = socket.AF_UNIX, 0
        super().__init__(family, type, proto, fileno)

    def bind(self, address):
        if self.mapped:
            address = _BASE
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        return super().bind(address)

    def connect(self, address):
        if self.mapped:
            address = f"{_BASE}_{address[1]}"
        return super().connect(address)

    def accept(self):
        conn, address = super().accept()
        if not self.mapped:
            return conn, address
        try:
            _read_connect_line(conn)
        except OSError:
            conn.close()
            raise
        return conn, address


socket.socket = VsockOverUnix

if __name__ == "__main__":
    init = sys.argv[1]
    sys.argv = sys.argv[1:]
    # The init runs as its own __main__ from its own directory, as when executed directly.
    sys.path[0] = os.path.dirname(os.path.abspath(init))
    runpy.run_path(init, run_name="__main__")
