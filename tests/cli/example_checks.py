"""Checks shared by the dev-mode and VM tests of `aleph-runtime run` on the FastAPI example."""

from __future__ import annotations

import json
import os
import stat

import aiohttp
import redis.asyncio

from tests.cli.conftest import EXAMPLES, alive, descendants


def sockets_under(path) -> list[str]:
    found = []
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            if stat.S_ISSOCK(os.lstat(full).st_mode):
                found.append(full)
    return found


async def stop_cleanly(cli) -> None:
    """SIGINT: exit status 0, no process left (init, Redis), no socket, no run directory."""
    children = descendants(cli.process.pid)
    assert children, "the command should have started the init and Redis"
    status = await cli.interrupt()
    assert status == 0, cli.output()
    assert [pid for pid in children if alive(pid)] == []
    assert sockets_under(cli.state_dir) == []
    assert list((cli.state_dir / "run").iterdir()) == []
    assert "stopped" in cli.output()


async def _index(http, url: str) -> str:
    """`/` answers JSON, with the program's hash in a node's header; the hash."""
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        index = await response.json()
    assert index["message"] == "Hello from aleph-runtime"
    vm_hash = index["vm_hash"]
    assert len(vm_hash) == 64 and response.headers["Aleph-Program-ItemHash"] == vm_hash
    return vm_hash


async def check_lifespan(http, url: str, vm_hash: str) -> None:
    """One startup, shared by requests, reached through /vm/<hash>/ too."""
    async with http.get(f"{url}vm/{vm_hash}/lifespan") as response:
        first = await response.json()
    async with http.get(f"{url}lifespan") as response:
        assert await response.json() == first
    assert first["events"] == ["startup"]


async def check_cache(http, url: str, redis_url: str, vm_hash: str) -> None:
    """The node's cache: a real Redis (at `redis_url`), keys under the VM's hash."""
    async with http.get(f"{url}cache/set/colour/blue") as response:
        assert await response.json() is True
    async with http.get(f"{url}cache/get/colour") as response:
        assert await response.json() == {"key": "colour", "value": "blue"}
    async with http.get(f"{url}cache/keys") as response:
        assert await response.json() == ["colour"]
    client = redis.asyncio.from_url(redis_url)
    try:
        assert await client.get(f"{vm_hash}:colour") == b"blue"
    finally:
        await client.aclose()


async def _signing(http, url: str, cli, vm_hash: str) -> str:
    """Signing with the node's key (kept in the state directory), verified by aleph-sdk; the sender."""
    from aleph.sdk.chains.common import get_verification_buffer
    from aleph.sdk.chains.ethereum import verify_signature

    async with http.get(f"{url}sign?text=hi") as response:
        assert response.status == 200, await response.text()
        signed = await response.json()
    assert json.loads(signed["item_content"])["address"] == vm_hash
    verify_signature(signed["signature"], signed["sender"], get_verification_buffer(signed))
    assert (cli.state_dir / "signing.key").stat().st_size == 32
    return signed["sender"]


async def _posting(http, url: str, fake_api, vm_hash: str) -> None:
    """Posting through the node (the SDK's create_post with the RemoteAccount): in the
    VM's name, re-published to the API server with the node's key."""
    async with http.get(f"{url}post?text=posted") as response:
        assert response.status == 200, await response.text()
        post = await response.json()
    assert post["address"] == vm_hash and post["status"] == "pending"
    [body] = await fake_api.wait_posted(1)
    assert json.loads(body["message"]["item_content"])["content"] == {"text": "posted"}
    async with http.get(f"{url}sign?text=who") as response:
        assert body["message"]["sender"] == (await response.json())["sender"]


async def check_errors(http, url: str) -> None:
    """An exception in the app: a 500 whose body is the traceback; the program keeps serving."""
    async with http.get(f"{url}raise") as response:
        assert response.status == 500
        text = await response.text()
        assert "Traceback" in text and "This error is on purpose" in text
    async with http.get(f"{url}text") as response:
        assert await response.text() == "plain text\n"


async def check_event(http, url: str) -> None:
    """An event, posted as JSON, reaches the program's handler."""
    message = {"item_hash": "ab" * 32, "type": "POST", "content": {"hello": "event"}}
    async with http.post(f"{url}control/event", json=message) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"handled": True, "item_hash": "ab" * 32, "type": "POST"}


async def check_counter(http, url: str, expected: list[int]) -> None:
    """The persistent volume's counter."""
    for value in expected:
        async with http.get(f"{url}counter") as response:
            assert await response.json() == {"counter": value}


