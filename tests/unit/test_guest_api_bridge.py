"""The in-process guest API bridge, driven by the real aleph-sdk-python clients."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from aleph_runtime.guest.guest_api_bridge import start_guest_api_bridge

VM_HASH = "ab" * 32
_STUB = Path(__file__).resolve().parent.parent / "programs" / "guest_api_stub.py"
_spec = importlib.util.spec_from_file_location("guest_api_stub", _STUB)
guest_api_stub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_api_stub)


@pytest.fixture
def base(tmp_path) -> str:
    return str(tmp_path / "v.sock")


def dev_transport(base: str):
    async def open_host_connection(port: int):
        return await asyncio.open_unix_connection(f"{base}_{port}")

    return open_host_connection


@pytest.fixture
async def bridge(tmp_path, base):
    runner = await guest_api_stub.start(f"{base}_53", VM_HASH)
    socket_path = str(tmp_path / "socat-socket")
    server = await start_guest_api_bridge(dev_transport(base), socket_path)
    yield socket_path
    server.close()
    await server.wait_closed()
    await runner.cleanup()


async def test_socket_exists_once_started(bridge):
    assert stat.S_ISSOCK(os.stat(bridge).st_mode)


async def test_vm_cache_works_through_the_bridge(bridge):
    from aleph.sdk.vm.cache import VmCache

    cache = VmCache(unix_socket=bridge, connector_url="http://localhost")
    try:
        assert await cache.get("missing") is None
        assert await cache.set("greeting", "hello") is True
        assert await cache.get("greeting") == b"hello"
        await cache.set("big", os.urandom(1) * (2 << 20))
        assert len(await cache.get("big")) == 2 << 20
        assert sorted(await cache.keys()) == ["big", "greeting"]
        assert await cache.keys("gr*") == ["greeting"]
        assert await cache.delete("greeting") == 1
        assert await cache.get("greeting") is None
    finally:
        await cache.session.close()


async def test_remote_account_works_through_the_bridge(bridge):
    from aleph.sdk.chains.remote import RemoteAccount

    account = await RemoteAccount.from_crypto_host(host="http://localhost", unix_socket=bridge)
    try:
        assert account.get_address() == guest_api_stub.ADDRESS
        message = {"item_content": json.dumps({"address": VM_HASH}), "item_hash": "x"}
        signed = await account.sign_message(message)
        assert signed["signature"].startswith("0x")
    finally:
        await account._session.close()
        account.__del__ = None


async def test_half_close_is_passed_on(tmp_path, base):
    async def shout(reader, writer):
        data = await reader.read()  # until the client's half-close arrives
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    echo = await asyncio.start_unix_server(shout, f"{base}_53")
    server = await start_guest_api_bridge(dev_transport(base), str(tmp_path / "bridge"))
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "bridge"))
        writer.write(b"hello")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"HELLO"
        writer.close()
    finally:
        server.close()
        echo.close()


async def test_host_down_drops_the_client_only(tmp_path, base):
    server = await start_guest_api_bridge(dev_transport(base), str(tmp_path / "bridge"))
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "bridge"))
            writer.write(b"GET /properties HTTP/1.1\r\n\r\n")
            # Closed with our request unread: a reset is a close too.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    finally:
        server.close()


async def test_stale_socket_is_replaced(tmp_path, base):
    """A socket file left by a previous run (nobody listening) is replaced by a live one."""
    path = tmp_path / "bridge"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_unix_connection(str(path))
    server = await start_guest_api_bridge(dev_transport(base), str(path))
    try:
        _reader, writer = await asyncio.open_unix_connection(str(path))
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_large_transfers_both_ways_with_flow_control(tmp_path, base):
    import hashlib

    async def echo(reader, writer):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    host = await asyncio.start_unix_server(echo, f"{base}_53")
    server = await start_guest_api_bridge(dev_transport(base), str(tmp_path / "bridge"))
    payload = os.urandom(24 << 20)
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "bridge"))

        async def send():
            for offset in range(0, len(payload), 1 << 20):
                writer.write(payload[offset : offset + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        async def receive():
            digest, size = hashlib.sha256(), 0
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
                size += len(chunk)
                if size < (4 << 20):
                    await asyncio.sleep(0)  # a slow reader at first: the bridge must pause, not buffer all
            return size, digest.hexdigest()

        _, (size, digest) = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
        assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
        writer.close()
    finally:
        server.close()
        host.close()


def test_bridge_on_uvloop(tmp_path):
    """The init runs on uvloop: the protocol swap on the host connection must work there too."""
    uvloop = pytest.importorskip("uvloop")
    base = str(tmp_path / "v.sock")

    async def scenario():
        from aleph.sdk.vm.cache import VmCache

        runner = await guest_api_stub.start(f"{base}_53", VM_HASH)
        server = await start_guest_api_bridge(dev_transport(base), str(tmp_path / "bridge"))
        cache = VmCache(unix_socket=str(tmp_path / "bridge"), connector_url="http://localhost")
        try:
            await cache.set("k", b"v" * 300_000)
            return await cache.get("k")
        finally:
            await cache.session.close()
            server.close()
            await runner.cleanup()

    assert uvloop.run(scenario()) == b"v" * 300_000
