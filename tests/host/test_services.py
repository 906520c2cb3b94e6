"""HostServices around the real init in dev mode, as `aleph-runtime run --mode dev` will
compose them: everything reachable while running, nothing left behind after stop."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
import pytest

from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config, zip_directory
from aleph_runtime.host.services.host_services import HostServices
from tests.host.conftest import VM_HASH
from tests.host.devnode import EXAMPLES

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


async def run_once(state_dir, work_dir, fake_api, requests):
    init = DevMachine(work_dir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    services = HostServices(state_dir, init.uds_path, VM_HASH, seconds=30, api_server=fake_api.url, port=0)
    await services.start()
    redis_pid = services.redis.process.pid
    results = []
    try:
        await init.start(timeout=60)
        config = program_config(
            zip_directory(EXAMPLES / "fastapi_app"), "main:app", encoding="zip", vm_hash=VM_HASH,
            variables={"EXAMPLE_VOLUME": str(state_dir / "volume")},
        )  # fmt: skip
        await init.configure(config)
        url = await services.start_front()
        async with aiohttp.ClientSession() as http:
            for path in requests:
                async with http.get(url + path) as response:
                    results.append((response.status, await response.json()))
    finally:
        await services.stop()
        await init.stop()
    return results, redis_pid, await services.signing_address()


async def test_host_services_run_a_program_and_leave_nothing_behind(short_dir, fake_api):
    state_dir = short_dir / "state"
    results, redis_pid, address = await run_once(
        state_dir, short_dir / "run1", fake_api, ["cache/set/visits/1", "cache/get/visits", "sign"]
    )
    assert results[0] == (200, True)
    assert results[1] == (200, {"key": "visits", "value": "1"})
    assert results[2][0] == 200 and results[2][1]["sender"] == address

    # Nothing left: no Redis process, no socket of ours.
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    # (The init's own root, its guest-side files, is the init's business.)
    sockets = [
        p for p in short_dir.rglob("*") if p.is_socket() and "root" not in p.relative_to(short_dir).parts
    ]
    assert sockets == []

    # A second run: the same signing key, and the cache kept, as a node keeps them.
    results, _, again = await run_once(state_dir, short_dir / "run2", fake_api, ["cache/get/visits"])
    assert again == address
    assert results == [(200, {"key": "visits", "value": "1"})]
