"""The ASGI bridge: one supervisor call becomes one ASGI cycle (ASGI 3.0, spec 2.3).

One small class per cycle with an explicit state enum: `HTTPCycle` for an HTTP call,
`EventCycle` for an `aleph.message` event, `Lifespan` for the app's whole life.
What the supervisor sends is not a full ASGI scope (no asgi, http_version, scheme,
raw_path, root_path, server, client; query_string as a decoded str; the body inside it;
header pairs as lists): `request.request_from_scope()` maps it to the request a server
would have received (the same mapping an executable's server gets), `asgi_scope()` makes
that the scope uvicorn would give the app, and the body is delivered through `receive()`.
Errors are mapped to the supervisor's `{"error", "traceback", "output"}` answer in one
place, `run_cycle()`: the app's as the program's error, a scope that cannot be mapped
(`ScopeError`) as the init's own.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aleph_runtime import protocol
from aleph_runtime.guest.request import Request, ScopeError, as_bytes, request_from_scope
from aleph_runtime.guest.settings import DEFAULT_MAX_RESPONSE_BYTES

logger = logging.getLogger("aleph_runtime.asgi")

Message = dict[str, Any]
ASGIApp = Callable[
    [dict, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
#: What the program sees as the server: the supervisor forwards from the node's port 80.
SERVER = ("127.0.0.1", 80)
CLIENT = ("127.0.0.1", 0)


class CycleError(RuntimeError):
    """The application broke the ASGI protocol (e.g. a body before the response start)."""


class AppResponseTooLarge(CycleError):
    """The application's response outgrew the cap: it is dropped, and its stream no longer read."""

    def __init__(self, limit: int):
        super().__init__(protocol.response_too_large(limit))


def asgi_scope(request: Request, state: dict | None = None) -> dict:
    """The ASGI HTTP scope uvicorn would give the app for `request` (body not included)."""
    scope = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query_string,
        "root_path": "",
        "headers": request.headers,
        "server": SERVER,
        "client": CLIENT,
        "extensions": {},
    }
    if state is not None:
        # Lifespan state, copied per request as the spec says.
        scope["state"] = dict(state)
    return scope


class HTTPCycleState(enum.Enum):
    REQUEST = enum.auto()
    """The app has not started its response; the body is waiting in receive()."""
    RESPONSE = enum.auto()
    """`http.response.start` was sent; body chunks are arriving until more_body is false."""
    COMPLETE = enum.auto()
    """The last body chunk was sent; receive() now answers `http.disconnect`."""


