"""The smallest aleph program: a plain ASGI callable, no dependencies.

Run as a node runs it: `encoding: plain`, `entrypoint: app` (or `main:app`).
"""

import json
import platform


def greeting(path: str) -> str:
    # A top-level helper used by the entrypoint: plain code runs as a real module.
    return f"Hello from aleph-runtime! You asked for {path}"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await receive()  # the request body (empty for GET)
    if scope["path"] == "/json":
        body = json.dumps({"path": scope["path"], "python": platform.python_version()}).encode()
        content_type = b"application/json"
    else:
        body = (greeting(scope["path"]) + "\n").encode()
        content_type = b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})
