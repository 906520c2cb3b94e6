"""An ASGI program that misbehaves on demand, for the init's guardrail tests.

/hang never answers (and counts the calls cancelled under it); /endless streams
forever (counting its chunks); /close-stdio closes descriptors 1 and 2 as a sloppy
program does; /print writes to both; /big?n= answers n bytes; /stats tells the counts.
"""

import asyncio
import json
import os
import sys

stats = {"hanging": 0, "cancelled": 0, "chunks": 0, "streams_ended": 0}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    if path == "/hang":
        stats["hanging"] += 1
        try:
            # A sleep the loop holds on to, as a real wait (a database, a socket) is: an
            # Event nobody references would let the garbage collector end the task.
            await asyncio.sleep(86400)
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
        finally:
            stats["hanging"] -= 1
    if path == "/endless":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [[b"content-type", b"text/event-stream"]],
            }
        )
        filler = b"data: " + b"x" * 65536
        try:
            while True:
                # A new object each time, as a real stream's events are.
                chunk = filler + b"%d\n\n" % stats["chunks"]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                stats["chunks"] += 1
                await asyncio.sleep(0)
        finally:
            stats["streams_ended"] += 1
    if path == "/close-stdio":
        os.close(1)
        os.close(2)
        body = b"closed"
    elif path == "/print":
        print("a line from the program on stdout", flush=True)
        print("a line from the program on stderr", file=sys.stderr, flush=True)
        body = b"printed"
    elif path == "/big":
        body = b"b" * int(scope["query_string"].decode() or "0")
    elif path == "/stats":
        body = json.dumps(stats).encode()
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": [[b"content-type", b"text/plain"]]})
    await send({"type": "http.response.body", "body": body})
