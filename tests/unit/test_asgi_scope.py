"""The request the init maps the supervisor's scope to (guest/request.py), and the ASGI
scope made of it: query string, raw path and headers as a server (uvicorn) would give
them, from what the supervisor really sends.

The supervisor's query string and path come from aiohttp, that is from yarl: the tests
decode real request targets with yarl, as the supervisor does, and check that parsing the
rebuilt bytes gives the values yarl's own parsing gives."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_to_bytes

import pytest
from yarl import URL

from aleph_runtime import protocol
from aleph_runtime.guest.asgi import asgi_scope, run_cycle
from aleph_runtime.guest.request import ScopeError, query_bytes, raw_path_bytes, request_from_scope


def http_scope(raw: dict) -> dict:
    """The ASGI scope an app gets for the supervisor's `raw` scope."""
    return asgi_scope(request_from_scope(raw))


#: Request targets' query parts, as clients send them.
CLIENT_QUERIES = [
    "a=1&b=2",
    "q=%C3%BC",  # ü
    "e=%E2%82%AC",  # €, outside latin-1
    "amp=a%26b&eq=x%3Dy&semi=a%3Bb",  # escaped delimiters stay inside their value
    "plus=a+b%2Bc",  # '+' is a space, '%2B' a plus sign
    "pct=100%25&pct2=%2541&pct3=%25%26",  # a literal percent sign, even before hex digits
    "hash=%23x&slash=%2F&question=%3F&space=%20",
    "raw=ü€",  # a client that did not encode
    "bad=%FF&short=%C3&notescape=%zz&lone=%",  # not UTF-8, not escapes
    "a=b;c=d",  # ';' is not a separator
    "empty=&&novalue&=x",
    "lower=%c3%a9%2b",
    "quote=%22%3C%3E%60",
]


@pytest.mark.parametrize("raw", CLIENT_QUERIES)
def test_query_string_parses_to_the_supervisors_values(raw):
    url = URL(f"/p?{raw}", encoded=True)
    rebuilt = query_bytes(url.query_string)  # what the supervisor sends is `query_string`
    assert rebuilt.isascii()
    assert parse_qsl(rebuilt.decode("ascii"), keep_blank_values=True) == list(url.query.items())


def test_query_string_of_the_issues_request():
    decoded = URL("/p?u=%C3%BC&e=%E2%82%AC&amp=a%26b&plus=a+b", encoded=True).query_string
    assert decoded == "u=ü&e=€&amp=a%26b&plus=a b"
    assert query_bytes(decoded) == b"u=%C3%BC&e=%E2%82%AC&amp=a%26b&plus=a%20b"


@pytest.mark.parametrize(
    "value", [None, 42, "", "\udc80", "\x00\x7f\n", "%", "%%%", "a=%E2%82", b"raw=%FF+x"]
)
def test_query_string_never_raises(value):
    result = query_bytes(value)
    assert isinstance(result, bytes)
    if isinstance(value, bytes):
        assert result == value  # already a client's bytes
    else:
        assert result.isascii() and b" " not in result and b"#" not in result


def test_a_query_given_as_bytes_is_kept_but_cannot_end_the_request_line():
    assert query_bytes(b"raw=%FF+x&a=%C3%BC") == b"raw=%FF+x&a=%C3%BC"
    assert query_bytes(b"a=b c\r\nx-injected: 1#frag\xff") == b"a=b%20c%0D%0Ax-injected:%201%23frag%FF"


@pytest.mark.parametrize(
    "target",
    [
        "/w%C3%B6rld%20x",
        "/a%2Fb",
        "/100%25/x",
        "/%E2%82%AC?x=1",
        "/%3F%23%60%7B%7D",
        "/plain/path+x;y=z",
        "/",
    ],
)
def test_raw_path_is_the_encoded_decoded_path(target):
    path = URL(target, encoded=True).path  # the supervisor's decoded path
    raw = raw_path_bytes(path)
    assert raw.isascii() and not set(raw) & set(b" ?#")
    assert unquote_to_bytes(raw).decode("utf-8") == path
    scope = http_scope({"type": "http", "path": path})
    assert scope["path"] == path and scope["raw_path"] == raw


def test_raw_path_of_a_utf8_path():
    assert raw_path_bytes("/wörld x") == b"/w%C3%B6rld%20x"
    assert raw_path_bytes("/a/b") == b"/a/b"  # a client's %2F is gone once the supervisor decoded it


def test_headers_are_tuples_of_bytes_with_accept_encoding_identity():
    sent = protocol.http_scope(
        "GET",
        "/",
        "",
        [(b"Content-Type", b"text/plain"), (b"accept-encoding", b"gzip, br"), (b"cookie", b"a=1; b=2")],
        b"",
    )
    raw = protocol.unpack(protocol.pack(sent))  # msgpack turns the pairs into lists
    assert all(isinstance(pair, list) for pair in raw["headers"])
    scope = http_scope(raw)
    assert scope["headers"] == [
        (b"content-type", b"text/plain"),
        (b"accept-encoding", b"identity"),
        (b"cookie", b"a=1; b=2"),
    ]
    assert all(type(pair) is tuple for pair in scope["headers"])


def test_header_values_given_as_text_never_fail():
    scope = http_scope({"type": "http", "path": "/", "headers": [["x-latin", "café"], ["x-euro", "€"]]})
    assert scope["headers"] == [(b"x-latin", "café".encode("latin-1")), (b"x-euro", "€".encode())]


@pytest.mark.parametrize(
    "field",
    [
        {"path": 5},
        {"headers": "nope"},
        {"headers": [[b"a"]]},
        {"headers": [[b"a", 5]]},
        {"body": 3.5},
        {"method": 5},
        {"method": "GET / HTTP/1.1\r\nx-injected: 1\r\n\r\nGET"},
        {"method": "GÉT"},
    ],
)
async def test_a_scope_of_the_wrong_shape_is_the_inits_failure(field):
    async def app(scope, receive, send):  # pragma: no cover - never called
        raise AssertionError("the app must not see a broken scope")

    with pytest.raises(ScopeError):
        request_from_scope({"type": "http", "path": "/", **field})
    answer = protocol.unpack(await run_cycle(app, {"type": "http", "path": "/", **field}))
    assert protocol.is_init_failure(answer), answer
    assert answer["traceback"].startswith(protocol.INIT_FAILURE)  # what a node shows as the 500's body


async def test_the_apps_exception_is_not_the_inits_failure():
    async def app(scope, receive, send):
        raise ValueError("boom")

    answer = protocol.unpack(await run_cycle(app, {"type": "http", "path": "/"}))
    assert answer["error"] == "ValueError: boom" and not protocol.is_init_failure(answer)
    unsupported = protocol.unpack(await run_cycle(app, {"type": "websocket"}))
    assert protocol.is_init_failure(unsupported) and "websocket" in unsupported["error"]


async def test_gzip_middleware_sends_a_plain_body_to_a_gzip_client():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    text = "compressible " * 200

    async def big(request):
        return PlainTextResponse(text)

    app = Starlette(routes=[Route("/big", big)], middleware=[Middleware(GZipMiddleware, minimum_size=10)])
    scope = protocol.http_scope("GET", "/big", "", [(b"accept-encoding", b"gzip, deflate")], b"")
    answer = protocol.unpack(await run_cycle(app, protocol.unpack(protocol.pack(scope))))
    assert answer["headers"]["status"] == 200
    headers = {bytes(name).lower(): bytes(value) for name, value in answer["headers"]["headers"]}
    assert b"content-encoding" not in headers
    assert answer["body"]["body"] == text.encode()
