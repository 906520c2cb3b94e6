"""The ASGI cycles against real apps (Starlette, FastAPI, aleph-sdk's AlephApp) and raw ones."""

import asyncio
import contextlib

import pytest

from aleph_runtime import protocol
from aleph_runtime.guest.asgi import (
    HTTPCycle,
    Lifespan,
    LifespanFailure,
    LifespanState,
    asgi_scope,
    run_cycle,
)
from aleph_runtime.guest.request import request_from_scope


def supervisor_scope(**overrides):
    scope = protocol.http_scope("POST", "/echo", "a=1&b=2", [(b"Content-Type", b"text/plain")], b"hello")
    scope.update(overrides)
    return protocol.unpack(protocol.pack(scope))  # as it arrives: tuples become lists


def test_supervisor_scope_is_completed():
    request = request_from_scope(supervisor_scope())
    scope = asgi_scope(request)
    assert request.body == b"hello" and "body" not in scope
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.1" and scope["scheme"] == "http"
    assert scope["query_string"] == b"a=1&b=2" and scope["raw_path"] == b"/echo"
    assert scope["root_path"] == ""
    # README: whatever the client used, the program sees these two (a VM has no other view).
    assert scope["server"] == ("127.0.0.1", 80) and scope["client"] == ("127.0.0.1", 0)
    assert scope["headers"] == [(b"content-type", b"text/plain")]
    relayed = asgi_scope(
        request_from_scope(supervisor_scope(server=["10.0.0.1", 8080], client=["203.0.113.9", 51000]))
    )
    assert relayed["server"] == ("127.0.0.1", 80) and relayed["client"] == ("127.0.0.1", 0)


async def test_body_through_receive_then_disconnect_after_the_response():
    received = []

    async def app(scope, receive, send):
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        received.append(await receive())

    answer = protocol.unpack(await run_cycle(app, supervisor_scope()))
    assert received == [
        {"type": "http.request", "body": b"hello", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert answer["body"]["body"] == b"done"


async def test_all_chunks_of_a_streaming_response():
    from starlette.responses import StreamingResponse

    async def chunks():
        for index in range(5):
            yield f"chunk{index};".encode()

    app = StreamingResponse(chunks(), media_type="text/plain")
    answer = protocol.unpack(await run_cycle(app, supervisor_scope(method="GET")))
    assert answer["headers"]["status"] == 200
    assert answer["body"]["body"] == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


async def test_app_exception_is_an_error_answer():
    async def app(scope, receive, send):
        raise ValueError("boom")

    answer = protocol.unpack(await run_cycle(app, supervisor_scope()))
    assert answer["error"] == "ValueError: boom"
    assert "Traceback" in answer["traceback"] and "boom" in answer["traceback"]


async def test_protocol_violations_are_errors():
    async def body_first(scope, receive, send):
        await send({"type": "http.response.body", "body": b"x"})

    async def incomplete(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    for app, message in ((body_first, "state REQUEST"), (incomplete, "without completing")):
        answer = protocol.unpack(await run_cycle(app, supervisor_scope()))
        assert message in answer["error"]


async def test_unknown_scope_type_and_bad_scope():
    async def app(scope, receive, send):
        pass

    assert "unsupported scope type" in protocol.unpack(await run_cycle(app, {"type": "websocket"}))["error"]
    assert "not bytes" in protocol.unpack(await run_cycle(app, {"type": "http", "body": 3}))["error"]


async def test_event_reaches_alephapp_and_its_result_is_the_body():
    from aleph.sdk.vm.app import AlephApp

    app = AlephApp(http_app=None)
    seen = []

    @app.event(filters=[{"channel": "TEST"}])  # an empty filter list matches nothing
    async def on_event(event):
        seen.append(event["body"])
        return {"handled": event["body"]["item_hash"]}

    answer = protocol.unpack(await run_cycle(app, protocol.event_scope({"item_hash": "abc"})))
    assert seen == [{"item_hash": "abc"}]
    assert answer["body"] == {"handled": "abc"}


async def test_lifespan_shutdown_runs_only_when_asked():
    from starlette.applications import Starlette

    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield {"resource": "ready"}
        events.append("shutdown")

    app = Starlette(lifespan=lifespan)
    lifespan_cycle = Lifespan(app)
    await lifespan_cycle.startup(timeout=5)
    assert lifespan_cycle.state is LifespanState.STARTED
    await asyncio.sleep(0.05)
    assert events == ["startup"]
    assert lifespan_cycle.app_state == {"resource": "ready"}
    await lifespan_cycle.shutdown(timeout=5)
    assert events == ["startup", "shutdown"]
    assert lifespan_cycle.state is LifespanState.SHUT_DOWN


async def test_lifespan_state_reaches_requests():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"greeting": "from lifespan"}

    async def index(request):
        return PlainTextResponse(request.state.greeting)

    app = Starlette(routes=[Route("/", index)], lifespan=lifespan)
    lifespan_cycle = Lifespan(app)
    await lifespan_cycle.startup(timeout=5)
    answer = protocol.unpack(
        await run_cycle(app, supervisor_scope(method="GET", path="/"), lifespan_cycle.app_state)
    )
    assert answer["body"]["body"] == b"from lifespan"
    await lifespan_cycle.shutdown(timeout=5)


async def test_app_without_lifespan_support_is_not_an_error():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            raise ValueError("only http")

    lifespan_cycle = Lifespan(app)
    await lifespan_cycle.startup(timeout=5)
    assert lifespan_cycle.state is LifespanState.UNSUPPORTED
    await lifespan_cycle.shutdown(timeout=5)


async def test_startup_failed_carries_the_apps_message():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    with pytest.raises(LifespanFailure, match="database unreachable"):
        await Lifespan(app).startup(timeout=5)


async def test_http_cycle_rejects_body_after_completion():
    cycle = HTTPCycle(asgi_scope(request_from_scope(supervisor_scope())), b"")
    await cycle.send({"type": "http.response.start", "status": 204})
    await cycle.send({"type": "http.response.body"})
    with pytest.raises(RuntimeError, match="after its response was complete"):
        await cycle.send({"type": "http.response.body", "body": b"late"})
