"""A local server speaking the aleph API's JSON: the network itself is out of reach here,
so tests of the guest API proxy and of `aleph-runtime run --api-server` point at it."""

from __future__ import annotations

import pytest
from aiohttp import web


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
