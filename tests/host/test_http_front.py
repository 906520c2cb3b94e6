"""The HTTP front against a local stand-in for the init speaking the real wire format:
scopes built as aleph-vm builds them, answers turned into HTTP as aleph-vm does."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from aleph_runtime import protocol
from aleph_runtime.host.services.http_front import HTTPFront, b32_hostname, create_front_app
from aleph_runtime.host.supervisor import SupervisorClient
from tests.host.conftest import VM_HASH
from tests.host.fake_init import FakeInit


@pytest.fixture
async def fake_init(short_dir):
    init = await FakeInit(short_dir / "v.sock").start()
    yield init
    await init.stop()


@pytest.fixture
async def front_factory(fake_init):
    fronts: list[HTTPFront] = []

    async def make(seconds: float = 10, uds_path=None, **kwargs) -> HTTPFront:
        client = SupervisorClient(uds_path or fake_init.uds_path)
        front = await HTTPFront(create_front_app(client, VM_HASH, seconds, **kwargs), port=0).start()
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        await front.stop()


@pytest.fixture
async def session():
    # auto_decompress off: the front must not pass Content-Encoding through, and we check raw bytes.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_scope_is_the_supervisors(front_factory, fake_init, session):
    front = await front_factory()
    async with session.post(
        f"{front.url}some/path?x=1%262&y=caf%C3%A9", data=b"payload", headers={"X-Mixed-Case": "Value"}
    ) as response:
        assert response.status == 201
        assert await response.read() == b"hello payload"
    scope = fake_init.scopes[-1]
    assert set(scope) == {"type", "path", "method", "query_string", "headers", "body"}
    assert scope["type"] == "http"
    assert scope["path"] == "/some/path"
    assert scope["method"] == "POST"
    assert isinstance(scope["query_string"], str)
    assert scope["query_string"] == "x=1%262&y=café"  # aiohttp's request.query_string, as on a node
    assert scope["body"] == b"payload"
    headers = dict((bytes(name), bytes(value)) for name, value in scope["headers"])
    assert headers[b"x-mixed-case"] == b"Value"
    assert all(bytes(name) == bytes(name).lower() for name, _ in scope["headers"])


async def test_vm_path_and_root_reach_the_program(front_factory, fake_init, session):
    front = await front_factory()
    for url, path in [
        (f"{front.url}vm/{VM_HASH}/a/b", "/a/b"),
        (f"{front.url}vm/{VM_HASH}", "/"),
        (f"{front.url}vm/{VM_HASH}/", "/"),
        (front.url, "/"),
        (f"{front.url}a/b", "/a/b"),
    ]:
        async with session.get(url) as response:
            assert response.status == 200, url
        assert fake_init.scopes[-1]["path"] == path

    count = len(fake_init.scopes)
    async with session.get(f"{front.url}vm/{'beef' * 16}/") as response:
        assert response.status == 404
        assert "error" in await response.json()
    async with session.get(f"{front.url}vm/not-a-hash/") as response:
        assert response.status == 400
        assert await response.json() == {"error": "Invalid message reference: not-a-hash"}
    assert len(fake_init.scopes) == count
    assert len(b32_hostname(VM_HASH)) <= 63


async def test_answer_headers_follow_the_supervisors_rules(front_factory, session):
    front = await front_factory()
    async with session.get(front.url) as response:
        assert response.status == 200
        body = await response.read()
        assert body == b"hello "
        for dropped in ("Content-Encoding", "Transfer-Encoding", "Vary"):
            assert dropped not in response.headers
        assert response.headers["X-Custom"] == "café"
        assert response.headers["Content-Length"] == str(len(body))
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert response.headers["Aleph-Program-ItemHash"] == VM_HASH

    async with session.get(f"{front.url}length") as response:
        assert response.headers["Content-Length"] == "5"
        assert await response.read() == b"hello"


async def test_traceback_is_a_500_with_the_traceback_as_text(front_factory, session):
    front = await front_factory()
    async with session.get(f"{front.url}raise") as response:
        assert response.status == 500
        assert response.content_type == "text/plain"
        text = await response.text()
        assert text.startswith("Traceback (most recent call last):")
        assert "ZeroDivisionError: division by zero" in text
    async with session.get(front.url) as response:  # later calls still work
        assert response.status == 200


async def test_the_log_tells_the_inits_failure_from_the_programs(front_factory, session, caplog):
    front = await front_factory()
    with caplog.at_level(logging.WARNING, logger="aleph_runtime.host.services.http_front"):
        async with session.get(f"{front.url}initfail") as response:
            assert response.status == 500  # as a node answers any error answer
            assert (await response.text()).startswith("aleph-runtime init: the supervisor's scope has a body")
        init_failure = caplog.text
        caplog.clear()
        async with session.get(f"{front.url}raise") as response:
            assert response.status == 500
        program_error = caplog.text
    assert "the init failed on GET /initfail" in init_failure and "program error" not in init_failure
    assert "program error on GET /raise" in program_error and "ZeroDivisionError" in program_error


async def test_empty_answer_is_a_502_and_reported(front_factory, session):
    emptied = []

    async def on_empty_answer():
        emptied.append(True)

    front = await front_factory(on_empty_answer=on_empty_answer)
    async with session.get(f"{front.url}empty") as response:
        assert response.status == 502
        assert response.reason == "No response from VM"
    assert emptied == [True]


async def test_a_programs_502_is_passed_on_and_each_distinct_one_logged_once(front_factory, session, caplog):
    front = await front_factory()
    for path in ("failing/node", "failing/node", "failing/deno", "failing/node"):
        async with session.get(f"{front.url}{path}") as response:
            assert response.status == 502
            assert "exited with status 127" in await response.text()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the program answered 502")]
    assert len(logged) == 2
    assert "node: not found" in logged[0] and "deno: not found" in logged[1]


@pytest.mark.parametrize("path", ["garbage", "badheaders"])
async def test_invalid_answer_is_a_502(front_factory, session, path):
    front = await front_factory()
    async with session.get(f"{front.url}{path}") as response:
        assert response.status == 502
        assert response.reason == "Invalid response from VM"


async def test_requests_time_out_after_the_programs_seconds(front_factory, session):
    front = await front_factory(seconds=1)
    slow = asyncio.ensure_future(session.get(f"{front.url}slow"))
    # Meanwhile, other requests are served.
    async with session.get(front.url) as response:
        assert response.status == 200
    response = await slow
    assert response.status == 504
    assert await response.json() == {"error": "Program did not respond within `resource.seconds`"}
    response.release()


async def test_init_not_running_is_a_502(front_factory, short_dir, session):
    front = await front_factory(uds_path=short_dir / "nothing.sock")
    async with session.get(front.url) as response:
        assert response.status == 502
        assert "not running" in await response.text()


async def test_bodies_over_the_nodes_limit_are_refused(front_factory, session):
    front = await front_factory()
    async with session.post(front.url, data=b"x" * (1024**2 + 1)) as response:
        assert response.status == 413
        assert "error" in await response.json()
    bigger = await front_factory(client_max_size=4 * 1024**2)
    async with session.post(bigger.url, data=b"x" * (2 * 1024**2)) as response:
        assert response.status == 201
        assert len(await response.read()) == 6 + 2 * 1024**2


async def test_events_reach_the_program_as_aleph_message_scopes(front_factory, fake_init, session):
    front = await front_factory()
    message = {"item_hash": "ab" * 32, "type": "POST", "content": {"x": 1}}
    async with session.post(f"{front.url}control/event", json=message) as response:
        assert response.status == 200
        assert await response.json() == {"received": "ab" * 32, "raw": "bytes"}
    assert fake_init.scopes[-1] == {"type": "aleph.message", "body": message}

    async with session.post(f"{front.url}control/event", json={"raise": True}) as response:
        assert response.status == 500
        assert "ValueError: bad event" in await response.text()
    async with session.post(f"{front.url}control/event", data=b"[1]") as response:
        assert response.status == 400
    # JSON too deep for the parser, or that msgpack cannot carry to the init: 400, not 500.
    too_deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    for body in (too_deep, b'{"big": 1' + b"0" * 30 + b"}"):
        async with session.post(f"{front.url}control/event", data=body) as response:
            assert response.status == 400, body[:20]
            assert "error" in await response.json()


async def test_404s_become_json_errors_as_on_a_node(front_factory, session):
    """aleph-vm's error_middleware rewrites every 404, the program's own included."""
    front = await front_factory()
    async with session.get(f"{front.url}missing") as response:
        assert response.status == 404
        assert await response.json() == {"error": "no such page"}
        assert "X-Program" not in response.headers
        assert response.headers["Server"].startswith("aleph-runtime/")
    raw = await front_factory(node_error_pages=False)
    async with session.get(f"{raw.url}missing") as response:
        assert response.status == 404
        assert await response.text() == "no such page"
        assert response.headers["X-Program"] == "1"


# --- the front frames every response itself ---


class ScriptedInit(FakeInit):
    """Answers each path with the run answer a test put in `answers`."""

    def __init__(self, uds_path):
        super().__init__(uds_path)
        self.answers: dict[str, bytes] = {}

    async def answer(self, scope: dict) -> bytes:
        default = protocol.run_answer(200, [[b"content-type", b"text/plain"]], b"ok")
        return self.answers.get(scope["path"]) or default


@pytest.fixture
async def scripted(short_dir):
    init = await ScriptedInit(short_dir / "s.sock").start()
    client = SupervisorClient(init.uds_path)
    front = await HTTPFront(create_front_app(client, VM_HASH, 10), port=0).start()
    yield init, front
    await front.stop()
    await init.stop()


async def read_http_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[int, dict, bytes]:
    """One response off a raw connection, framed by its own Content-Length as a client reads it."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    assert "transfer-encoding" not in headers
    status = int(status_line.split()[1])
    length = 0 if method == "HEAD" or status in (204, 304) else int(headers["content-length"][0])
    return status, headers, await asyncio.wait_for(reader.readexactly(length), 5)


