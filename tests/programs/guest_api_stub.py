"""A stand-in for the supervisor's guest API on `<uds>_53`, with its routes and answers:
GET /properties, POST /sign, GET /cache/?pattern=, GET|PUT|DELETE /cache/<key>.

Usage as a script: guest_api_stub.py SOCKET_PATH VM_HASH (serves until killed).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import sys

from aiohttp import web

ADDRESS = "0x" + "ab" * 20
PUBLIC_KEY = "0x04" + "cd" * 64


def make_app(vm_hash: str) -> web.Application:
    store: dict[str, bytes] = {}

    async def properties(request: web.Request) -> web.Response:
        return web.json_response(
            {"chain": "ETH", "curve": "secp256k1", "address": ADDRESS, "public_key": PUBLIC_KEY}
        )

    async def sign(request: web.Request) -> web.Response:
        message = await request.json()
        content = message.get("item_content")
        import json

        if not content or json.loads(content).get("address") != vm_hash:
            raise web.HTTPUnauthorized(text="Message address does not match with VM hash")
        return web.json_response({**message, "signature": "0x" + "ee" * 65})

    def key_of(request: web.Request) -> str:
        key = request.match_info["key"]
        if not re.match(r"^\w+$", key):
            raise web.HTTPBadRequest(text="Invalid key")
        return f"{vm_hash}:{key}"

    async def cache_get(request: web.Request) -> web.Response:
        value = store.get(key_of(request))
        if value is None:
            raise web.HTTPNotFound(text="No such key in cache")
        return web.Response(body=value)

    async def cache_put(request: web.Request) -> web.Response:
        store[key_of(request)] = await request.read()
        return web.json_response(True)

    async def cache_delete(request: web.Request) -> web.Response:
        return web.json_response(1 if store.pop(key_of(request), None) is not None else 0)

    async def cache_keys(request: web.Request) -> web.Response:
        pattern = request.query.get("pattern", "*")
        prefix = f"{vm_hash}:"
        keys = [key[len(prefix) :] for key in store if key.startswith(prefix)]
        return web.json_response(fnmatch.filter(keys, pattern))

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/properties", properties)
    app.router.add_post("/sign", sign)
    app.router.add_get("/cache/", cache_keys)
    app.router.add_get("/cache/{key}", cache_get)
    app.router.add_put("/cache/{key}", cache_put)
    app.router.add_delete("/cache/{key}", cache_delete)
    return app


async def start(socket_path: str, vm_hash: str) -> web.AppRunner:
    runner = web.AppRunner(make_app(vm_hash))
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    return runner


async def _main(socket_path: str, vm_hash: str) -> None:
    await start(socket_path, vm_hash)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
