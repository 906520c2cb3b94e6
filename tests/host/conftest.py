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

from aleph_runtime.host.services.guest_api import GuestAPIServer, GuestAPISettings, guest_api_socket_path
from aleph_runtime.host.services.redis_server import RedisServer
from aleph_runtime.host.services.signer import LocalSigner

VM_HASH = "cafe" * 16


@pytest.fixture
async def redis_server(short_dir):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    async with RedisServer(short_dir / "redis", persistent=False) as server:
        yield server


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

    async def make(
        vm_hash: str = VM_HASH, api_server: str = "http://127.0.0.1:9", **kwargs
    ) -> GuestAPIServer:
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


def make_message(
    address: str,
    content: dict | None = None,
    chain: str = "ETH",
    post_type: str = "test",
    ref: str | None = None,
) -> dict:
    """An unsigned POST message as aleph-sdk-python builds one (inline item_content)."""
    post = {
        "address": address,
        "time": time.time(),
        "type": post_type,
        "content": content or {"hello": "world"},
    }
    if ref is not None:
        post["ref"] = ref
    item_content = json.dumps(post, separators=(",", ":"))
    return {
        "chain": chain,
        "type": "POST",
        "channel": "TEST",
        "time": time.time(),
        "item_type": "inline",
        "item_content": item_content,
        "item_hash": hashlib.sha256(item_content.encode()).hexdigest(),
    }
