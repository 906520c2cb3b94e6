"""The guest API: what a program reaches at `/tmp/socat-socket` inside its VM.

The init bridges that socket to the host's vsock port 53, i.e. the Unix socket
`<uds>_53` on the host, where this aiohttp app listens. The routes and their rules are
aleph-vm's own guest API (docs/protocol.md, section 8):

- `GET /properties`, `POST /sign`: the node's signing account (see `signer.py`); a
  message is signed only when it is inline, its item_hash is the sha256 of its
  item_content (what is signed is the hash: it must be the content's) and that
  content's `address` is the VM's hash.
- `GET /cache/?pattern=`, `GET|PUT|DELETE /cache/<key>`: a Redis cache, keys stored as
  `<vm_hash>:<key>`, expiring after 7 days; a key must match `^\\w+$`, a pattern
  `^[\\w?*^\\-]+$`, else 400.
- `POST /api/v0/ipfs/pubsub/pub`, `POST /api/v0/p2p/pubsub/pub`: the program's POST
  message (its JSON, or the object as aleph-sdk-python 2 sends it) is re-published
  through the node, signed by the node's account, under the rule of `/sign` (400
  otherwise). An `amend` is re-published only when its `ref` is a post the node
  published for this VM in this run (the latest `published_posts_kept` of them), 403
  otherwise: the node's key must not amend another VM's posts, nor the node's own.
- `POST /api/v0/messages`: 405, as on a node, but in JSON so the SDK falls back to pubsub.
- any other `GET|HEAD|OPTIONS /<path>`: proxied to the aleph API server, so programs
  can read the network with internet disabled.

Where aleph-vm's guest API would hang or crash (an unreachable API server, a garbled
message, Redis down), this one answers at once with a one-line reason: 502 when the
API server cannot be reached (an API server's refusal keeps its status), 400 for a
request it cannot read (JSON nested too deeply for the parser included), 503 when Redis
is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from aleph_runtime import protocol
from aleph_runtime.host.services.signer import LocalSigner

logger = logging.getLogger(__name__)

#: The API server aleph-vm's guest API proxies to.
DEFAULT_API_SERVER = "https://official.aleph.cloud"
CACHE_EXPIRES_AFTER = 7 * 24 * 3600  # seconds, as on a node
KEY_RE = re.compile(r"\w+")
PATTERN_RE = re.compile(r"[\w?*^\-]+")
#: aleph-vm reposts pubsub messages with this channel when the message has none.
DEFAULT_CHANNEL = "ALEPH-CLOUDSOLUTIONS"
#: How many of a VM's published posts are remembered as amendable: bounded, since a
#: program may post without end.
PUBLISHED_POSTS_KEPT = 4096

VM_HASH = web.AppKey("vm_hash", str)
SETTINGS = web.AppKey("guest_api_settings", object)
REDIS = web.AppKey("redis", object)
PUBLISHED_POSTS = web.AppKey("published_posts", object)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)


@dataclass
class GuestAPISettings:
    vm_hash: str
    redis_url: str
    signer: LocalSigner
    api_server: str = DEFAULT_API_SERVER
    #: Upper bound of one proxied request, connection included: never a hang.
    proxy_timeout: float = 30.0
    connect_timeout: float = 5.0
    #: How many of the posts published for the VM it may amend (the latest ones).
    published_posts_kept: int = PUBLISHED_POSTS_KEPT


def guest_api_socket_path(uds_path: str | os.PathLike) -> str:
    """Where the host serves the guest API for a VM whose vsock device is `uds_path`."""
    return f"{uds_path}_{protocol.GUEST_API_PORT}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=_one_line(reason) + "\n")


# --- cache ---


def _cache_key(request: web.Request) -> str | None:
    key = request.match_info.get("key", "")
    return key if KEY_RE.fullmatch(key) else None


async def get_from_cache(request: web.Request) -> web.StreamResponse:
    key = _cache_key(request)
    if key is None:
        return _error(400, "Invalid key")
    value = await request.app[REDIS].get(f"{request.app[VM_HASH]}:{key}")
    if value is None:
        return web.Response(text="No such key in cache", status=404)
    return web.Response(body=value, status=200)


async def put_in_cache(request: web.Request) -> web.StreamResponse:
    key = _cache_key(request)
    if key is None:
        return _error(400, "Invalid key")
    value = await request.read()
    result = await request.app[REDIS].set(f"{request.app[VM_HASH]}:{key}", value, ex=CACHE_EXPIRES_AFTER)
    return web.json_response(bool(result))


async def delete_from_cache(request: web.Request) -> web.StreamResponse:
    key = _cache_key(request)
    if key is None:
        return _error(400, "Invalid key")
    return web.json_response(await request.app[REDIS].delete(f"{request.app[VM_HASH]}:{key}"))


async def list_keys_from_cache(request: web.Request) -> web.StreamResponse:
    prefix = request.app[VM_HASH]
    pattern = request.rel_url.query.get("pattern", "*")
    if not PATTERN_RE.fullmatch(pattern):
        return _error(400, "Invalid pattern")
    keys = []
    # SCAN rather than KEYS: the node's Redis is shared by every VM.
    async for key in request.app[REDIS].scan_iter(match=f"{prefix}:{pattern}", count=1000):
        keys.append(key.decode()[len(prefix) + 1 :])
    return web.json_response(sorted(keys))


# --- signing ---


async def properties(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[SETTINGS].signer.properties())


def parse_json(text: str | bytes) -> object:
    """json.loads, where nesting too deep for the parser is a ValueError (a 400), not a
    RecursionError that would escape as a 500."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def check_message(message: object, vm_hash: str) -> str | None:
    """Why a message may not be signed for this VM, or None when it may.

    As aleph-vm's guest API: the address in the message's item_content must be the
    VM's hash, so a program can only sign in its own name. The signature covers the
    item_hash, not the content, so the content checked must be the one hashed: an
    inline message whose item_hash is the sha256 of its item_content. Otherwise a
    program would get the node's signature on any hash, a stored file's say.
    """
    if not isinstance(message, dict):
        return "Invalid message: not a JSON object"
    if message.get("item_type") != "inline":
        return "Invalid message: only inline messages are signed (item_type must be 'inline')"
    item_content = message.get("item_content")
    if not isinstance(item_content, str):
        return "Invalid message: item_content must be a JSON string"
    try:
        content_hash = hashlib.sha256(item_content.encode()).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return "Invalid message: item_content is not valid UTF-8"
    if message.get("item_hash") != content_hash:
        return "Invalid message: item_hash is not the sha256 of item_content"
    try:
        content = parse_json(item_content)
    except ValueError:
        return "Invalid message: item_content is not JSON"
    if not isinstance(content, dict) or content.get("address") != vm_hash:
        return "Message address does not match VM item_hash"
    return None