class HTTPCycle:
    """One HTTP call: the request body in, the whole response (every chunk) out."""

    def __init__(self, scope: dict, body: bytes, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        self.scope = scope
        self.body = body
        self.state = HTTPCycleState.REQUEST
        self.status = 500
        self.headers: list = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.max_bytes = max_bytes
        self.too_large = False
        self._body_sent = False
        self._complete = asyncio.Event()

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        # The request is fully read: like a real server, the next receive() waits
        # until the client goes away, which for us is when the response is complete.
        await self._complete.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if self.state is HTTPCycleState.REQUEST and kind == "http.response.start":
            self.status = int(message["status"])
            self.headers = [
                [
                    as_bytes(n, "the application's header name", CycleError),
                    as_bytes(v, "the application's header value", CycleError),
                ]
                for n, v in message.get("headers", ())
            ]
            self.state = HTTPCycleState.RESPONSE
        elif self.state is HTTPCycleState.RESPONSE and kind == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    self._overflow()
                self.chunks.append(bytes(chunk))
            if not message.get("more_body", False):
                self.state = HTTPCycleState.COMPLETE
                self._complete.set()
        elif self.too_large:
            raise AppResponseTooLarge(self.max_bytes)
        elif self.state is HTTPCycleState.COMPLETE and kind == "http.response.body":
            raise CycleError("the application sent a body after its response was complete")
        else:
            raise CycleError(
                f"the application sent {kind!r} while the response was in state {self.state.name}"
            )

    def _overflow(self) -> None:
        """Drop what was kept, and tell the app its client is gone (receive() answers
        `http.disconnect`, which ends a streaming response), then raise into its send()."""
        self.too_large = True
        self.chunks.clear()
        self.state = HTTPCycleState.COMPLETE
        self._complete.set()
        raise AppResponseTooLarge(self.max_bytes)

    async def run(self, app: ASGIApp) -> None:
        # An exception is the call's answer even after a complete response: Starlette
        # sends its own 500 page and then re-raises, and the supervisor (as with
        # today's runtime) shows the traceback, which is what a program author needs.
        try:
            await _call(app, self.scope, self.receive, self.send)
        finally:
            self._complete.set()
        if self.too_large:
            raise AppResponseTooLarge(self.max_bytes)  # even when the app swallowed it
        if self.state is not HTTPCycleState.COMPLETE:
            raise CycleError(
                f"the application returned without completing its response (state {self.state.name})"
            )


class EventCycleState(enum.Enum):
    WAITING = enum.auto()
    """The event is delivered; the app has not answered yet."""
    ANSWERED = enum.auto()
    """The app sent its result; it becomes the event's body."""


class EventCycle:
    """An `aleph.message` event: the message goes in, the first message the app sends comes back."""

    def __init__(self, scope: dict):
        self.scope = scope
        self.state = EventCycleState.WAITING
        self.result: object = None
        self._delivered = False

    async def receive(self) -> Message:
        if not self._delivered:
            self._delivered = True
            return {"type": "aleph.message", "body": self.scope.get("body"), "more_body": False}
        await asyncio.Event().wait()  # nothing more will come: wait to be cancelled
        raise CycleError("unreachable")

    async def send(self, message: object) -> None:
        if self.state is EventCycleState.WAITING:
            self.result = message
            self.state = EventCycleState.ANSWERED

    async def run(self, app: ASGIApp) -> None:
        await _call(app, self.scope, self.receive, self.send)


async def _call(app: ASGIApp, scope: dict, receive, send) -> None:
    result = app(scope, receive, send)
    # aleph-sdk's AlephApp returns its event handler's coroutine un-awaited; run it.
    while inspect.isawaitable(result):
        result = await result


async def run_cycle(
    app: ASGIApp,
    raw_scope: dict,
    state: dict | None = None,
    output_data: Callable[[], Awaitable[bytes | None]] | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> bytes:
    """Run one supervisor call through the app; the packed answer, errors included.

    `output_data` is awaited after a successful call for the zip of /data, if any. A
    response body larger than `max_response_bytes` is an error answer naming the cap.
    """
    kind = raw_scope.get("type")
    try:
        if kind == "http":
            request = request_from_scope(raw_scope)
            scope = asgi_scope(request, state)
        elif kind != "aleph.message":
            raise ScopeError(f"unsupported scope type {kind!r}: expected 'http' or 'aleph.message'")
    except ScopeError as error:
        logger.error("Refused a call: %s", error)
        return protocol.init_error_answer(str(error))
    except Exception as error:  # a bug of ours: still an answer, and labelled as ours
        logger.exception("Mapping the supervisor's scope failed")
        return protocol.init_error_answer(f"{type(error).__name__}: {error}", traceback.format_exc())
    try:
        if kind == "http":
            cycle = HTTPCycle(scope, request.body, max_response_bytes)
            await cycle.run(app)
            data = await output_data() if output_data else None
            body = b"".join(cycle.chunks)
            cycle.chunks.clear()  # at most two copies of a large body at once: joined and packed
            return protocol.run_answer(cycle.status, cycle.headers, body, output_data=data)
        event = EventCycle(dict(raw_scope, asgi=ASGI_VERSION))
        await event.run(app)
        data = await output_data() if output_data else None
        return protocol.event_answer(event.result, output_data=data)
    except AppResponseTooLarge as error:
        logger.warning("Refused a response: %s", error)
        return protocol.error_answer(str(error), "")
    except Exception as error:  # noqa: BLE001 - whatever the program raised becomes its 500
        return protocol.error_answer(f"{type(error).__name__}: {error}", traceback.format_exc())


class LifespanFailure(RuntimeError):
    """The app's lifespan startup failed (`lifespan.startup.failed`) or did not finish in time.

    An app that does not speak lifespan at all is not a failure: see LifespanState.UNSUPPORTED.
    """


class LifespanState(enum.Enum):
    STARTING = enum.auto()
    """`lifespan.startup` is queued; waiting for the app's answer."""
    STARTED = enum.auto()
    """The app answered `startup.complete`; its receive() now blocks until halt."""
    UNSUPPORTED = enum.auto()
    """The app raised or returned before answering startup: it does not speak lifespan (not an error)."""
    FAILED = enum.auto()
    """The app answered `startup.failed`, or its startup raised after a first answer."""
    SHUTTING_DOWN = enum.auto()
    """`lifespan.shutdown` is queued; waiting for the app's answer."""
    SHUT_DOWN = enum.auto()
    """The app answered `shutdown.complete` (or `shutdown.failed`), or its task ended."""


class Lifespan:
    """The app's lifespan as ONE long-lived task fed by a queue (as uvicorn runs it).

    receive() answers `lifespan.startup`, then blocks until `shutdown()` queues
    `lifespan.shutdown`: the app's shutdown handlers run at halt, not right after startup.
    """

    def __init__(self, app: ASGIApp):
        self.app = app
        self.state = LifespanState.STARTING
        self.app_state: dict = {}
        self.error = ""
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._shut_down = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def startup(self, timeout: float) -> None:
        """Run startup; LifespanFailure with the app's message on `startup.failed` or a timeout."""
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.app_state}
        self._queue.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        try:
            await asyncio.wait_for(self._started.wait(), timeout)
        except TimeoutError:
            raise LifespanFailure(
                f"the application's lifespan startup did not complete within {timeout:g} s"
            ) from None
        if self.state is LifespanState.FAILED:
            raise LifespanFailure(f"the application's lifespan startup failed: {self.error}")

    async def _main(self, scope: dict) -> None:
        try:
            await _call(self.app, scope, self._receive, self._send)
        except BaseException as error:
            if self.state is LifespanState.STARTING:
                logger.info(
                    "The application does not support the ASGI lifespan (%s: %s)", type(error).__name__, error
                )
                self.state = LifespanState.UNSUPPORTED
            elif self.state in (LifespanState.STARTED, LifespanState.SHUTTING_DOWN):
                logger.error("The application's lifespan raised: %s: %s", type(error).__name__, error)
                self.state = LifespanState.SHUT_DOWN
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            if self.state is LifespanState.STARTING:
                self.state = LifespanState.UNSUPPORTED
            elif self.state is not LifespanState.FAILED:
                self.state = LifespanState.SHUT_DOWN
        finally:
            self._started.set()
            self._shut_down.set()

    async def _receive(self) -> Message:
        return await self._queue.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if self.state is LifespanState.STARTING and kind == "lifespan.startup.complete":
            self.state = LifespanState.STARTED
            self._started.set()
        elif self.state is LifespanState.STARTING and kind == "lifespan.startup.failed":
            self.state = LifespanState.FAILED
            self.error = str(message.get("message", ""))
            self._started.set()
        elif self.state is LifespanState.SHUTTING_DOWN and kind in (
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ):
            if kind == "lifespan.shutdown.failed":
                logger.error("The application's lifespan shutdown failed: %s", message.get("message", ""))
            self.state = LifespanState.SHUT_DOWN
            self._shut_down.set()
        else:
            raise CycleError(f"unexpected lifespan message {kind!r} in state {self.state.name}")

    async def shutdown(self, timeout: float) -> None:
        """Ask the app to shut down and wait, bounded; never raises."""
        if self.state is not LifespanState.STARTED or self._task is None:
            return
        self.state = LifespanState.SHUTTING_DOWN
        self._queue.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._shut_down.wait(), timeout)
        except TimeoutError:
            logger.error("The application's lifespan shutdown did not complete within %g s", timeout)
            self._task.cancel()


class AsgiProgram:
    """An ASGI app started with its lifespan: each call is one cycle (`run_cycle`)."""

    def __init__(
        self,
        app: ASGIApp,
        lifespan: Lifespan,
        data_export,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        self.app = app
        self.lifespan = lifespan
        self.data_export = data_export
        self.max_response_bytes = max_response_bytes

    async def handle(self, scope: dict) -> bytes:
        return await run_cycle(
            self.app, scope, self.lifespan.app_state, self.data_export.acollect, self.max_response_bytes
        )

    async def stop(self, grace: float) -> None:
        await self.lifespan.shutdown(grace)
