"""The private redis-server: starts on a Unix socket only, keeps data across restarts
when persistent, and leaves no socket behind."""

from __future__ import annotations

import shutil

import pytest
import redis.asyncio

from aleph_runtime.host.services.redis_server import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


async def test_persistent_server_keeps_data_across_restarts(short_dir):
    server = RedisServer(short_dir / "redis", persistent=True)
    async with server:
        assert server.socket_path.is_socket()
        client = redis.asyncio.from_url(server.url)
        await client.set("k", b"v")
        await client.aclose()
        pid = server.process.pid
    assert not server.socket_path.exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)

    async with RedisServer(short_dir / "redis", persistent=True) as again:
        client = redis.asyncio.from_url(again.url)
        assert await client.get("k") == b"v"
        await client.aclose()


async def test_memory_only_server_forgets(short_dir):
    async with RedisServer(short_dir / "redis", persistent=False) as server:
        client = redis.asyncio.from_url(server.url)
        await client.set("k", b"v")
        await client.aclose()
    async with RedisServer(short_dir / "redis", persistent=False) as server:
        client = redis.asyncio.from_url(server.url)
        assert await client.get("k") is None
        await client.aclose()
