"""The host side with the REAL init in dev mode (`init/init1.py --uds`), running the
examples: guest API (real Redis, signing), HTTP front, lifespan, volumes, events."""

from __future__ import annotations

import json
import shutil

import aiohttp
import pytest
from aleph.sdk.chains.common import get_verification_buffer
from aleph.sdk.chains.ethereum import verify_signature

from aleph_runtime.host.program import program_config, zip_directory
from tests.cli.example_checks import check_cache, check_counter, check_errors, check_event, check_lifespan
from tests.host.conftest import VM_HASH
from tests.host.devnode import EXAMPLES, DevNode

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


@pytest.fixture
def node_factory(short_dir, redis_server, signer, fake_api):
    nodes: list[DevNode] = []

    def make(config: dict, name: str = "node") -> DevNode:
        directory = short_dir / f"{name}{len(nodes)}"
        directory.mkdir()
        node = DevNode(directory, redis_server.url, signer, fake_api.url, config)
        nodes.append(node)
        return node

    yield make


def fastapi_config(volume) -> dict:
    return program_config(
        zip_directory(EXAMPLES / "fastapi_app"), "main:app", encoding="zip", vm_hash=VM_HASH,
        variables={"EXAMPLE_VOLUME": str(volume)},
    )  # fmt: skip


async def test_fastapi_example(node_factory, short_dir, redis_server, signer):
    volume = short_dir / "volume"
    async with node_factory(fastapi_config(volume)) as node, aiohttp.ClientSession() as http:
        async with http.get(node.url) as response:
            assert response.status == 200, await response.text()
            index = await response.json()
            assert index["message"] == "Hello from aleph-runtime"
            assert index["vm_hash"] == VM_HASH
            assert response.headers["Aleph-Program-ItemHash"] == VM_HASH

        await check_lifespan(http, node.url, VM_HASH)
        # The node's cache, through VmCache in the program.
        await check_cache(http, node.url, redis_server.url, VM_HASH)
        async with http.get(f"{node.url}cache/remove/colour") as response:
            assert await response.json() == 1

        # The node's signing key, through RemoteAccount in the program.
        async with http.get(f"{node.url}sign?text=hi") as response:
            assert response.status == 200, await response.text()
            signed = await response.json()
        assert signed["sender"] == await signer.address()
        assert json.loads(signed["item_content"])["address"] == VM_HASH
        verify_signature(signed["signature"], signed["sender"], get_verification_buffer(signed))

        async with http.get(f"{node.url}text") as response:
            assert await response.text() == "plain text\n"

        await check_event(http, node.url)
        await check_counter(http, node.url, [1, 2])

    # A restart: the volume's counter goes on, and the lifespan shutdown ran at halt.
    async with node_factory(fastapi_config(volume)) as node, aiohttp.ClientSession() as http:
        await check_counter(http, node.url, [3])
        async with http.get(f"{node.url}lifespan") as response:
            assert (await response.json())["events"] == ["startup", "shutdown", "startup"]


async def test_fastapi_exception_is_a_500_with_the_traceback(node_factory, short_dir):
    """As on a node today: Starlette answers its own 500 then re-raises; the init reports the
    exception, and the supervisor's 500 carries the traceback."""
    async with node_factory(fastapi_config(short_dir / "volume")) as node, aiohttp.ClientSession() as http:
        await check_errors(http, node.url)


async def test_hello_example_plain(node_factory):
    code = (EXAMPLES / "hello" / "main.py").read_bytes()
    async with (
        node_factory(
            program_config(code, "app", encoding="plain", interface="asgi", vm_hash=VM_HASH)
        ) as node,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{node.url}vm/{VM_HASH}/world") as response:
            assert response.status == 200
            assert await response.text() == "Hello from aleph-runtime! You asked for /world\n"
        async with http.get(f"{node.url}json") as response:
            assert (await response.json())["path"] == "/json"


async def test_executable_example(node_factory):
    config = program_config(zip_directory(EXAMPLES / "executable"), "run.sh", encoding="zip", vm_hash=VM_HASH)
    async with node_factory(config) as node, aiohttp.ClientSession() as http:
        async with http.get(f"{node.url}some/where") as response:
            assert response.status == 200, await response.text()
            assert await response.text() == "Hello from an executable program! path=/some/where\n"
        async with http.post(f"{node.url}echo", data=b"ping") as response:
            assert await response.read() == b"echo: ping"
        async with http.get(f"{node.url}env") as response:
            variables = await response.json()
            assert variables["ALEPH_API_HOST"] == "http://localhost"
