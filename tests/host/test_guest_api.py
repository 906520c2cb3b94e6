"""The guest API against a real redis-server, driven the way a program in a VM drives it:
aleph-sdk-python's VmCache and RemoteAccount over the Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import aiohttp
import pytest
import redis.asyncio
from aleph.sdk.chains.common import get_verification_buffer
from aleph.sdk.chains.ethereum import verify_signature
from aleph.sdk.chains.remote import RemoteAccount
from aleph.sdk.vm.cache import VmCache

from aleph_runtime.host.services.guest_api import CACHE_EXPIRES_AFTER
from tests.fake_aleph_api import DOCS_MESSAGE_HASH
from tests.host.conftest import VM_HASH, make_message

# What the init sets in a program's environment: the SDK talks HTTP to "localhost"
# through the Unix socket.
API_HOST = "http://localhost"


@contextlib.asynccontextmanager
async def unix_session(path):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
        yield session


@contextlib.asynccontextmanager
async def vm_cache(server):
    cache = VmCache(connector_url=API_HOST, unix_socket=str(server.socket_path))
    try:
        yield cache
    finally:
        await cache.session.close()


@contextlib.asynccontextmanager
async def remote_account(server):
    account = await RemoteAccount.from_crypto_host(host=API_HOST, unix_socket=str(server.socket_path))
    try:
        yield account
    finally:
        await account._session.close()


# --- cache ---


async def test_cache_set_get_delete_keys(guest_api_factory, redis_server):
    server = await guest_api_factory()
    async with vm_cache(server) as cache:
        assert await cache.get("missing") is None
        assert await cache.set("alpha", "one") is True
        assert await cache.set("beta", b"\x00\xffbinary") is True
        assert await cache.set("gamma_2", "three") is True
        assert await cache.get("alpha") == b"one"
        assert await cache.get("beta") == b"\x00\xffbinary"
        assert sorted(await cache.keys()) == ["alpha", "beta", "gamma_2"]
        assert await cache.keys("g*") == ["gamma_2"]
        assert await cache.keys("?lpha") == ["alpha"]
        assert await cache.delete("alpha") == 1
        assert await cache.delete("alpha") == 0
        assert await cache.get("alpha") is None
        assert sorted(await cache.keys()) == ["beta", "gamma_2"]


async def test_cache_is_namespaced_and_expires_after_seven_days(guest_api_factory, redis_server):
    one = await guest_api_factory(vm_hash=VM_HASH)
    other = await guest_api_factory(vm_hash="beef" * 16)
    async with vm_cache(one) as cache_one, vm_cache(other) as cache_other:
        await cache_one.set("shared_name", "from one")
        await cache_other.set("shared_name", "from other")
        await cache_one.set("only_one", "x")
        assert await cache_one.get("shared_name") == b"from one"
        assert await cache_other.get("shared_name") == b"from other"
        assert await cache_other.get("only_one") is None
        assert await cache_other.keys() == ["shared_name"]

    client = redis.asyncio.from_url(redis_server.url)
    try:
        assert await client.get(f"{VM_HASH}:shared_name") == b"from one"
        assert sorted(await client.keys("*")) == sorted(
            [
                f"{VM_HASH}:shared_name".encode(),
                f"{VM_HASH}:only_one".encode(),
                f"{'beef' * 16}:shared_name".encode(),
            ]
        )
        ttl = await client.ttl(f"{VM_HASH}:only_one")
        assert CACHE_EXPIRES_AFTER - 60 < ttl <= CACHE_EXPIRES_AFTER
        # Setting again renews the expiry.
        await client.expire(f"{VM_HASH}:only_one", 10)
        async with vm_cache(one) as cache_one:
            await cache_one.set("only_one", "y")
        assert await client.ttl(f"{VM_HASH}:only_one") > CACHE_EXPIRES_AFTER - 60
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/cache/bad-key"),
        ("PUT", "/cache/bad.key"),
        ("DELETE", "/cache/a%20b"),
        ("GET", "/cache/a/b"),
        ("PUT", "/cache/"),
        ("GET", "/cache/?pattern=a%20b"),
        ("GET", "/cache/?pattern=a/b"),
        ("GET", "/cache/?pattern="),
        ("GET", "/cache/?pattern=k%0A"),
    ],
)
async def test_cache_rejects_bad_keys_and_patterns(guest_api_factory, method, path):
    server = await guest_api_factory()
    async with (
        unix_session(server.socket_path) as session,
        session.request(method, f"{API_HOST}{path}", data=b"v") as response,
    ):
        assert response.status == 400
        assert (await response.text()).startswith("Invalid")


async def test_cache_answers_503_when_redis_is_gone(guest_api_factory, redis_server):
    server = await guest_api_factory()
    await redis_server.stop()
    async with (
        unix_session(server.socket_path) as session,
        session.get(f"{API_HOST}/cache/key") as response,
    ):
        assert response.status == 503
        assert "cache unavailable" in await response.text()


# --- signing ---


async def test_properties_and_signature_verify_with_the_sdk(guest_api_factory, signer):
    server = await guest_api_factory()
    async with remote_account(server) as account:
        assert account.CHAIN == "ETH"
        assert account.CURVE == "secp256k1"
        assert account.get_address().startswith("0x") and len(account.get_address()) == 42
        assert account.get_address() == await signer.address()

        signed = await account.sign_message(make_message(address=VM_HASH))
    assert signed["sender"] == account.get_address()
    verify_signature(signed["signature"], signed["sender"], get_verification_buffer(signed))

    # A tampered message fails the SDK's verification: the signature covers the hash.
    from aleph.sdk.exceptions import BadSignatureError

    tampered = dict(signed, item_hash="00" * 32)
    with pytest.raises(BadSignatureError):
        verify_signature(tampered["signature"], tampered["sender"], get_verification_buffer(tampered))


async def test_signing_key_persists_in_the_state_directory(signer_dir, signer):
    from aleph_runtime.host.services.signer import LocalSigner

    address = await signer.address()
    assert (signer_dir / "signing.key").stat().st_mode & 0o777 == 0o600
    again = LocalSigner.in_state_dir(signer_dir)
    assert await again.address() == address


async def test_sign_refuses_a_message_not_addressed_from_the_vm(guest_api_factory):
    server = await guest_api_factory()
    async with remote_account(server) as account:
        with pytest.raises(aiohttp.ClientResponseError) as raised:
            await account.sign_message(make_message(address="beef" * 16))
        assert raised.value.status == 400
        # Not even the signing account's own address: only the VM's hash.
        with pytest.raises(aiohttp.ClientResponseError):
            await account.sign_message(make_message(address=account.get_address()))

    async with unix_session(server.socket_path) as session:
        async with session.post(f"{API_HOST}/sign", json=make_message(address="beef" * 16)) as response:
            assert response.status == 400
            assert await response.text() == "Message address does not match VM item_hash\n"
        for garbage in (b"not json", b"[1, 2]", json.dumps({"item_content": "{not json"}).encode()):
            async with session.post(f"{API_HOST}/sign", data=garbage) as response:
                assert response.status == 400
                assert (await response.text()).startswith("Invalid message")


def hashed(message: dict, **changes) -> dict:
    """The message with `changes`, its item_hash recomputed from its item_content."""
    message = dict(message, **changes)
    message["item_hash"] = hashlib.sha256(message["item_content"].encode()).hexdigest()
    return message


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"item_hash": "ab" * 32}, "item_hash is not the sha256 of item_content"),
        ({"item_hash": None}, "item_hash is not the sha256 of item_content"),
        ({"item_type": "storage"}, "only inline messages are signed"),
        ({"item_type": None}, "only inline messages are signed"),
    ],
)
async def test_sign_refuses_a_hash_that_is_not_the_contents(guest_api_factory, change, reason):
    # The signature covers the item_hash alone: signing any hash next to a checked
    # content would sign whatever that hash names.
    server = await guest_api_factory()
    message = {k: v for k, v in dict(make_message(address=VM_HASH), **change).items() if v is not None}
    async with remote_account(server) as account:
        with pytest.raises(aiohttp.ClientResponseError) as raised:
            await account.sign_message(message)
        assert raised.value.status == 400
    async with (
        unix_session(server.socket_path) as session,
        session.post(f"{API_HOST}/sign", json=message) as response,
    ):
        assert response.status == 400
        assert (await response.text()).startswith(f"Invalid message: {reason}")


@pytest.mark.parametrize("where", ["body", "item_content"])
async def test_deeply_nested_json_is_a_400(guest_api_factory, where):
    server = await guest_api_factory()
    nested = "[" * 100_000 + "]" * 100_000
    if where == "body":
        body = nested.encode()
    else:
        # A well-hashed message whose content is too deep for the parser.
        body = json.dumps(hashed(make_message(address=VM_HASH), item_content=nested)).encode()
    async with unix_session(server.socket_path) as session:
        async with session.post(f"{API_HOST}/sign", data=body) as response:
            assert response.status == 400
            assert (await response.text()).startswith("Invalid message")
        pubsub = json.dumps({"topic": "t", "data": json.dumps({"item_content": nested})}).encode()
        for data in (nested.encode(), pubsub):
            async with session.post(f"{API_HOST}/api/v0/p2p/pubsub/pub", data=data) as response:
                assert response.status == 400
                assert (await response.text()).startswith("Invalid pubsub message")
        # The server is still there.
        async with session.post(f"{API_HOST}/sign", json=make_message(address=VM_HASH)) as response:
            assert response.status == 200


async def test_sign_refuses_another_sender(guest_api_factory):
    server = await guest_api_factory()
    message = make_message(address=VM_HASH)
    message["sender"] = "0x" + "11" * 20
    async with (
        unix_session(server.socket_path) as session,
        session.post(f"{API_HOST}/sign", json=message) as response,
    ):
        assert response.status == 400
        assert "Cannot sign" in await response.text()


# --- the aleph API proxy ---


async def test_proxy_forwards_to_the_api_server(guest_api_factory, fake_api):
    from aleph.sdk.client import AlephHttpClient

    server = await guest_api_factory(api_server=fake_api.url)
    async with AlephHttpClient(api_server=API_HOST, api_unix_socket=str(server.socket_path)) as client:
        aggregate = await client.fetch_aggregate(address="0xabc", key="profile")
    assert aggregate == {"owner": "0xabc", "key": "profile"}
    assert fake_api.requests[-1] == ("GET", "/api/v0/aggregates/0xabc.json?keys=profile")

    async with unix_session(server.socket_path) as session:
        async with session.head(f"{API_HOST}/api/v0/info/public.json") as response:
            assert response.status == 200
        async with session.get(f"{API_HOST}/api/v0/nothing/here") as response:
            assert response.status == 404  # the API server's own answer, passed through


async def test_proxy_answers_502_when_the_api_server_is_unreachable(guest_api_factory, short_dir):
    # Nothing listens on this port: the connection is refused.
    server = await guest_api_factory(api_server="http://127.0.0.1:9")
    async with (
        unix_session(server.socket_path) as session,
        session.get(f"{API_HOST}/api/v0/info/public.json") as response,
    ):
        assert response.status == 502
        text = await response.text()
        assert text.count("\n") == 1 and "unreachable" in text and "127.0.0.1:9" in text


async def test_proxy_answers_502_when_the_api_server_never_answers(guest_api_factory):
    # A server that accepts connections and never says a word: bounded by proxy_timeout.
    async def silent(reader, writer):
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = silent_server.sockets[0].getsockname()[1]
    try:
        server = await guest_api_factory(api_server=f"http://127.0.0.1:{port}", proxy_timeout=1)
        async with (
            unix_session(server.socket_path) as session,
            session.get(f"{API_HOST}/api/v0/info/public.json") as response,
        ):
            assert response.status == 502
            text = await response.text()
            assert text.count("\n") == 1 and "did not answer" in text
    finally:
        silent_server.close()
        await silent_server.wait_closed()


async def test_pubsub_pub_is_republished_signed_by_the_node(guest_api_factory, fake_api, signer):
    server = await guest_api_factory(api_server=fake_api.url)
    program_message = make_message(address=VM_HASH, content={"counter": 3})
    async with unix_session(server.socket_path) as session:
        for path in ("/api/v0/ipfs/pubsub/pub", "/api/v0/p2p/pubsub/pub"):
            payload = {"topic": "ALEPH-TEST", "data": json.dumps(program_message)}
            async with session.post(f"{API_HOST}{path}", json=payload) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "success"
        async with session.post(f"{API_HOST}/api/v0/ipfs/pubsub/pub", json={"topic": "x"}) as response:
            assert response.status == 400

    assert len(fake_api.posted) == 2
    posted = fake_api.posted[0]["message"]
    assert posted["sender"] == await signer.address()
    assert json.loads(posted["item_content"])["content"] == {"counter": 3}
    verify_signature(posted["signature"], posted["sender"], get_verification_buffer(posted))


async def test_pubsub_pub_answers_502_when_the_api_server_is_unreachable(guest_api_factory):
    server = await guest_api_factory(api_server="http://127.0.0.1:9")
    payload = {"topic": "ALEPH-TEST", "data": json.dumps(make_message(address=VM_HASH))}
    async with (
        unix_session(server.socket_path) as session,
        session.post(f"{API_HOST}/api/v0/p2p/pubsub/pub", json=payload) as response,
    ):
        assert response.status == 502
        assert (await response.text()).count("\n") == 1


async def publish(session, message: dict) -> aiohttp.ClientResponse:
    """POST `message` to the pubsub route as aleph-client does; the answer, read."""
    payload = {"topic": "ALEPH-TEST", "data": json.dumps(message)}
    async with session.post(f"{API_HOST}/api/v0/ipfs/pubsub/pub", json=payload) as response:
        await response.read()
        return response


@pytest.mark.parametrize(
    "message, reason",
    [
        (make_message(address="beef" * 16), "Message address does not match VM item_hash"),
        (
            dict(make_message(address=VM_HASH), item_hash="ab" * 32),
            "Invalid message: item_hash is not the sha256",
        ),
        (dict(make_message(address=VM_HASH), item_type="storage"), "Invalid message: only inline messages"),
    ],
    ids=["another address", "another hash", "not inline"],
)
async def test_pubsub_publishes_only_under_the_rule_of_sign(guest_api_factory, fake_api, message, reason):
    """The node's key publishes only what /sign would sign: a message in the VM's name."""
    server = await guest_api_factory(api_server=fake_api.url)
    async with unix_session(server.socket_path) as session:
        response = await publish(session, message)
        assert response.status == 400
        assert (await response.text()).startswith(reason)
    assert fake_api.posted == []


async def test_pubsub_amends_only_the_posts_the_vm_published(guest_api_factory, fake_api, signer):
    """Every VM's posts are the node's (its key signs them): a VM may amend its own, published
    through this guest API in this run, and no other, another VM's on the node included."""
    server = await guest_api_factory(api_server=fake_api.url)
    other_vm = "d00d" * 16
    other = await guest_api_factory(vm_hash=other_vm, api_server=fake_api.url)
    async with unix_session(server.socket_path) as session, unix_session(other.socket_path) as other_session:
        response = await publish(session, make_message(address=VM_HASH, content={"v": 1}))
        assert response.status == 200
        original = (await response.json())["item_hash"]
        response = await publish(other_session, make_message(address=other_vm, content={"theirs": 1}))
        theirs = (await response.json())["item_hash"]
        assert len(fake_api.posted) == 2

        for ref in (theirs, fake_api.posted[0]["message"]["item_hash"][::-1], DOCS_MESSAGE_HASH, None, ["x"]):
            amend = make_message(address=VM_HASH, content={"v": 2}, post_type="amend", ref=ref)
            response = await publish(session, amend)
            assert response.status == 403, ref
            assert "ref must be a post this VM published" in (await response.json())["error"]
        # The other VM cannot amend this VM's post either.
        response = await publish(
            other_session, make_message(other_vm, {"v": 3}, post_type="amend", ref=original)
        )
        assert response.status == 403
        assert len(fake_api.posted) == 2

        response = await publish(session, make_message(VM_HASH, {"v": 2}, post_type="amend", ref=original))
        assert response.status == 200, await response.text()
    [amend] = [body["message"] for body in fake_api.posted[2:]]
    published = json.loads(amend["item_content"])
    assert (published["type"], published["ref"], published["content"]) == ("amend", original, {"v": 2})
    assert amend["sender"] == await signer.address()
    verify_signature(amend["signature"], amend["sender"], get_verification_buffer(amend))


