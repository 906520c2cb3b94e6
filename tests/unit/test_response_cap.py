"""Responses are bounded (issue 9, item 2): an ASGI cycle and the executable's HTTP
reader stop at the cap, with an answer naming it, and read no further."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aleph_runtime import protocol
from aleph_runtime.guest.asgi import run_cycle
from aleph_runtime.guest.executable import (
    MAX_RESPONSE_HEAD_BYTES,
    HTTPProtocolError,
    ProgramResponseTooLarge,
    read_response,
)

CAP = 4096


def scope() -> dict:
    return protocol.http_scope("GET", "/")


async def test_an_asgi_body_at_the_cap_passes_and_one_byte_more_is_an_error():
    def app_of(size: int):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a" * (size - 1), "more_body": True})
            await send({"type": "http.response.body", "body": b"a"})

        return app

    ok = protocol.unpack(await run_cycle(app_of(CAP), scope(), max_response_bytes=CAP))
    assert len(ok["body"]["body"]) == CAP
    over = protocol.unpack(await run_cycle(app_of(CAP + 1), scope(), max_response_bytes=CAP))
    assert over["error"] == protocol.response_too_large(CAP)
    assert str(CAP) in over["error"] and "ALEPH_MAX_RESPONSE_BYTES" in over["error"]
    assert over["traceback"]  # the 500's body, never empty


async def test_an_endless_asgi_stream_is_told_the_client_left_and_stops():
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            sent.append(1)

    answer = protocol.unpack(await asyncio.wait_for(run_cycle(app, scope(), max_response_bytes=CAP), 10))
    assert "larger than 4096 bytes" in answer["error"]
    assert len(sent) == CAP // 1000


async def test_an_app_that_swallows_the_error_still_gets_the_cap_answer():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(10):
            with contextlib.suppress(Exception):  # the sloppy app this test is about
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        # A disconnect is what a server reports once it has given up on the client.
        assert (await receive())["type"] in ("http.request", "http.disconnect")

    answer = protocol.unpack(await run_cycle(app, scope(), max_response_bytes=CAP))
    assert answer["error"] == protocol.response_too_large(CAP)


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


@pytest.mark.parametrize(
    "head, body",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", b"c"),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"e"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"k"),
    ],
)
async def test_an_executable_body_at_the_cap_passes_and_one_byte_more_is_refused(head, body):
    def response(size: int) -> bytes:
        payload = body * size
        if b"chunked" in head:
            half = size // 2
            payload = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                half,
                payload[:half],
                size - half,
                payload[half:],
            )
        return (head % size if b"%d" in head else head) + payload

    _, _, read = await read_response(reader_of(response(CAP)), max_bytes=CAP)
    assert read == body * CAP
    with pytest.raises(ProgramResponseTooLarge, match="larger than 4096 bytes"):
        await read_response(reader_of(response(CAP + 1)), max_bytes=CAP)


async def test_a_huge_content_length_is_refused_before_reading_the_body():
    # No body bytes and no EOF: reading any of it would wait forever.
    reader = reader_of(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", eof=False)
    with pytest.raises(ProgramResponseTooLarge):
        await asyncio.wait_for(read_response(reader, max_bytes=CAP), 5)


async def test_an_endless_header_block_is_refused():
    reader = reader_of(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"z" * 1000 + b"\r\n" * 1, eof=False)
    for _ in range(MAX_RESPONSE_HEAD_BYTES // 1000 + 2):
        reader.feed_data(b"X-Filler: " + b"z" * 1000 + b"\r\n")
    with pytest.raises(HTTPProtocolError, match="head is larger"):
        await asyncio.wait_for(read_response(reader, max_bytes=CAP), 5)


def test_an_error_answer_without_a_traceback_carries_the_error_as_the_body():
    answer = protocol.unpack(protocol.error_answer("the init is not serving", ""))
    assert answer["traceback"] == "the init is not serving"