async def pipelined(front: HTTPFront, requests: list[tuple[str, str]]) -> list[tuple[int, dict, bytes]]:
    """Send every request at once on one connection (a pipelining client); read the answers."""
    reader, writer = await asyncio.open_connection(front.host, front.port)
    try:
        writer.write(
            b"".join(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for method, path in requests)
        )
        return [await read_http_response(reader, method) for method, _ in requests]
    finally:
        writer.close()


@pytest.mark.parametrize(
    "headers",
    [
        [[b"content-length", b"3"]],  # shorter than the body: the rest would be a second response
        [[b"content-length", b"9999"]],  # longer: the next response would be read as this body
        [[b"content-length", b"28"], [b"content-length", b"5"]],
        [[b"content-length", b"abc"]],
        [[b"transfer-encoding", b"chunked"], [b"content-length", b"28"]],
        [[b"connection", b"close"], [b"keep-alive", b"timeout=1"], [b"upgrade", b"h2c"]],
    ],
    ids=["short", "long", "duplicate", "garbage", "chunked", "hop-by-hop"],
)
async def test_content_length_is_the_bodys_whatever_the_program_says(scripted, headers):
    init, front = scripted
    # A body that looks like a response: a wrong length would show it to the client as one.
    forged = b"HTTP/1.1 200 OK\r\nX-Forged: 1\r\n\r\n"
    init.answers["/first"] = protocol.run_answer(200, headers, forged)
    answers = await pipelined(front, [("GET", "/first"), ("GET", "/second")])
    (status, got, body), (second_status, second_headers, second_body) = answers
    assert (status, body) == (200, forged)
    assert got["content-length"] == [str(len(forged))]
    for hop in ("connection", "keep-alive", "upgrade"):
        assert got.get(hop, []) in ([], ["keep-alive"])  # aiohttp's own, never the program's
    assert (second_status, second_body) == (200, b"ok")
    assert "x-forged" not in second_headers