async def _after_restart(http, url: str, sender: str | None) -> None:
    """The lifespan shutdown ran at halt; the cache and the signing key are the same."""
    async with http.get(f"{url}lifespan") as response:
        assert (await response.json())["events"] == ["startup", "shutdown", "startup"]
    async with http.get(f"{url}cache/get/colour") as response:
        assert await response.json() == {"key": "colour", "value": "blue"}
    async with http.get(f"{url}sign") as response:
        assert sender is not None, "the first run's signing check failed: nothing to compare with"
        assert (await response.json())["sender"] == sender


async def check_default_example(
    cli_factory, subtests, mode: str, fake_api, port: int, url_timeout: float = 120
) -> None:
    """The example without PATH: every feature over plain HTTP, Ctrl-C, then a restart.

    One run serves every check (a VM boot takes minutes); each is a subtest of its own,
    run even when an earlier one failed. The command's output is printed at the end:
    pytest shows it when the test failed.
    """
    cli = await cli_factory("--mode", mode, "--port", str(port), "--api-server", fake_api.url)
    url = await cli.wait_url(url_timeout)
    assert url == f"http://127.0.0.1:{port}/"
    sender = None
    async with aiohttp.ClientSession() as http:
        vm_hash = await _index(http, url)  # the others need the hash
        with subtests.test("lifespan"):
            await check_lifespan(http, url, vm_hash)
        with subtests.test("cache"):  # Redis under the state directory
            await check_cache(http, url, f"unix://{cli.state_dir}/redis/redis.sock", vm_hash)
        with subtests.test("signing"):
            sender = await _signing(http, url, cli, vm_hash)
        with subtests.test("posting through the node"):
            await _posting(http, url, fake_api, vm_hash)
        with subtests.test("errors"):
            await check_errors(http, url)
        with subtests.test("event"):
            await check_event(http, url)
        with subtests.test("counter"):
            await check_counter(http, url, [1, 2])
    await stop_cleanly(cli)
    if mode == "dev":
        assert (cli.state_dir / "volumes" / "example" / "counter.txt").read_text() == "2"
    else:
        assert (cli.state_dir / "volumes" / "example.ext4").is_file()

    # A restart of the command: the counter goes on where it was.
    cli = await cli_factory("--mode", mode, "--port", str(port), "--api-server", fake_api.url)
    url = await cli.wait_url(url_timeout)
    async with aiohttp.ClientSession() as http:
        with subtests.test("counter after a restart"):
            await check_counter(http, url, [3])
        with subtests.test("state after a restart"):
            await _after_restart(http, url, sender)
    await stop_cleanly(cli)
    print(cli.output())


async def check_legacy_example(cli_factory, mode: str, fake_api, url_timeout: float = 120) -> None:
    """examples/legacy_aleph_client, the docs' snippets unchanged: it reads the docs' message
    through the node, posts through the node (signed by the host, re-published with the
    node's key) and uses the cache."""
    from aleph.sdk.chains.common import get_verification_buffer
    from aleph.sdk.chains.ethereum import verify_signature

    from tests.fake_aleph_api import DOCS_MESSAGE_CONTENT, DOCS_MESSAGE_HASH

    cli = await cli_factory("--mode", mode, "--port", "0", "--api-server", fake_api.url,
                            str(EXAMPLES / "legacy_aleph_client"))  # fmt: skip
    url = await cli.wait_url(url_timeout)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
            vm_hash = response.headers["Aleph-Program-ItemHash"]

        async with http.get(f"{url}messages") as response:
            assert response.status == 200, await response.text()
            [message] = (await response.json())["Messages"]["messages"]
        assert message["item_hash"] == DOCS_MESSAGE_HASH
        assert message["content"]["content"] == DOCS_MESSAGE_CONTENT
        verify_signature(message["signature"], message["sender"], get_verification_buffer(message))

        async with http.get(f"{url}post_a_message") as response:
            assert response.status == 200, await response.text()
            signed = (await response.json())["response"]
        # The program's own message: in its name (the VM's hash), signed by the host.
        assert signed["content"]["address"] == vm_hash and signed["channel"] == "TEST"
        verify_signature(signed["signature"], signed["sender"], get_verification_buffer(signed))
        # ...re-published by the node with its key, as the API server received it.
        [body] = await fake_api.wait_posted(1)
        posted = body["message"]
        assert json.loads(posted["item_content"])["content"]["answer"] == 42
        assert posted["sender"] == signed["sender"] and posted["channel"] == "TEST"
        verify_signature(posted["signature"], posted["sender"], get_verification_buffer(posted))

        async with http.get(f"{url}cache") as response:
            assert await response.json() == {"value": "value", "after_delete": None}

        message = {"item_hash": "cd" * 32, "type": "POST", "content": {"hello": "event"}}
        async with http.post(f"{url}control/event", json=message) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"result": "Good"}
    await stop_cleanly(cli)
