"""One request mapping for both kinds of program (guest/request.py): the same supervisor
scope reaches a Starlette app in-process and an executable's HTTP server
(tests/programs/http_echo_server.py) as the same request target, headers and body.

The supervisor's scopes are made as it makes them: aiohttp (yarl) decodes the target a
client sent, and that decoded path and query string are what the init receives."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, unquote

import pytest
from yarl import URL

from aleph_runtime import protocol
from aleph_runtime.guest.asgi import run_cycle
from aleph_runtime.guest.executable import ExecutableProgram, request_head
from aleph_runtime.guest.request import request_from_scope
from tests.helpers import free_port

SERVER = Path(__file__).resolve().parent.parent / "programs" / "http_echo_server.py"

#: Request targets as clients send them, with what a server must then read as its target.
TARGETS = {
    "/p?q=100%25": b"/p?q=100%25",  # a literal percent sign
    "/p?u=%C3%BC": b"/p?u=%C3%BC",  # ü
    "/p?e=%E2%82%AC": b"/p?e=%E2%82%AC",  # €
    "/p?amp=a%26b&eq=x%3Dy&semi=a%3Bb": b"/p?amp=a%26b&eq=x%3Dy&semi=a%3Bb",  # escaped delimiters
    "/p?plus=a+b&sign=a%2Bb": b"/p?plus=a%20b&sign=a%2Bb",  # '+' is a space, '%2B' a plus
    "/p?space=a%20b": b"/p?space=a%20b",
    "/p?hash=%23x&question=%3Fy": b"/p?hash=%23x&question=?y",
    "/p?bad=%FF&lone=%": b"/p?bad=%FF&lone=%25",  # not UTF-8: kept as it came
    "/p?quote=%22%3C%3E%60": b"/p?quote=%22%3C%3E`",
    "/a%20b/c": b"/a%20b/c",  # a space in the path
    "/%C3%BC/%E2%82%AC": b"/%C3%BC/%E2%82%AC",
    "/h%23x/q%3Fy": b"/h%23x/q%3Fy",  # '#' and '?' in the path stay inside it
    "/100%25/x": b"/100%25/x",
    "/b%5Bx%5D%7C%5E": b"/b[x]|^",
    "/plus+x;y=z": b"/plus+x;y=z",
    "/": b"/",
}


def supervisor_scope(target: str, method: str = "GET", headers=(), body: bytes = b"") -> dict:
    """The scope the supervisor sends for a client's `target`, as the init receives it."""
    url = URL(target, encoded=True)
    scope = protocol.http_scope(method, url.path, url.query_string, list(headers), body)
    return protocol.unpack(protocol.pack(scope))


@pytest.mark.parametrize(("client_target", "server_target"), TARGETS.items())
def test_the_request_target_a_server_reads(client_target, server_target):
    assert request_from_scope(supervisor_scope(client_target)).target == server_target


def test_the_executables_request_head():
    scope = supervisor_scope(
        "/a%20b?q=100%25",
        "post",
        [(b"Host", b"example.org"), (b"Accept-Encoding", b"gzip"), (b"Connection", b"keep-alive")],
        b"hi",
    )
    assert request_head(request_from_scope(scope), 8080) == (
        b"POST /a%20b?q=100%25 HTTP/1.1\r\n"
        b"host: example.org\r\n"
        b"accept-encoding: identity\r\n"
        b"content-length: 2\r\n"
        b"connection: close\r\n\r\n"
    )


def test_a_header_no_parser_lets_through_is_dropped():
    headers = [[b"x-ok", b"1"], [b"bad name", b"2"], [b"x-split", b"a\r\nx-injected: 1"], [b"", b"3"]]
    request = request_from_scope({"type": "http", "path": "/", "headers": headers})
    assert request.headers == [(b"x-ok", b"1")]


async def echo_app(scope, receive, send):
    """What a Starlette app sees of its request, in the echo server's JSON shape."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    request = Request(scope, receive)
    body = await request.body()
    seen = {
        "method": request.method,
        "path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
        "body": body.decode("latin-1"),
        "decoded_path": scope["path"],
        "parsed_query": list(request.query_params.multi_items()),
    }
    await JSONResponse(seen)(scope, receive, send)


#: Headers of the connection, not of the request: an executable's server gets its own.
HOP_BY_HOP = {"content-length", "connection"}

CLIENT_HEADERS = [
    (b"Host", b"example.org"),
    (b"Accept-Encoding", b"gzip, br"),
    (b"X-Latin", "café".encode("latin-1")),
    (b"Cookie", b"a=1; b=2"),
    (b"Connection", b"keep-alive"),
]


@pytest.fixture
async def echo_program(tmp_path):
    port = free_port()
    script = tmp_path / "run.sh"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {SERVER} {port}\n")
    program = ExecutableProgram(str(script), {"PATH": os.environ["PATH"]}, port=port)
    await program.start()
    yield program
    await program.stop(grace=1)


async def test_an_asgi_app_and_an_executable_see_the_same_requests(echo_program):
    disagreements = []
    for target in TARGETS:
        for method, body in (("GET", b""), ("PATCH", b"payload \xff")):
            scope = supervisor_scope(target, method, CLIENT_HEADERS, body)
            answer = protocol.unpack(await run_cycle(echo_app, scope))
            asgi_saw = json.loads(answer["body"]["body"])
            status, _, echoed = await echo_program.request(scope)
            assert status == 200
            executable_saw = json.loads(echoed)
            for saw in (asgi_saw, executable_saw):
                saw["headers"] = [pair for pair in saw["headers"] if pair[0] not in HOP_BY_HOP]
            # What the client meant, by the supervisor's own parsing (yarl).
            url = URL(target, encoded=True)
            assert asgi_saw.pop("decoded_path") == url.path == unquote(executable_saw["path"])
            meant = [list(item) for item in url.query.items()]
            assert asgi_saw.pop("parsed_query") == meant
            assert [
                list(item) for item in parse_qsl(executable_saw["query"], keep_blank_values=True)
            ] == meant
            seen = {key: executable_saw[key] for key in asgi_saw}
            if seen != asgi_saw:
                disagreements.append((method, target, asgi_saw, seen))
    assert not disagreements, disagreements


async def test_a_scope_no_supervisor_sends_is_the_inits_failure_for_both_kinds(echo_program):
    scope = supervisor_scope("/")
    scope["method"] = "GET / HTTP/1.1\r\nx-injected: 1\r\n\r\nGET"
    for answer in (await run_cycle(echo_app, scope), await echo_program.handle(scope)):
        answer = protocol.unpack(answer)
        assert protocol.is_init_failure(answer) and "not an HTTP token" in answer["error"], answer