async def test_head_keeps_the_length_of_the_body_not_sent(scripted):
    init, front = scripted
    init.answers["/head"] = protocol.run_answer(200, [[b"content-length", b"1234"]], b"")
    (status, headers, body), second = await pipelined(front, [("HEAD", "/head"), ("GET", "/second")])
    assert (status, headers["content-length"], body) == (200, ["1234"], b"")
    assert (second[0], second[2]) == (200, b"ok")


@pytest.mark.parametrize(
    "status, headers",
    [
        (200, [[b"x-split", b"a\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK"]]),
        (200, [[b"x-lf", b"a\nb"]]),
        (200, [[b"x-nul", b"a\x00b"]]),
        (200, [[b"", b"empty name"]]),
        (200, [[b"x bad", b"space in the name"]]),
        (200, [[b"x:colon", b"v"]]),
        (200, [[b"x-cr\r", b"v"]]),
        (100, []),
        (101, []),
        (199, []),
        (600, []),
        (0, []),
        (-1, []),
        ("200", []),
        (True, []),
    ],
)
async def test_an_answer_that_cannot_be_sent_is_a_502(scripted, caplog, status, headers):
    init, front = scripted
    init.answers["/bad"] = protocol.run_answer(status, headers, b"body")
    with caplog.at_level("ERROR", logger="aleph_runtime.host.services.http_front"):
        answers = await pipelined(front, [("GET", "/bad"), ("GET", "/second")])
    (status_sent, got, body), second = answers
    assert status_sent == 502
    assert "x-forged" not in got and not any(name.startswith("x-") for name in got)
    assert body == b"Invalid response from VM\n"
    assert (second[0], second[2]) == (200, b"ok")  # the connection still serves what follows
    assert "invalid answer from the init" in caplog.text


