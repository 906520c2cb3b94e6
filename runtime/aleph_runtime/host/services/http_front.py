"""The HTTP front of the local node: what a browser talks to, as it talks to a compute node.

Each request becomes the supervisor's scope, goes to the init through
`SupervisorClient.run_raw`, and the init's answer becomes the HTTP response, with the
rules of aleph-vm's `orchestrator/run.py`:

- scope: `protocol.http_scope` (aleph-vm's `build_asgi_scope`);
- an answer with a "traceback": 500, the traceback as the plain-text body;
- an empty answer: 502 "No response from VM";
- no answer within the program's `resources.seconds`: 504;
- header names and values decoded as UTF-8, names lower-cased; Content-Encoding and
  Vary dropped; `Aleph-Program-ItemHash` (and `Aleph-Program-Code-Ref` when known) added.

Unlike the supervisor, the front frames every response itself, since a program's
framing headers describe its own connection, not the client's, and a wrong one lets a
body be read as the next response of a pipelining client: Content-Length is always the
body's length (the program's is dropped, except on a HEAD where it describes the body
not sent), Transfer-Encoding and the other hop-by-hop headers never pass. An answer the
front cannot send as HTTP (a header name that is not a token, a control character but
TAB in a value, a status outside 200-599) is a 502 "Invalid response from VM", as the
supervisor answers an unreadable one, with the reason logged.

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

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from aleph_runtime import __version__, protocol
from aleph_runtime.host.supervisor import SupervisorClient

logger = logging.getLogger(__name__)

#: aiohttp's default, which a node's supervisor keeps: larger bodies answer 413 there.
DEFAULT_CLIENT_MAX_SIZE = 1024**2
DROPPED_HEADERS = ("Content-Encoding", "Vary")
#: Framing and hop-by-hop headers (RFC 9110 7.6.1): they describe the program's connection.
HOP_BY_HOP_HEADERS = (
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
)
#: RFC 9110 5.6.2: what a header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: RFC 9110 5.5: a value holds no control character but TAB. aiohttp refuses these only
#: when it writes the response, after the handler: too late for a 502, the connection dies.
_UNSENDABLE_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Distinct 502 answers remembered, so each is shown once; and how much of one is shown.
MAX_BAD_GATEWAYS_REMEMBERED = 64
MAX_BAD_GATEWAY_SHOWN = 8192
ITEM_HASH_RE = re.compile(r"[0-9a-f]{64}|Qm[1-9A-HJ-NP-Za-km-z]{44}|bafy[0-9a-z]{50,}")

CLIENT = web.AppKey("supervisor_client", SupervisorClient)
FRONT = web.AppKey("front_settings", object)


def b32_hostname(vm_hash: str) -> str:
    """The label a node serves a program under (the VM's hostname)."""
    return protocol.hostname(vm_hash)


async def build_http_scope(path: str, request: web.Request) -> dict:
    """The scope exactly as aleph-vm's `build_asgi_scope` makes it."""
    return protocol.http_scope(
        request.method, path, request.query_string, request.raw_headers, await request.read()
    )


def traceback_response(result: dict) -> web.Response:
    return web.Response(
        status=500,
        reason="Error in VM execution",
        body=result["traceback"],
        content_type="text/plain",
    )


def answer_to_response(
    result: dict, vm_hash: str, code_ref: str | None = None, method: str = "GET"
) -> web.Response:
    """An init's unpacked HTTP answer as the supervisor turns it into a response,
    framed by the front (see the module's documentation).

    Raises KeyError, TypeError, AttributeError, UnicodeDecodeError or ValueError (with
    the reason) on an answer that is not the protocol's or cannot be sent as HTTP (the
    caller answers 502).
    """
    if "traceback" in result:
        return traceback_response(result)
    body = result["body"]["body"]
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes):
        raise TypeError(f"the body is a {type(body).__name__}, not bytes")
    status = result["headers"]["status"]
    if type(status) is not int or not 200 <= status <= 599:
        # 1xx is interim in HTTP/1.1: the client would read the body as the next response.
        raise ValueError(f"status {status!r} is not a final HTTP status (200-599)")
    headers = CIMultiDict()
    for raw_name, raw_value in result["headers"]["headers"]:
        name, value = raw_name.decode().lower(), raw_value.decode()
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name[:100]!r} is not an HTTP token")
        if _UNSENDABLE_IN_VALUE.search(value):
            raise ValueError(f"header {name!r} has a control character in its value {value[:100]!r}")
        headers.add(name, value)
    lengths = headers.getall("content-length", [])
    for header in DROPPED_HEADERS + HOP_BY_HOP_HEADERS:
        headers.popall(header, None)
    if method == "HEAD" and len(lengths) == 1 and lengths[0].isdigit() and lengths[0].isascii() and not body:
        # No body follows a HEAD: the program's length is the GET's, and frames nothing.
        headers["content-length"] = lengths[0]
    headers["Aleph-Program-ItemHash"] = vm_hash
    if code_ref:
        headers["Aleph-Program-Code-Ref"] = code_ref
    # aiohttp sets Content-Length from the body it is given.
    return web.Response(status=status, body=body, headers=headers)


