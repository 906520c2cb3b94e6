"""The legacy aleph_client modules (runtime/compat): every function's legacy arguments as
they reach the aleph API (the tests' local server speaking its format), and the docs'
snippets against a real guest API (real Redis, the host's signer) posting through it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
import redis.asyncio
from aleph.sdk.chains.common import get_verification_buffer
from aleph.sdk.chains.ethereum import ETHAccount, verify_signature

from aleph_runtime.guest.code import COMPAT_DIRECTORY
from tests.fake_aleph_api import (
    DOCS_MESSAGE_CONTENT,
    DOCS_MESSAGE_HASH,
    STORED_FILE,
    STORED_FILE_HASH,
    fake_api,  # noqa: F401  (a fixture, shared)
)
from tests.host.conftest import VM_HASH, guest_api_factory, redis_server, signer, signer_dir  # noqa: F401

# As the init does for a program: the compat modules last on the path.
if str(COMPAT_DIRECTORY) not in sys.path:
    sys.path.append(str(COMPAT_DIRECTORY))

from aleph_client import asynchronous
from aleph_client.conf import Settings, settings
from aleph_client.exceptions import LegacyAPIError, MessageNotFoundError

API_HOST = "http://localhost"
# A program's own key, for posting straight to the API server (no node in between).
PROGRAM_KEY = bytes(range(100, 132))


@pytest.fixture
def direct(fake_api, monkeypatch):  # noqa: F811
    """The legacy settings pointing at the API server itself, as outside a VM."""
    monkeypatch.setattr(settings, "API_HOST", fake_api.url)
    monkeypatch.setattr(settings, "API_UNIX_SOCKET", None)
    monkeypatch.setattr(settings, "ADDRESS_TO_USE", None)
    return fake_api


@pytest.fixture
async def in_vm(guest_api_factory, fake_api, monkeypatch):  # noqa: F811
    """The legacy settings as the init sets them in a VM: everything through the guest API socket."""
    server = await guest_api_factory(api_server=fake_api.url)
    for name, value in (("API_HOST", API_HOST), ("API_UNIX_SOCKET", str(server.socket_path)),
                        ("REMOTE_CRYPTO_HOST", API_HOST), ("REMOTE_CRYPTO_UNIX_SOCKET", str(server.socket_path)),
                        ("ADDRESS_TO_USE", VM_HASH)):  # fmt: skip
        monkeypatch.setattr(settings, name, value)
    return server


def last_query(api) -> tuple[str, dict[str, str]]:
    _method, url = api.requests[-1]
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def verify(message: dict) -> None:
    verify_signature(message["signature"], message["sender"], get_verification_buffer(message))


# --- where the modules are found ---

PATH_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from aleph_runtime.guest.code import Paths, load_asgi_app, unpack_code
    from aleph_runtime.guest.config import parse_config
    from aleph_runtime.host.program import program_config

    root, code = Path(sys.argv[1]), Path(sys.argv[2])
    from aleph_runtime.host.program import zip_directory
    config = parse_config(program_config(zip_directory(code), "main:app", encoding="zip"))
    paths = Paths(root)
    app = load_asgi_app(config, paths, unpack_code(config, paths))
    import aleph_client
    print(json.dumps({"aleph_client": aleph_client.__file__, "path": sys.path}))
    """
)