#: What HTTP forbids in a header value (RFC 9110 5.5): every control character but TAB.
CONTROL_CHARACTERS = [*(chr(code) for code in range(0x20) if code != 0x09), "\x7f"]


async def test_a_control_character_in_a_value_is_a_502_and_the_connection_goes_on(scripted, caplog):
    """Each one, on one pipelining connection: a 502 for each, then the request after them."""
    init, front = scripted
    requests = []
    for character in CONTROL_CHARACTERS:
        path = f"/bad{ord(character):02x}"
        init.answers[path] = protocol.run_answer(200, [[b"x-value", f"a{character}b".encode()]], b"body")
        requests.append(("GET", path))
    with caplog.at_level("ERROR", logger="aleph_runtime.host.services.http_front"):
        *answers, second = await pipelined(front, [*requests, ("GET", "/second")])
    for (_, path), (status, headers, body) in zip(requests, answers, strict=True):
        assert (status, body, "x-value" in headers) == (502, b"Invalid response from VM\n", False), path
    assert (second[0], second[2]) == (200, b"ok")
    assert caplog.text.count("invalid answer from the init") == len(CONTROL_CHARACTERS)


async def test_a_tab_in_a_value_is_sent_as_it_is(scripted):
    init, front = scripted
    init.answers["/tab"] = protocol.run_answer(200, [[b"x-value", b"a\tb"]], b"body")
    (status, headers, body), second = await pipelined(front, [("GET", "/tab"), ("GET", "/second")])
    assert (status, headers["x-value"], body) == (200, ["a\tb"], b"body")
    assert (second[0], second[2]) == (200, b"ok")
