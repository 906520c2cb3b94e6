"""A local stand-in for the init, speaking the real format on a Unix socket: the hybrid
vsock control lines (`CONNECT 52` in, `OK <port>` out) then one msgpack request read
with a streaming unpacker, answered with the protocol's msgpack maps. It exists only
because the real init is written in parallel; it answers by path so the HTTP front's
rules can each be exercised."""

from __future__ import annotations

import asyncio
import contextlib
import os

from aleph_runtime import protocol


class FakeInit:
    def __init__(self, uds_path: str | os.PathLike):
        self.uds_path = str(uds_path)
        self.scopes: list[dict] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> FakeInit:
        self._server = await asyncio.start_unix_server(self._serve, path=self.uds_path, limit=2**20)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds_path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            port = protocol.parse_connect_line(await reader.readline())
            writer.write(protocol.ok_line(port))
            unpacker = protocol.new_unpacker()
            request = None
            while request is None:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                unpacker.feed(chunk)
                for obj in unpacker:
                    request = obj
                    break
            scope = request["scope"]
            self.scopes.append(scope)
            answer = await self.answer(scope)
            if answer:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer(self, scope: dict) -> bytes:
        if scope["type"] == "aleph.message":
            message = scope["body"]
            if message.get("raise"):
                return protocol.error_answer(
                    "ValueError: bad event", "Traceback (most recent call last):\nValueError: bad event\n"
                )
            return protocol.event_answer({"received": message.get("item_hash"), "raw": b"bytes"})
        path = scope["path"]
        if path == "/raise":
            return protocol.error_answer(
                "ZeroDivisionError: division by zero",
                'Traceback (most recent call last):\n  File "main.py", line 1\nZeroDivisionError: division by zero\n',
                output="printed before the error\n",
            )
        if path == "/initfail":
            return protocol.init_error_answer("the supervisor's scope has a body that is float, not bytes")
        if path == "/empty":
            return b""
        if path == "/slow":
            await asyncio.sleep(30)
        if path == "/garbage":
            return b"\xc1\xc1\xc1"
        if path == "/badheaders":
            return protocol.run_answer(200, [[b"x-bad", b"\xff\xfe"]], b"x")
        if path == "/missing":
            return protocol.run_answer(
                404, [[b"content-type", b"text/plain"], [b"x-program", b"1"]], b"no such page"
            )
        if path.startswith("/failing/"):
            # What the init answers for an executable that exits before it serves.
            text = "502: the program exited with status 127 before serving; its last output:\n"
            text += f"{path[9:]}: not found\n"
            return protocol.run_answer(502, [[b"content-type", b"text/plain; charset=utf-8"]], text.encode())
        if path == "/length":
            return protocol.run_answer(
                200, [[b"Content-Length", b"5"], [b"content-type", b"text/plain"]], b"hello"
            )
        headers = [
            [b"Content-Type", b"text/plain; charset=utf-8"],
            [b"Content-Encoding", b"gzip"],
            [b"transfer-encoding", b"chunked"],
            [b"Vary", b"Accept"],
            [b"X-Custom", "caf\u00e9".encode()],
            [b"set-cookie", b"a=1"],
            [b"set-cookie", b"b=2"],
        ]
        return protocol.run_answer(
            201 if scope["method"] == "POST" else 200, headers, b"hello " + scope["body"]
        )