@pytest.mark.parametrize("own", [False, True])
def test_compat_is_last_on_the_path_and_a_programs_own_aleph_client_wins(tmp_path, own):
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text(
        "import aleph_client.asynchronous\napp = lambda scope, receive, send: None\n"
    )
    if own:
        (code / "aleph_client").mkdir()
        (code / "aleph_client" / "__init__.py").write_text("")
        (code / "aleph_client" / "asynchronous.py").write_text("MINE = True\n")
    env = dict(os.environ, PYTHONPATH=str(COMPAT_DIRECTORY.parent))
    result = subprocess.run([sys.executable, "-c", PATH_PROBE, str(tmp_path / "root"), str(code)],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["path"][-1] == str(COMPAT_DIRECTORY)
    assert found["path"].index(str(tmp_path / "root" / "opt" / "packages")) < found["path"].index(
        str(COMPAT_DIRECTORY)
    )
    if own:
        assert found["aleph_client"] == str(tmp_path / "root" / "opt" / "aleph_client" / "__init__.py")
    else:
        assert found["aleph_client"] == str(COMPAT_DIRECTORY / "aleph_client" / "__init__.py")


def test_settings_are_read_from_the_init_environment(monkeypatch):
    monkeypatch.setenv("ALEPH_API_HOST", "http://localhost")
    monkeypatch.setenv("ALEPH_API_UNIX_SOCKET", "/tmp/socat-socket")
    monkeypatch.setenv("ALEPH_ADDRESS_TO_USE", VM_HASH)
    fresh = Settings()
    assert (fresh.API_HOST, fresh.API_UNIX_SOCKET, fresh.ADDRESS_TO_USE) == (
        "http://localhost",
        "/tmp/socat-socket",
        VM_HASH,
    )
    assert fresh.DEFAULT_CHANNEL == "TEST"  # aleph-client's, not the SDK's


# --- reading: the legacy arguments as the API receives them ---


async def test_get_messages_maps_every_legacy_argument(direct):
    start = datetime(2024, 1, 2, tzinfo=UTC)
    await asynchronous.get_messages(
        pagination=5, page=2, message_type="POST", content_types=["a", "b"], content_keys=["k"], refs=["r"],
        addresses=["0xA"], tags=["t"], hashes=["h1", "h2"], channels=["TEST"], chains=["ETH"],
        start_date=start, end_date=1704240000,
    )  # fmt: skip
    path, query = last_query(direct)
    assert path == "/api/v0/messages.json"
    assert query == {
        "pagination": "5", "page": "2", "msgTypes": "POST", "contentTypes": "a,b", "contentKeys": "k",
        "refs": "r", "addresses": "0xA", "tags": "t", "hashes": "h1,h2", "channels": "TEST", "chains": "ETH",
        "startDate": str(start.timestamp()), "endDate": "1704240000.0",
    }  # fmt: skip


async def test_get_messages_returns_the_sdks_model_readable_the_legacy_ways(direct):
    response = await asynchronous.get_messages(hashes=[DOCS_MESSAGE_HASH])
    # aleph-client 0.5: attributes; aleph-client 0.4: the API's JSON.
    [message] = response.messages
    assert message.item_hash == DOCS_MESSAGE_HASH and message.content.content == DOCS_MESSAGE_CONTENT
    assert response.pagination_total == 1
    assert response["messages"][0]["item_hash"] == DOCS_MESSAGE_HASH
    assert response.get("pagination_item") == "messages" and "messages" in response
    verify(response["messages"][0])


async def test_get_message_finds_one_or_raises(direct):
    from aleph_message.models import AggregateMessage, PostMessage

    message = await asynchronous.get_message(DOCS_MESSAGE_HASH, message_type=PostMessage, channel="TEST")
    assert message.item_hash == DOCS_MESSAGE_HASH
    assert last_query(direct)[1]["channels"] == "TEST"
    with pytest.raises(MessageNotFoundError):
        await asynchronous.get_message("00" * 32)
    with pytest.raises(TypeError, match="does not match"):
        await asynchronous.get_message(DOCS_MESSAGE_HASH, message_type=AggregateMessage)


async def test_get_posts_maps_its_arguments_and_reads_back(direct):
    response = await asynchronous.get_posts(pagination=3, page=1, types=["test"], refs=["r"], addresses=["0xB"],
                                            tags=["t"], hashes=["h"], channels=["C"], chains=["ETH"])  # fmt: skip
    assert last_query(direct) == ("/api/v0/posts.json", {
        "pagination": "3", "page": "1", "types": "test", "refs": "r", "addresses": "0xB", "tags": "t",
        "hashes": "h", "channels": "C", "chains": "ETH",
    })  # fmt: skip
    assert response.posts == []
    response = await asynchronous.get_posts(types=["test"])
    assert response.posts[0].content == DOCS_MESSAGE_CONTENT
    assert response["posts"][0]["item_hash"] == DOCS_MESSAGE_HASH


async def test_aggregates_and_download_file(direct):
    assert await asynchronous.fetch_aggregate("0xabc", "profile", limit=10) == {
        "owner": "0xabc",
        "key": "profile",
    }
    assert last_query(direct) == ("/api/v0/aggregates/0xabc.json", {"keys": "profile"})
    assert await asynchronous.fetch_aggregates("0xabc", keys=["a", "b"]) == {
        "a": {"owner": "0xabc", "key": "a"}, "b": {"owner": "0xabc", "key": "b"},
    }  # fmt: skip
    assert await asynchronous.download_file(STORED_FILE_HASH) == STORED_FILE
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        await asynchronous.download_file("00" * 32)
    assert raised.value.status == 404


async def test_watch_messages_maps_its_arguments(direct):
    seen = [message async for message in asynchronous.watch_messages(message_type="POST", hashes=[DOCS_MESSAGE_HASH],
                                                                     channels=["TEST"], start_date=1)]  # fmt: skip
    assert [message.item_hash for message in seen] == [DOCS_MESSAGE_HASH]
    assert last_query(direct) == ("/api/ws0/messages", {
        "msgTypes": "POST", "hashes": DOCS_MESSAGE_HASH, "channels": "TEST", "startDate": "1.0",
    })  # fmt: skip


async def test_api_server_and_session_arguments(fake_api, in_vm):  # noqa: F811
    # api_server names the server; with the init's socket configured, as aleph-client did,
    # a session of the program's own decides how to connect.
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(in_vm.socket_path))) as session:
        response = await asynchronous.get_messages(
            hashes=[DOCS_MESSAGE_HASH], session=session, api_server=API_HOST
        )
        assert not session.closed  # the caller's session is left open
    assert response.messages[0].item_hash == DOCS_MESSAGE_HASH
    async with aiohttp.ClientSession() as session:
        response = await asynchronous.get_messages(
            hashes=["00" * 32], session=session, api_server=fake_api.url
        )
    assert response.messages == []


