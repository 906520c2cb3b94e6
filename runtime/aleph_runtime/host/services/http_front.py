"""The HTTP front of the local node: what a browser talks to, as it talks to a compute node.

Each request becomes the supervisor's scope, goes to the init through
`SupervisorClient.run_raw`, and the init's answer becomes the HTTP response, with the
rules of aleph-vm's `orchestrator/run.py`:

- scope: `{"type": "http", "path", "method", "query_string" (str), "headers"
  (lower-case names, raw bytes), "body"}` (protocol document, section 3);
- an answer with a "traceback": 500, the traceback as the plain-text body;
- an empty answer: 502 "No response from VM";
- no answer within the program's `resources.seconds`: 504;
- header names and values decoded as UTF-8, names lower-cased; Content-Encoding,
  Transfer-Encoding and Vary dropped; Content-Length set when absent;
  `Aleph-Program-ItemHash` (and `Aleph-Program-Code-Ref` when known) added.

Routes, as a node serves them:
- `* /vm/<vm_hash>/<path>`: the program, at `/<path>` (another hash: 404);
- `POST /control/event`: a JSON message delivered as an `aleph.message` scope; the
  answer is the init's `result["body"]` as JSON (a node's reactor does this for
  messages matching the program's subscriptions);
- `* /<path>`: the program, as a node serves it on its own hostname.

Like a node, every 404 (the program's own included) and every HTTP error raised by the
front become `{"error": <text>}` JSON (aleph-vm's `error_middleware`), and the Server
header names the node's software.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable

import msgpack
from aiohttp import web
from multidict import CIMultiDict

from aleph_runtime.host.supervisor import SupervisorClient

logger = logging.getLogger(__name__)

#: aiohttp's default, which a node's supervisor keeps: larger bodies answer 413 there.
DEFAULT_CLIENT_MAX_SIZE = 1024**2
DROPPED_HEADERS = ("Content-Encoding", "Transfer-Encoding", "Vary")
#: Distinct 502 answers remembered, so each is shown once; and how much of one is shown.
MAX_BAD_GATEWAYS_REMEMBERED = 64
MAX_BAD_GATEWAY_SHOWN = 8192
ITEM_HASH_RE = re.compile(r"[0-9a-f]{64}|Qm[1-9A-HJ-NP-Za-km-z]{44}|bafy[0-9a-z]{50,}")

CLIENT = web.AppKey("supervisor_client", SupervisorClient)
FRONT = web.AppKey("front_settings", object)


def b32_hostname(vm_hash: str) -> str:
    """The label a node serves a program under: base32 of the binary hash, lower case, no padding."""
    return base64.b32encode(bytes.fromhex(vm_hash)).decode().strip("=").lower()


async def build_http_scope(path: str, request: web.Request) -> dict:
    """The scope exactly as aleph-vm's `build_asgi_scope` makes it."""
    return {
        "type": "http",
        "path": path,
        "method": request.method,
        "query_string": request.query_string,
        "headers": tuple((name.lower(), value) for name, value in request.raw_headers),
        "body": await request.read(),
    }


def build_event_scope(event: object) -> dict:
    return {"type": "aleph.message", "body": event}


def traceback_response(result: dict) -> web.Response:
    return web.Response(
        status=500,
        reason="Error in VM execution",
        body=result["traceback"],
        content_type="text/plain",
    )


def answer_to_response(result: dict, vm_hash: str, code_ref: str | None = None) -> web.Response:
    """An init's unpacked HTTP answer as the supervisor turns it into a response.

    Raises KeyError, TypeError, AttributeError or UnicodeDecodeError on an answer that
    is not the protocol's (the caller answers 502).
    """
    if "traceback" in result:
        return traceback_response(result)
    body = result["body"]["body"]
    headers = CIMultiDict([(key.decode().lower(), value.decode()) for key, value in result["headers"]["headers"]])
    if "content-length" not in headers:
        headers["content-length"] = str(len(body))
    for header in DROPPED_HEADERS:
        if header in headers:
            del headers[header]
    headers["Aleph-Program-ItemHash"] = vm_hash
    if code_ref:
        headers["Aleph-Program-Code-Ref"] = code_ref
    return web.Response(status=result["headers"]["status"], body=body, headers=headers)