async def sign(request: web.Request) -> web.StreamResponse:
    try:
        message = parse_json(await request.read())
    except ValueError:
        return _error(400, "Invalid message: the body is not JSON")
    problem = check_message(message, request.app[VM_HASH])
    if problem:
        return _error(400, problem)
    for field in ("chain", "type", "item_hash"):
        if not isinstance(message.get(field), str):
            return _error(400, f"Invalid message: {field} must be a string")
    try:
        signed = await request.app[SETTINGS].signer.sign_message(message)
    except ValueError as error:  # e.g. a sender that is not the node's address
        return _error(400, f"Cannot sign: {error}")
    return web.json_response(signed)


# --- the aleph API: proxy and pubsub re-publication ---


def _api_url(request: web.Request) -> URL:
    base = request.app[SETTINGS].api_server.rstrip("/")
    url = f"{base}/{request.rel_url.raw_path.lstrip('/')}"
    if request.rel_url.raw_query_string:
        url += f"?{request.rel_url.raw_query_string}"
    return URL(url, encoded=True)


def _unreachable(request: web.Request, error: BaseException) -> web.Response:
    api_server = request.app[SETTINGS].api_server
    if isinstance(error, TimeoutError):
        reason = (
            f"aleph API server {api_server} did not answer within {request.app[SETTINGS].proxy_timeout:g} s"
        )
    else:
        reason = f"aleph API server {api_server} unreachable: {type(error).__name__}: {error}"
    logger.warning(_one_line(reason))
    return _error(502, reason)