class FrontSettings:
    def __init__(
        self,
        vm_hash: str,
        seconds: float,
        code_ref: str | None,
        on_empty_answer: Callable[[], Awaitable[None]] | None,
        becomes_ready: Callable[[], Awaitable[None]] | None = None,
    ):
        self.vm_hash = vm_hash
        self.seconds = seconds
        self.code_ref = code_ref
        self.on_empty_answer = on_empty_answer
        self.becomes_ready = becomes_ready
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
            # A machine being (re)started: its boot is not the call's time, and is bounded itself.
            await settings.becomes_ready()
        raw = await client.run_raw(scope, timeout=settings.seconds)
    except TimeoutError:
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
        result = protocol.unpack(raw)
    except protocol.UNPACK_ERRORS as error:
        logger.error("invalid answer from the init: %s", error)
        return _bad_gateway("Invalid response from VM")
    if not isinstance(result, dict):
        return _bad_gateway("Invalid response from VM")
    return result


def _log_error_answer(result: dict, call: str) -> None:
    """Log an error answer as whose it is: the init's own failure or refusal, or the program's."""
    if "traceback" not in result:
        return
    if protocol.is_init_failure(result):
        logger.error("the init failed on %s (not the program's error):\n%s", call, result["traceback"])
    else:
        logger.warning("program error on %s:\n%s", call, result["traceback"])


async def _run_request(request: web.Request, path: str) -> web.StreamResponse:
    settings: FrontSettings = request.app[FRONT]
    scope = await build_http_scope(path, request)
    result = await _call_init(request, scope)
    if isinstance(result, web.StreamResponse):
        return result
    _log_error_answer(result, f"{request.method} {path}")
    try:
        response = answer_to_response(result, settings.vm_hash, settings.code_ref, request.method)
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
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        raise web.HTTPBadRequest(text="The event must be a JSON object (an aleph message)\n") from None
    if not isinstance(event, dict):
        raise web.HTTPBadRequest(text="The event must be a JSON object (an aleph message)\n")
    scope = protocol.event_scope(event)
    try:
        protocol.run_request(scope)
    except (ValueError, OverflowError, TypeError) as error:
        # JSON that msgpack cannot carry: an integer past 64 bits, nesting past its limit.
        raise web.HTTPBadRequest(text=f"The event cannot be sent to the program: {error}\n") from None
    result = await _call_init(request, scope)
    if isinstance(result, web.StreamResponse):
        return result
    if "traceback" in result:
        _log_error_answer(result, "the event")
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


def _size(length: int | None) -> str:
    if length is None:
        return "-"
    if length < 1000:
        return f"{length} B"
    if length < 1000**2:
        return f"{length / 1000:.1f} kB"
    return f"{length / 1000**2:.1f} MB"


def access_log_middleware(write: Callable[[str], None]):
    """One line per request, as uvicorn prints it: `GET /path 200 12.3 ms 1.2 kB`."""

    @web.middleware
    async def access_log(request: web.Request, handler) -> web.StreamResponse:
        started = time.monotonic()
        status, length = 500, None
        try:
            response = await handler(request)
            status = response.status
            length = response.body_length if response.prepared else response.content_length
            return response
        except web.HTTPException as error:
            status, length = error.status, len(error.text or "")
            raise
        finally:
            took = (time.monotonic() - started) * 1000
            write(f"{request.method} {request.path_qs} {status} {took:.1f} ms {_size(length)}")

    return access_log


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # A node overwrites the Server header with its own version.
    response.headers["Server"] = f"aleph-runtime/{__version__}"


def create_front_app(
    client: SupervisorClient,
    vm_hash: str,
    seconds: float,
    *,
    code_ref: str | None = None,
    on_empty_answer: Callable[[], Awaitable[None]] | None = None,
    becomes_ready: Callable[[], Awaitable[None]] | None = None,
    client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
    node_error_pages: bool = True,
    access_log: Callable[[str], None] | None = None,
) -> web.Application:
    """The front's aiohttp app for one program.

    - `seconds`: the program's `resources.seconds`, the bound of each call (504 after it);
    - `on_empty_answer`: awaited when the init answers nothing (a node stops the VM then);
    - `becomes_ready`: awaited before each call (a crashed machine is replaced then); it may
      raise ConnectionRefusedError (a 502) and must bound its own wait;
    - `client_max_size`: the largest request body (413 above it); a node keeps aiohttp's 1 MiB;
    - `node_error_pages`: rewrite 404s (the program's too) and HTTP errors into
      `{"error": ...}` JSON as a node's supervisor does; False passes the program's own through;
    - `access_log`: called with one line per request (method, path, status, time, size).
    """
    middlewares = [access_log_middleware(access_log)] if access_log is not None else []
    if node_error_pages:
        middlewares.append(node_error_middleware)
    app = web.Application(client_max_size=client_max_size, middlewares=middlewares)
    app.on_response_prepare.append(_server_header)
    app[CLIENT] = client
    app[FRONT] = FrontSettings(vm_hash, seconds, code_ref, on_empty_answer, becomes_ready)
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