class FrontSettings:
    def __init__(
        self,
        vm_hash: str,
        seconds: float,
        code_ref: str | None,
        becomes_ready: Callable[[], Awaitable[None]] | None,
        on_empty_answer: Callable[[], Awaitable[None]] | None,
    ):
        self.vm_hash = vm_hash
        self.seconds = seconds
        self.code_ref = code_ref
        self.becomes_ready = becomes_ready
        self.on_empty_answer = on_empty_answer
        #: Digests of the 502 answers already shown (bounded: forgotten all at once when full).
        self.bad_gateways_shown: set[bytes] = set()

    def first_time(self, body: bytes) -> bool:
        """Whether this 502 body was not shown before (a failing program answers the
        same one to every request: show it once, not once per request)."""
        digest = hashlib.sha256(body).digest()
        if digest in self.bad_gateways_shown:
            return False
        if len(self.bad_gateways_shown) >= MAX_BAD_GATEWAYS_REMEMBERED:
            self.bad_gateways_shown.clear()
        self.bad_gateways_shown.add(digest)
        return True


def _bad_gateway(reason: str, text: str | None = None) -> web.Response:
    return web.Response(status=502, reason=reason, text=(text or reason) + "\n")


async def _call_init(request: web.Request, scope: dict) -> dict | web.Response:
    """Send a scope to the init; its unpacked answer, or the error response to give."""
    settings: FrontSettings = request.app[FRONT]
    client = request.app[CLIENT]
    try:
        if settings.becomes_ready is not None:
            await asyncio.wait_for(settings.becomes_ready(), timeout=settings.seconds)
        raw = await client.run_raw(scope, timeout=settings.seconds)
    except asyncio.TimeoutError:
        logger.warning("the program did not respond within `resources.seconds` (%g s)", settings.seconds)
        return web.json_response({"error": "Program did not respond within `resource.seconds`"}, status=504)
    except (ConnectionRefusedError, FileNotFoundError) as error:
        return _bad_gateway("VM is not running", f"VM is not running: {type(error).__name__}: {error}")
    except ConnectionError:
        raw = b""  # the init dropped the connection mid-call: as good as no answer

    if raw == b"":
        # The init said nothing, not even an error: it may have crashed. A node stops the VM.
        if settings.on_empty_answer is not None:
            await settings.on_empty_answer()
            return _bad_gateway("No response from VM", "VM did not respond and was shut down")
        return _bad_gateway("No response from VM", "VM did not respond")
    try:
        result = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        logger.error("invalid answer from the init: %s", error)
        return _bad_gateway("Invalid response from VM")
    if not isinstance(result, dict):
        return _bad_gateway("Invalid response from VM")
    return result


async def _run_request(request: web.Request, path: str) -> web.StreamResponse:
    settings: FrontSettings = request.app[FRONT]
    scope = await build_http_scope(path, request)
    result = await _call_init(request, scope)
    if isinstance(result, web.StreamResponse):
        return result
    if "traceback" in result:
        logger.warning("program error:\n%s", result["traceback"])
    try:
        response = answer_to_response(result, settings.vm_hash, settings.code_ref)
        if response.status == 502 and settings.first_time(response.body):
            # E.g. the init's answer for an executable that exits before it serves: its
            # exit status and last output lines, which the terminal should show.
            text = response.body.decode(errors="replace").rstrip()
            logger.warning("the program answered 502:\n%s", text[-MAX_BAD_GATEWAY_SHOWN:])
        return response
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError, ValueError) as error:
        logger.error("invalid answer from the init: %s: %s", type(error).__name__, error)
        return _bad_gateway("Invalid response from VM")