async def proxy(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app[HTTP_SESSION]
    try:
        async with session.request(request.method, _api_url(request)) as response:
            data = await response.read()
            return web.Response(body=data, status=response.status, content_type=response.content_type)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return _unreachable(request, error)


class PublishedPosts:
    """The item hashes of the posts the node published for one VM in this run, the latest
    `kept` of them: the only posts that VM may amend. The node's key signs every VM's
    posts, so the network alone cannot tell which VM made one; the host can."""

    def __init__(self, kept: int):
        self.kept = kept
        self._hashes: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first

    def add(self, item_hash: str) -> None:
        self._hashes[item_hash] = None
        while len(self._hashes) > self.kept:
            del self._hashes[next(iter(self._hashes))]

    def __contains__(self, item_hash: object) -> bool:
        return isinstance(item_hash, str) and item_hash in self._hashes  # a program's ref: any JSON


def _pubsub_message(body: object) -> dict:
    """The program's message from a pubsub body: `data` is its JSON (aleph-client, aleph-vm's
    own guest API) or the message object itself (aleph-sdk-python 2's fallback)."""
    if not isinstance(body, dict) or "data" not in body:
        raise ValueError("the body must be a JSON object with 'topic' and 'data'")
    data = body["data"]
    message = parse_json(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(message, dict):
        raise ValueError("'data' must be a message object or its JSON")
    return message


async def repost(request: web.Request) -> web.StreamResponse:
    """Re-publish a program's pubsub POST through the node, as aleph-vm's VM connector does.

    The program sends `{"topic": str, "data": message}`; the message's content is
    published as a new POST signed by the node's account (the program has no key of its
    own). The message must pass `/sign`'s rule (check_message: in the VM's name, its hash
    its content's), else 400; an amend must name in `ref` a post published here for this
    VM (PublishedPosts), else 403 in JSON. The answer is `{"status": "success",
    "item_hash": ...}`; an API server that refuses the new message is answered with its
    own status and a one-line reason.
    """
    try:
        message = _pubsub_message(parse_json(await request.read()))
        if message.get("type") not in ("POST", None):
            # The node publishes in its own name: only a post's content carries over.
            return _error(
                400, f"the node re-publishes only POST messages, not {str(message.get('type'))[:20]}"
            )
        content = parse_json(message["item_content"])
        post_content, post_type = content["content"], content["type"]
    except (ValueError, KeyError, TypeError) as error:
        return _error(400, f"Invalid pubsub message: {type(error).__name__}: {error}")
    problem = check_message(message, request.app[VM_HASH])
    if problem:
        return _error(400, problem)
    published: PublishedPosts = request.app[PUBLISHED_POSTS]
    if post_type == "amend" and content.get("ref") not in published:
        return web.json_response(
            {"error": f"an amend's ref must be a post this VM published in this run (one of its latest "
                      f"{published.kept}); {str(content.get('ref'))[:80]!r} is not"},
            status=403,
        )  # fmt: skip
    channel = message.get("channel") or DEFAULT_CHANNEL

    from aleph.sdk.client import AuthenticatedAlephHttpClient
    from aleph_message.models import MessageType, PostContent

    settings = request.app[SETTINGS]
    account = await settings.signer.get_account()
    try:
        # Bounded from outside: aleph-sdk-python 2.4 mis-serialises JSON when given a timeout.
        async with (
            asyncio.timeout(settings.proxy_timeout),
            AuthenticatedAlephHttpClient(
                account=account, api_server=settings.api_server, allow_unix_sockets=False
            ) as client,
        ):
            new_content = PostContent(
                type=post_type, address=account.get_address(), content=post_content,
                ref=content.get("ref"), time=time.time(),
            )  # fmt: skip
            signed = await client.generate_signed_message(
                message_type=MessageType.post,
                content=new_content.model_dump(exclude_none=True),
                channel=channel,
            )
            broadcast = {
                "sync": False,
                "message": signed.model_dump(mode="json", include=client.BROADCAST_MESSAGE_FIELDS),
            }
            # POSTed here rather than through create_post, whose errors lose the API's status.
            async with client.http_session.post("/api/v0/messages", json=broadcast) as response:
                if response.status not in (200, 202):
                    reason = _one_line((await response.text())[:500])
                    return _error(
                        response.status,
                        f"aleph API server {settings.api_server} refused the message: {reason}",
                    )
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as error:
        return _unreachable(request, error)
    if post_type != "amend":  # an amend's ref names the original post, never an amend
        published.add(signed.item_hash)
    return web.json_response({"status": "success", "item_hash": signed.item_hash})


async def post_message(request: web.Request) -> web.StreamResponse:
    """POST /api/v0/messages is not open to programs, as on a node (where only GET, HEAD and
    OPTIONS reach the API): 405, in JSON, so aleph-sdk-python falls back to the pubsub route
    (it reads this answer as JSON; a node's plain-text 405 makes it raise after posting)."""
    return web.json_response(
        {"error": "POST /api/v0/messages is not available to programs: the node re-publishes "
                  "messages sent to POST /api/v0/ipfs/pubsub/pub, signed with its key"},
        status=405,
        headers={"Allow": "GET, HEAD, OPTIONS"},
    )  # fmt: skip


# --- the app ---


@web.middleware
async def redis_errors(request: web.Request, handler):
    import redis.exceptions

    try:
        return await handler(request)
    except redis.exceptions.RedisError as error:
        return _error(503, f"cache unavailable: {type(error).__name__}: {error}")


async def _open_clients(app: web.Application):
    import redis.asyncio

    settings = app[SETTINGS]
    app[REDIS] = redis.asyncio.from_url(settings.redis_url, socket_connect_timeout=settings.connect_timeout)
    app[HTTP_SESSION] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.proxy_timeout, sock_connect=settings.connect_timeout)
    )
    yield
    await app[HTTP_SESSION].close()
    await app[REDIS].aclose()


