"""What aleph-vm's diagnostic example (examples/example_fastapi) does that local runs
must survive, as a plain ASGI app (no framework): `/crash` calls sys.exit(1) in a
handler, `/state/increment` keeps a counter in `/var/lib/example/storage.json` on its
persistent volume, `/socat` reaches the guest API at `/tmp/socat-socket`. `/break`
leaves a mark on the volume that makes every later start fail (a program that
cannot start any more), and `/env/NAME` answers a variable."""

import asyncio
import json
import os
import sys
from pathlib import Path

STORAGE = Path("/var/lib/example/storage.json")
BROKEN = Path("/var/lib/example/broken")

if BROKEN.exists():
    raise RuntimeError("the volume says this program is broken")


async def guest_api_properties() -> bytes:
    # Asynchronous: in an ASGI program, the init's own loop forwards this socket.
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection("/tmp/socat-socket"), 10)
    try:
        writer.write(b"GET /properties HTTP/1.0\r\nHost: localhost\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answer.split(b"\r\n\r\n", 1)[1]


def increment() -> dict:
    try:
        data = json.loads(STORAGE.read_text())
        data["counter"] += 1
    except FileNotFoundError:
        data = {"counter": 0}
    STORAGE.write_text(json.dumps(data))
    return data


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    status, body = 200, b""
    if path == "/crash":
        sys.exit(1)
    elif path == "/break":
        BROKEN.write_text("yes")
        os._exit(3)
    elif path == "/state/increment":
        body = json.dumps(increment()).encode()
    elif path == "/socat":
        body = await guest_api_properties()
    elif path.startswith("/env/"):
        body = json.dumps(os.environ.get(path[len("/env/") :])).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        status, body = 404, b"not here"
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})
