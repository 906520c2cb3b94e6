"""An HTTP server (an executable program) that misbehaves on demand, on 127.0.0.1:PORT.

/hang never answers (it counts connections open and closed under it); /endless-chunked,
/endless-eof and /endless-head never end their body or header block; /huge-length
announces a body of a terabyte; /stats tells the counts; anything else answers "ok".
"""

import asyncio
import json
import sys

stats = {"hanging": 0, "closed": 0, "written": 0, "reset": 0}


async def endless(writer, head, piece):
    writer.write(head)
    while True:
        writer.write(piece)
        stats["written"] += len(piece)
        await writer.drain()


async def handle(reader, writer):
    try:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1].decode() if len(line.split()) > 1 else "/"
        if path == "/hang":
            stats["hanging"] += 1
            try:
                await reader.read()  # until the init closes its end
            finally:
                stats["hanging"] -= 1
                stats["closed"] += 1
            return
        if path == "/endless-chunked":
            piece = b"x" * 65536
            await endless(
                writer,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"10000\r\n" + piece + b"\r\n",
            )
        if path == "/endless-eof":
            await endless(writer, b"HTTP/1.1 200 OK\r\n\r\n", b"y" * 65536)
        if path == "/endless-head":
            await endless(writer, b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"z" * 1000 + b"\r\n")
        if path == "/huge-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
            await endless(writer, b"", b"h" * 65536)
        body = json.dumps(stats).encode() if path == "/stats" else b"ok"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
    except (ConnectionError, OSError):
        stats["reset"] += 1  # the init closed its end in the middle of our answer
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
