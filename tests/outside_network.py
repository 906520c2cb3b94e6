"""What a container's network must reach and what it must not, made on this machine.

- `outside(code)`: a Python process in a network namespace of its own, joined by a veth
  pair whose host end is OUTSIDE_HOST and whose far end is OUTSIDE_SERVER (TEST-NET-3: no
  traffic leaves this machine). A container's pasta reaches it as it would reach the
  internet, through this machine's own sockets and routes.
- `LoopbackServer`: a TCP server on this machine's 127.0.0.1 that counts its connections:
  what no container may reach.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

OUTSIDE_HOST, OUTSIDE_SERVER = "203.0.113.1", "203.0.113.2"

#: Run first in the outside namespace: its end of the veth pair gets OUTSIDE_SERVER
#: (sys.argv[1]) once the host has moved it in. `code` follows and prints "ready" once it serves.
_PROLOGUE = textwrap.dedent(
    """
    import subprocess, sys, time
    while subprocess.run(["ip", "link", "show", "eth0"], capture_output=True).returncode:
        time.sleep(0.01)
    for command in (["ip", "addr", "add", sys.argv[1] + "/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                    ["ip", "link", "set", "lo", "up"]):
        subprocess.run(command, check=True)
    """
)


@contextlib.contextmanager
def outside(code: str, *args: str) -> Iterator[subprocess.Popen]:
    """`code` running at OUTSIDE_SERVER (its sys.argv: the address, then `args`), once it said "ready"."""
    server = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-c", _PROLOGUE + textwrap.dedent(code), OUTSIDE_SERVER, *args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    veth = "alct" + secrets.token_hex(4)
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{server.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "the outside namespace was not made"
            time.sleep(0.005)
        for command in (
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(server.pid)],
            ["ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", veth],
            ["ip", "link", "set", veth, "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        assert server.stdout.readline() == "ready\n"
        yield server
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


class LoopbackServer:
    """A TCP server on the host's 127.0.0.1 that counts its connections."""

    def __init__(self, host: str = "127.0.0.1"):
        self.socket = socket.create_server((host, 0))
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self.socket.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with connection:
                connection.sendall(b"host-loopback\n")

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.socket.close()