async def test_pubsub_remembers_the_latest_posts_only(guest_api_factory, fake_api):
    """The memory of a VM's posts is bounded: past `published_posts_kept`, the oldest is
    forgotten, and amending it is refused like any other post."""
    server = await guest_api_factory(api_server=fake_api.url, published_posts_kept=2)
    async with unix_session(server.socket_path) as session:
        hashes = []
        for index in range(3):
            response = await publish(session, make_message(address=VM_HASH, content={"n": index}))
            hashes.append((await response.json())["item_hash"])
        for ref, status in ((hashes[0], 403), (hashes[1], 200), (hashes[2], 200)):
            response = await publish(
                session, make_message(VM_HASH, {"amended": ref}, post_type="amend", ref=ref)
            )
            assert response.status == status, ref
        # Amends are not posts to amend: the two kept are still the latest two posts.
        response = await publish(
            session, make_message(VM_HASH, {"again": 1}, post_type="amend", ref=hashes[1])
        )
        assert response.status == 200


# --- as a program configures the SDK: through the init's environment variables ---

PROGRAM = textwrap.dedent(
    """
    import asyncio, json
    from aleph.sdk.chains.remote import RemoteAccount
    from aleph.sdk.vm.cache import VmCache

    async def main():
        cache = VmCache()
        await cache.set("from_env", "yes")
        value = await cache.get("from_env")
        keys = await cache.keys()
        await cache.session.close()
        account = await RemoteAccount.from_crypto_host()
        message = json.loads(input())
        signed = await account.sign_message(message)
        await account._session.close()
        print(json.dumps({"value": value.decode(), "keys": keys, "signed": signed}))

    asyncio.run(main())
    """
)


