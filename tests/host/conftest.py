"""Fixtures for the host side: a real redis-server, the guest API on a real Unix socket,
and a local server speaking the aleph API's JSON (the network itself is out of reach)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web

from aleph_runtime.host.guest_api import GuestAPIServer, GuestAPISettings, guest_api_socket_path
from aleph_runtime.host.redis_server import RedisServer
from aleph_runtime.host.signer import LocalSigner

VM_HASH = "cafe" * 16


@pytest.fixture
def short_dir():
    """A short directory: Unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def redis_server(short_dir):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    async with RedisServer(short_dir / "redis", persistent=False) as server:
        yield server


class FakeAlephAPI:
    """A local aiohttp server answering a few aleph API routes with the API's JSON shapes."""

    def __init__(self):
        self.posted: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/v0/aggregates/{address}.json", self.aggregates)
        self.app.router.add_get("/api/v0/info/public.json", self.info)
        self.app.router.add_post("/api/v0/messages", self.post_message)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def aggregates(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, str(request.rel_url)))
        keys = request.query.get("keys", "").split(",")
        data = {key: {"owner": request.match_info["address"], "key": key} for key in keys if key}
        return web.json_response({"address": request.match_info["address"], "data": data})

    async def info(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, str(request.rel_url)))
        return web.json_response({"node_multi_addresses": [], "node_version": "fake"})

    async def post_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posted.append(body)
        return web.json_response(
            {"publication_status": {"status": "success", "failed": []}, "message_status": "pending"}, status=202
        )

    async def start(self) -> FakeAlephAPI:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def fake_api():
    api = await FakeAlephAPI().start()
    yield api
    await api.stop()


@pytest.fixture(scope="session")
def signer_dir():
    # One key for the session: the first import of web3 is slow, key creation is not.
    path = Path(tempfile.mkdtemp(prefix="ar-key-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def signer(signer_dir):
    return LocalSigner.in_state_dir(signer_dir)


@pytest.fixture
async def guest_api_factory(short_dir, redis_server, signer):
    """Start guest API servers; each gets its own `<uds>_53` socket; all stopped afterwards."""
    servers: list[GuestAPIServer] = []

    async def make(vm_hash: str = VM_HASH, api_server: str = "http://127.0.0.1:9", **kwargs) -> GuestAPIServer:
        uds = short_dir / f"vm{len(servers)}.sock"
        settings = GuestAPISettings(
            vm_hash=vm_hash, redis_url=redis_server.url, signer=signer, api_server=api_server, **kwargs
        )
        server = await GuestAPIServer(guest_api_socket_path(uds), settings).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def make_message(address: str, content: dict | None = None, chain: str = "ETH") -> dict:
    """An unsigned POST message as aleph-sdk-python builds one (inline item_content)."""
    item_content = json.dumps(
        {"address": address, "time": time.time(), "type": "test", "content": content or {"hello": "world"}},
        separators=(",", ":"),
    )
    return {
        "chain": chain,
        "type": "POST",
        "channel": "TEST",
        "time": time.time(),
        "item_type": "inline",
        "item_content": item_content,
        "item_hash": hashlib.sha256(item_content.encode()).hexdigest(),
    }