def create_guest_api_app(settings: GuestAPISettings) -> web.Application:
    app = web.Application(middlewares=[redis_errors])
    app[SETTINGS] = settings
    app[VM_HASH] = settings.vm_hash or "_"
    app[PUBLISHED_POSTS] = PublishedPosts(settings.published_posts_kept)
    app.cleanup_ctx.append(_open_clients)

    app.router.add_route("GET", "/properties", properties)
    app.router.add_route("POST", "/sign", sign)

    app.router.add_route("GET", "/cache/", list_keys_from_cache)
    app.router.add_route("GET", "/cache/{key:.*}", get_from_cache)
    app.router.add_route("PUT", "/cache/{key:.*}", put_in_cache)
    app.router.add_route("DELETE", "/cache/{key:.*}", delete_from_cache)

    # Reading anything else is proxied to the aleph API; posting only where handled here.
    for method in ("GET", "HEAD", "OPTIONS"):
        app.router.add_route(method, "/{tail:.*}", proxy)

    app.router.add_route("POST", "/api/v0/messages", post_message)
    for pubsub in ("ipfs", "p2p"):
        app.router.add_route("POST", f"/api/v0/{pubsub}/pubsub/pub", repost)
    return app


class GuestAPIServer:
    """The guest API served on a Unix socket (`<uds>_53`), started and stopped in-process.

    async with GuestAPIServer(guest_api_socket_path(uds), settings):
        ...  # boot the VM
    """

    def __init__(self, socket_path: str | os.PathLike, settings: GuestAPISettings):
        self.socket_path = Path(socket_path)
        self.settings = settings
        self.app = create_guest_api_app(settings)
        self._runner: web.AppRunner | None = None

    async def start(self) -> GuestAPIServer:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.socket_path))
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def __aenter__(self) -> GuestAPIServer:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