async def run_from_path(request: web.Request) -> web.StreamResponse:
    """`/vm/<ref>/<path>`, as aleph-vm's `run_code_from_path`."""
    ref = request.match_info["ref"]
    if not ITEM_HASH_RE.fullmatch(ref):
        raise web.HTTPBadRequest(reason="Invalid message reference", text=f"Invalid message reference: {ref}")
    if ref != request.app[FRONT].vm_hash:
        raise web.HTTPNotFound(text=f"This node runs one program, {request.app[FRONT].vm_hash}, not {ref}")
    path = request.match_info["suffix"]
    path = path if path.startswith("/") else f"/{path}"
    return await _run_request(request, path)


async def run_from_root(request: web.Request) -> web.StreamResponse:
    """`/<path>`, as aleph-vm's `run_code_from_hostname` once it has found the program."""
    path = request.match_info["suffix"]
    path = path if path.startswith("/") else f"/{path}"
    return await _run_request(request, path)


def _jsonable(value: object) -> object:
    """An event answer as JSON: msgpack may carry bytes, JSON cannot."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


async def post_event(request: web.Request) -> web.StreamResponse:
    """An aleph message posted as JSON, delivered as an `aleph.message` scope."""
    try:
        event = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="The event must be a JSON object (an aleph message)\n") from None
    if not isinstance(event, dict):
        raise web.HTTPBadRequest(text="The event must be a JSON object (an aleph message)\n")
    result = await _call_init(request, build_event_scope(event))
    if isinstance(result, web.StreamResponse):
        return result
    if "traceback" in result:
        logger.warning("program error on event:\n%s", result["traceback"])
        return traceback_response(result)
    if "body" not in result:
        return _bad_gateway("Invalid response from VM")
    return web.json_response(_jsonable(result["body"]), dumps=lambda obj: json.dumps(obj, default=str))


@web.middleware
async def node_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """The supervisor's `error_middleware`: every 404, the program's included, and every
    HTTP exception become `{"error": <text>}` JSON, as a node answers them."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        return web.json_response({"error": error.text or error.reason}, status=error.status)
    if response.status == 404:
        body = response.body if isinstance(response, web.Response) else None
        text = body.decode(response.charset or "utf-8", errors="replace") if isinstance(body, bytes) else ""
        return web.json_response({"error": text}, status=404)
    return response


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # A node overwrites the Server header with its own version.
    from aleph_runtime import __version__

    response.headers["Server"] = f"aleph-runtime/{__version__}"


def create_front_app(
    client: SupervisorClient,
    vm_hash: str,
    seconds: float,
    *,
    code_ref: str | None = None,
    becomes_ready: Callable[[], Awaitable[None]] | None = None,
    on_empty_answer: Callable[[], Awaitable[None]] | None = None,
    client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
    node_error_pages: bool = True,
) -> web.Application:
    """The front's aiohttp app for one program.

    - `seconds`: the program's `resources.seconds`, the bound of each call (504 after it);
    - `becomes_ready`: awaited before each call (e.g. until the VM has booted), within `seconds`;
    - `on_empty_answer`: awaited when the init answers nothing (a node stops the VM then);
    - `client_max_size`: the largest request body (413 above it); a node keeps aiohttp's 1 MiB;
    - `node_error_pages`: rewrite 404s (the program's too) and HTTP errors into
      `{"error": ...}` JSON as a node's supervisor does; False passes the program's own through.
    """
    app = web.Application(
        client_max_size=client_max_size, middlewares=[node_error_middleware] if node_error_pages else []
    )
    app.on_response_prepare.append(_server_header)
    app[CLIENT] = client
    app[FRONT] = FrontSettings(vm_hash, seconds, code_ref, becomes_ready, on_empty_answer)
    app.router.add_post("/control/event", post_event)
    app.router.add_route("*", "/vm/{ref}{suffix:.*}", run_from_path)
    app.router.add_route("*", "/{suffix:.*}", run_from_root)
    return app


class HTTPFront:
    """The front served on a TCP address, started and stopped in-process.

        front = await HTTPFront(create_front_app(client, vm_hash, seconds), port=8080).start()
        print(front.url)
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 8080):
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> HTTPFront:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HTTPFront:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
