"""A local server speaking the aleph API's JSON: the network itself is out of reach here,
so tests of the guest API proxy, of the legacy aleph_client modules and of
`aleph-runtime run --api-server` point at it.

It serves signed messages (`/api/v0/messages.json`, `/api/v0/posts.json`, the
`/api/ws0/messages` websocket), aggregates,
stored files (`/api/v0/storage/raw/<hash>`), and records what is posted to
`/api/v0/messages` (the message is then served like the others, as a node would).
`refuse_with = (status, text)` makes the next POSTs fail as a refusing API server does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest
from aiohttp import web

#: The message hash the aleph docs and aleph-vm's tutorial read with get_messages.
DOCS_MESSAGE_HASH = "f246f873c3e0f637a15c566e7a465d2ecbb83eaa024d54ccb8fb566b549a929e"
DOCS_MESSAGE_CONTENT = {"body": "Hello from the aleph docs", "answer": 42}
#: The key that signs the served messages (an author on the network, not the node).
AUTHOR_KEY = bytes(range(1, 33))
STORED_FILE = b"a file kept by the storage engine\n"
STORED_FILE_HASH = hashlib.sha256(STORED_FILE).hexdigest()


def _split(value: str | None) -> set[str] | None:
    return set(value.split(",")) if value else None


class FakeAlephAPI:
    """A local aiohttp server answering a few aleph API routes with the API's JSON shapes."""

    def __init__(self):
        self.posted: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.messages: list[dict] = []
        self.files: dict[str, bytes] = {STORED_FILE_HASH: STORED_FILE}
        self.refuse_with: tuple[int, str] | None = None
        self.author_address = ""
        self.app = web.Application()
        self.app.router.add_get("/api/v0/aggregates/{address}.json", self.aggregates)
        self.app.router.add_get("/api/v0/info/public.json", self.info)
        self.app.router.add_get("/api/v0/messages.json", self.messages_json)
        self.app.router.add_get("/api/v0/posts.json", self.posts_json)
        self.app.router.add_get("/api/v0/storage/raw/{hash}", self.storage_raw)
        self.app.router.add_get("/api/ws0/messages", self.messages_websocket)
        self.app.router.add_post("/api/v0/messages", self.post_message)
        self.runner: web.AppRunner | None = None
        self.url = ""

    # --- served content ---

    async def add_signed_message(
        self, content: dict, item_hash: str | None = None, channel: str = "TEST"
    ) -> dict:
        """A POST message by the author, in the API's JSON; `item_hash` set makes it a storage message."""
        from aleph.sdk.chains.ethereum import ETHAccount

        account = ETHAccount(AUTHOR_KEY)
        self.author_address = account.get_address()
        post_content = {
            "address": account.get_address(),
            "time": time.time(),
            "type": "test",
            "content": content,
        }
        message = {"chain": "ETH", "sender": account.get_address(), "type": "POST", "channel": channel,
                   "time": time.time(), "content": post_content}  # fmt: skip
        if item_hash is None:
            message["item_content"] = json.dumps(post_content, separators=(",", ":"))
            message["item_hash"] = hashlib.sha256(message["item_content"].encode()).hexdigest()
            message["item_type"] = "inline"
        else:
            message["item_hash"], message["item_type"] = item_hash, "storage"
        message = await account.sign_message(message)
        return self._store(message)

    def _store(self, message: dict) -> dict:
        message = dict(message, confirmed=False, confirmations=[], size=len(json.dumps(message)))
        if "content" not in message and message.get("item_content"):
            message["content"] = json.loads(message["item_content"])
        self.messages.append(message)
        return message

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, str(request.rel_url)))

    # --- routes ---

    async def aggregates(self, request: web.Request) -> web.Response:
        self._record(request)
        keys = request.query.get("keys", "").split(",")
        data = {key: {"owner": request.match_info["address"], "key": key} for key in keys if key}
        return web.json_response({"address": request.match_info["address"], "data": data})

    async def info(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"node_multi_addresses": [], "node_version": "fake"})

    def _matching(self, request: web.Request) -> list[dict]:
        query = request.query
        hashes, channels = _split(query.get("hashes")), _split(query.get("channels"))
        addresses, types = (
            _split(query.get("addresses")),
            _split(query.get("msgTypes") or query.get("msgType")),
        )
        content_types = _split(query.get("contentTypes") or query.get("types"))
        refs = _split(query.get("refs"))
        found = []
        for message in self.messages:
            content = message.get("content") or {}
            if hashes and message["item_hash"] not in hashes:
                continue
            if channels and message.get("channel") not in channels:
                continue
            if addresses and message["sender"] not in addresses and content.get("address") not in addresses:
                continue
            if types and message["type"] not in types:
                continue
            if content_types and content.get("type") not in content_types:
                continue
            if refs and content.get("ref") not in refs:
                continue
            found.append(message)
        return found

    def _page(self, request: web.Request, items: list, name: str) -> web.Response:
        per_page = int(request.query.get("pagination", 200))
        page = int(request.query.get("page", 1))
        start = (page - 1) * per_page
        return web.json_response({
            name: items[start : start + per_page],
            "pagination_page": page,
            "pagination_total": len(items),
            "pagination_per_page": per_page,
            "pagination_item": name,
        })  # fmt: skip

    async def messages_json(self, request: web.Request) -> web.Response:
        self._record(request)
        return self._page(request, self._matching(request), "messages")

    async def posts_json(self, request: web.Request) -> web.Response:
        self._record(request)
        posts = []
        for message in self._matching(request):
            if message["type"] != "POST":
                continue
            content = message["content"]
            posts.append({
                "chain": message["chain"], "item_hash": message["item_hash"], "sender": message["sender"],
                "type": content.get("type"), "channel": message.get("channel"), "confirmed": False,
                "content": content.get("content"), "item_content": message.get("item_content"),
                "item_type": message["item_type"], "signature": message["signature"], "size": message["size"],
                "time": message["time"], "confirmations": [], "original_item_hash": message["item_hash"],
                "original_signature": message["signature"], "original_type": content.get("type"),
                "hash": message["item_hash"], "ref": content.get("ref"), "address": content.get("address"),
            })  # fmt: skip
        return self._page(request, posts, "posts")

    async def messages_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """The matching messages, one per text frame, then "close cmd" as the API says goodbye."""
        self._record(request)
        websocket = web.WebSocketResponse()
        await websocket.prepare(request)
        for message in self._matching(request):
            await websocket.send_str(json.dumps(message))
        await websocket.send_str("close cmd")
        await websocket.close()
        return websocket

    async def storage_raw(self, request: web.Request) -> web.Response:
        self._record(request)
        data = self.files.get(request.match_info["hash"])
        if data is None:
            return web.json_response({"error": "file not found"}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def post_message(self, request: web.Request) -> web.Response:
        self._record(request)
        if self.refuse_with is not None:
            status, text = self.refuse_with
            return web.json_response({"error": text}, status=status)
        body = await request.json()
        self.posted.append(body)
        if isinstance(body.get("message"), dict):
            self._store(body["message"])
        return web.json_response(
            {"publication_status": {"status": "success", "failed": []}, "message_status": "pending"},
            status=202,
        )

    async def start(self) -> FakeAlephAPI:
        await self.add_signed_message(DOCS_MESSAGE_CONTENT, item_hash=DOCS_MESSAGE_HASH)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def wait_posted(self, count: int, timeout: float = 10) -> list[dict]:
        """The posted bodies once there are `count` of them (bounded: an assertion after `timeout`)."""
        async with asyncio.timeout(timeout):
            while len(self.posted) < count:
                await asyncio.sleep(0.05)
        return self.posted

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def fake_api():
    api = await FakeAlephAPI().start()
    yield api
    await api.stop()
