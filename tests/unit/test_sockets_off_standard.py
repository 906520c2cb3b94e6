"""No socket of the init sits on descriptors 0-2, even while a program has one closed
(guest/sockets.py): the guest-API bridge's listener, the clients it accepts, the host
connections it opens, and a socket moved by hand. Each check runs in a child process,
which may close its own descriptor 1, under both event loops."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, socket, sys

    from aleph_runtime.guest.guest_api_bridge import start_guest_api_bridge
    from aleph_runtime.guest.sockets import above_standard
    from aleph_runtime.guest.transport import UnixTransport

    base, report, loop_name = sys.argv[1:]
    sockets_on_standard = {}

    def check(step):
        found = []
        for fd in (0, 1, 2):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    found.append(fd)
            except OSError:
                pass
        sockets_on_standard[step] = found

    async def main():
        host_connections = asyncio.Queue()
        await asyncio.start_unix_server(lambda r, w: host_connections.put_nowait(w), f"{base}_53")
        transport = UnixTransport(base)

        os.close(1)  # as a program inside the init may
        moved = above_standard(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        check("moved by hand")
        moved.close()

        os.close(1)
        bridge = await start_guest_api_bridge(transport.open_host_connection, f"{base}-api")
        check("the bridge's listener")

        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the program's own
        os.close(1)
        client.connect(f"{base}-api")
        await asyncio.wait_for(host_connections.get(), 10)  # accepted, host reached
        check("a client the bridge accepted, and its host connection")

        os.close(1)
        _reader, writer = await transport.open_host_connection(53)
        check("a host connection")
        writer.close()
        client.close()
        bridge.close()

    if loop_name == "uvloop":
        from aleph_runtime.guest.event_loop import new_event_loop
        loop = new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    with open(report, "w") as file:
        json.dump(sockets_on_standard, file)
    """
)


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_no_socket_of_the_init_lands_on_a_closed_standard_descriptor(short_dir, loop_name):
    report = short_dir / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(short_dir / "v.sock"), str(report), loop_name],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    found = json.loads(report.read_text())
    assert len(found) == 4 and all(not fds for fds in found.values()), found