async def test_sdk_configured_by_the_init_environment(guest_api_factory):
    server = await guest_api_factory()
    env = dict(
        os.environ,
        ALEPH_API_HOST="http://localhost",
        ALEPH_API_UNIX_SOCKET=str(server.socket_path),
        ALEPH_REMOTE_CRYPTO_HOST="http://localhost",
        ALEPH_REMOTE_CRYPTO_UNIX_SOCKET=str(server.socket_path),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROGRAM, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate(json.dumps(make_message(address=VM_HASH)).encode() + b"\n")
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["value"] == "yes" and result["keys"] == ["from_env"]
    signed = result["signed"]
    verify_signature(signed["signature"], signed["sender"], get_verification_buffer(signed))


# --- posting as aleph-sdk-python 2 does: POST /api/v0/messages, then the pubsub fallback ---


async def test_post_message_is_refused_in_json_as_on_a_node(guest_api_factory, fake_api):
    server = await guest_api_factory(api_server=fake_api.url)
    async with (
        unix_session(server.socket_path) as session,
        session.post(f"{API_HOST}/api/v0/messages", json={"sync": False, "message": {}}) as response,
    ):
        assert response.status == 405
        assert "pubsub" in (await response.json())["error"]
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert fake_api.posted == [] and fake_api.requests == []


async def test_pubsub_accepts_the_message_object_as_the_sdk_sends_it(guest_api_factory, fake_api, signer):
    server = await guest_api_factory(api_server=fake_api.url)
    program_message = make_message(address=VM_HASH, content={"as": "object"})
    async with unix_session(server.socket_path) as session:
        payload = {"topic": "ALEPH-TEST", "data": program_message}
        async with session.post(f"{API_HOST}/api/v0/ipfs/pubsub/pub", json=payload) as response:
            assert response.status == 200, await response.text()
        for bad in ({"topic": "x", "data": 3}, {"topic": "x", "data": "not json"}, ["data"]):
            async with session.post(f"{API_HOST}/api/v0/ipfs/pubsub/pub", json=bad) as response:
                assert response.status == 400
                assert (await response.text()).count("\n") == 1
    posted = fake_api.posted[0]["message"]
    assert json.loads(posted["item_content"])["content"] == {"as": "object"}
    assert posted["sender"] == await signer.address()


async def test_pubsub_answers_the_api_servers_refusal_with_its_status(guest_api_factory, fake_api):
    server = await guest_api_factory(api_server=fake_api.url)
    fake_api.refuse_with = (422, "invalid signature\nsee the logs")
    payload = {"topic": "ALEPH-TEST", "data": json.dumps(make_message(address=VM_HASH))}
    async with (
        unix_session(server.socket_path) as session,
        session.post(f"{API_HOST}/api/v0/ipfs/pubsub/pub", json=payload) as response,
    ):
        assert response.status == 422
        text = await response.text()
    assert text.count("\n") == 1 and "refused the message" in text and "invalid signature" in text


async def test_sdk_create_post_through_a_remote_account_reaches_the_api(guest_api_factory, fake_api, signer):
    """The SDK posts to /api/v0/messages, gets the node's 405, falls back to pubsub; the host
    signs the program's message and re-publishes its content with the node's key."""
    from aleph.sdk.client import AuthenticatedAlephHttpClient
    from aleph_message.models import PostMessage
    from aleph_message.status import MessageStatus

    server = await guest_api_factory(api_server=fake_api.url)
    async with (
        remote_account(server) as account,
        AuthenticatedAlephHttpClient(
            account=account, api_server=API_HOST, api_unix_socket=str(server.socket_path)
        ) as client,
    ):
        message, status = await client.create_post(
            post_content={"answer": 42}, post_type="test", address=VM_HASH, channel="TEST"
        )
    assert isinstance(message, PostMessage) and status is MessageStatus.PENDING
    assert message.content.address == VM_HASH and message.sender == await signer.address()
    verify_signature(message.signature, message.sender, get_verification_buffer(message.model_dump()))
    [posted] = [body["message"] for body in fake_api.posted]
    assert json.loads(posted["item_content"])["content"] == {"answer": 42}
    assert posted["sender"] == await signer.address() and posted["channel"] == "TEST"
    verify_signature(posted["signature"], posted["sender"], get_verification_buffer(posted))