# --- posting with an account of the program's own, straight to the API server ---


async def test_create_post_maps_its_arguments(direct):
    account = ETHAccount(PROGRAM_KEY)
    message = await asynchronous.create_post(account=account, post_content={"n": 1}, post_type="note",
                                             ref="r0", channel=None, inline=True, storage_engine="storage")  # fmt: skip
    [body] = direct.posted
    sent = body["message"]
    assert sent["item_hash"] == message.item_hash and sent["channel"] == "TEST"  # the legacy default channel
    content = json.loads(sent["item_content"])
    assert (content["type"], content["ref"], content["content"]) == ("note", "r0", {"n": 1})
    assert content["address"] == account.get_address() == sent["sender"]
    verify(sent)
    with pytest.raises(ValueError, match="Unknown storage engine"):
        await asynchronous.create_post(account=account, post_content={}, post_type="x", storage_engine="disk")


async def test_create_aggregate_store_forget_submit_map_their_arguments(direct, monkeypatch):
    account = ETHAccount(PROGRAM_KEY)
    monkeypatch.setattr(settings, "ADDRESS_TO_USE", "0xDelegated")
    aggregate = await asynchronous.create_aggregate(account, "profile", {"name": "x"}, channel="CH")
    store = await asynchronous.create_store(account, file_hash=STORED_FILE_HASH, storage_engine="storage",
                                            ref="r1", extra_fields={"tags": ["kept"]})  # fmt: skip
    forgotten = await asynchronous.forget(
        account, hashes=[aggregate.item_hash], reason="test", address="0xOther"
    )
    submitted = await asynchronous.submit(
        account, {"address": "0xS", "time": 1.0, "type": "t", "content": {}}, "POST"
    )
    sent = [body["message"] for body in direct.posted]
    assert [m["type"] for m in sent] == ["AGGREGATE", "STORE", "FORGET", "POST"]
    assert [m["item_hash"] for m in sent] == [m.item_hash for m in (aggregate, store, forgotten, submitted)]
    contents = [json.loads(m["item_content"]) for m in sent]
    assert (
        contents[0]["key"] == "profile"
        and contents[0]["content"] == {"name": "x"}
        and sent[0]["channel"] == "CH"
    )
    assert (contents[1]["item_hash"], contents[1]["ref"], contents[1]["tags"]) == (
        STORED_FILE_HASH,
        "r1",
        ["kept"],
    )
    assert contents[2]["hashes"] == [aggregate.item_hash] and contents[2]["reason"] == "test"
    # address: given, else ALEPH_ADDRESS_TO_USE, else the account's.
    assert [c["address"] for c in contents] == ["0xDelegated", "0xDelegated", "0xOther", "0xS"]
    for message in sent:
        verify(message)


async def test_fallback_session_is_one_per_thread_through_the_configured_socket(in_vm):
    session = asynchronous.get_fallback_session()
    assert asynchronous.get_fallback_session() is session
    async with session.get(f"{API_HOST}/cache/") as response:  # the guest API, through its socket
        assert await response.json() == []
    await session.close()
    replacement = asynchronous.get_fallback_session()
    assert replacement is not session and not replacement.closed
    await replacement.close()


def test_what_has_no_equivalent_names_its_replacement():
    for function in (asynchronous.create_program, asynchronous.ipfs_push, asynchronous.broadcast):
        with pytest.raises(LegacyAPIError, match="use "):
            function()


# --- the docs' snippets, in a program's environment: the node's guest API ---


async def test_docs_snippets_through_the_guest_api(in_vm, fake_api, signer, redis_server):  # noqa: F811
    from aleph_client.asynchronous import create_post, get_messages
    from aleph_client.chains.remote import RemoteAccount
    from aleph_client.vm.cache import VmCache

    messages = await get_messages(hashes=[DOCS_MESSAGE_HASH])
    assert messages.messages[0].content.content == DOCS_MESSAGE_CONTENT

    # The docs' literal socket path stands for the configured guest API socket.
    account = await RemoteAccount.from_crypto_host(host="http://localhost", unix_socket="/tmp/socat-socket")
    content = {
        "date": datetime.now(UTC).isoformat(),
        "test": True,
        "answer": 42,
        "something": "interesting",
    }
    response = await create_post(account=account, post_content=content, post_type="test", ref=None,
                                 channel="TEST", inline=True, storage_engine="storage")  # fmt: skip
    await account._session.close()
    # Signed by the host in the VM's name...
    assert response.content.address == VM_HASH and response.sender == await signer.address()
    verify(response.model_dump())
    # ...and re-published through the node, with its key.
    [body] = await fake_api.wait_posted(1)
    posted = body["message"]
    assert json.loads(posted["item_content"])["content"] == content
    assert posted["sender"] == await signer.address()
    verify(posted)

    # Made as programs make it, at import time, with no event loop running.
    cache = await asyncio.to_thread(VmCache)
    await cache.set("key", "value")
    assert await cache.get("key") == b"value"
    assert await cache.keys() == ["key"]
    client = redis.asyncio.from_url(redis_server.url)
    assert await client.get(f"{VM_HASH}:key") == b"value"
    await client.aclose()
    assert await cache.delete("key") == 1
    assert await cache.get("key") is None
    await cache.session.close()


async def test_only_posts_are_republished_and_the_sdk_says_why(in_vm, fake_api):  # noqa: F811
    from aleph.sdk.exceptions import BroadcastError
    from aleph_client.chains.remote import RemoteAccount

    account = await RemoteAccount.from_crypto_host()
    try:
        with pytest.raises(BroadcastError, match="only POST messages"):
            await asynchronous.create_aggregate(account, "key", {"a": 1})
    finally:
        await account._session.close()
    assert fake_api.posted == []


# --- AlephApp and the lifespan ---


async def test_aleph_app_passes_the_lifespan_to_its_http_app_and_answers_events():
    from aleph_client.vm.app import AlephApp
    from fastapi import FastAPI

    from aleph_runtime import protocol
    from aleph_runtime.guest.asgi import Lifespan, LifespanState, run_cycle

    started = []
    http_app = FastAPI(on_startup=[lambda: started.append(True)])
    app = AlephApp(http_app=http_app)

    @app.get("/")
    async def index():
        return {"ok": True}

    @app.event(filters=[{"type": "POST"}])
    async def on_event(event):
        return {"seen": event["body"]["item_hash"]}

    lifespan = Lifespan(app)
    await lifespan.startup(timeout=10)
    assert lifespan.state is LifespanState.STARTED and started == [True]
    answer = protocol.unpack(
        await run_cycle(app, {"type": "http", "method": "GET", "path": "/", "headers": []})
    )
    assert json.loads(answer["body"]["body"]) == {"ok": True}
    answer = protocol.unpack(await run_cycle(app, {"type": "aleph.message", "body": {"item_hash": "ab"}}))
    assert answer["body"] == {"seen": "ab"}
    await lifespan.shutdown(timeout=10)


async def test_an_app_raising_on_the_lifespan_scope_runs_without_lifespan(caplog):
    """aleph-client 0.4-0.5's AlephApp raised on the lifespan scope, as here: the program
    must run as with uvicorn's lifespan="auto", and the log says so once."""
    from aleph_runtime import protocol
    from aleph_runtime.guest.asgi import Lifespan, LifespanState, run_cycle

    async def legacy_app(scope, receive=None, send=None):
        if scope["type"] != "http":
            raise ValueError(f"Unknown scope type '{scope['type']}'")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    caplog.set_level(logging.INFO)
    lifespan = Lifespan(legacy_app)
    await lifespan.startup(timeout=10)
    assert lifespan.state is LifespanState.UNSUPPORTED
    for _ in range(2):
        answer = protocol.unpack(await run_cycle(legacy_app, {"type": "http", "method": "GET", "path": "/"}))
        assert answer["body"]["body"] == b"served"
    await lifespan.shutdown(timeout=10)
    said = [record for record in caplog.records if "lifespan" in record.getMessage().lower()]
    assert len(said) == 1 and "Unknown scope type 'lifespan'" in said[0].getMessage()
