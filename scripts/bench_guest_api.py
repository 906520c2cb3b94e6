#!/usr/bin/env python3
"""Benchmark: a guest API cache round trip through the in-process bridge vs socat.

A stub of the supervisor's guest API listens on `<base>_53`. The forwarder under test
listens on a Unix socket like /tmp/socat-socket: either our bridge (in its own process,
on uvloop when installed, as in the init) or `socat UNIX-LISTEN:...,fork UNIX-CONNECT:...`
(the old init's, with UNIX-CONNECT standing in for VSOCK-CONNECT). The client is the
SDK's VmCache (one keep-alive connection), then a client opening one connection per
request. Reports latency percentiles and the forwarder's CPU time per request (its own
plus its reaped children's, from /proc/<pid>/stat). Prints JSON.

Usage: scripts/bench_guest_api.py [requests]
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")

BRIDGE = r"""
import asyncio, sys
try:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
except ImportError:
    pass
from aleph_runtime.guest.guest_api_bridge import start_guest_api_bridge
base, path = sys.argv[1], sys.argv[2]
async def main():
    async def open_host_connection(port):
        return await asyncio.open_unix_connection(f"{base}_{port}")
    await start_guest_api_bridge(open_host_connection, path)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """CPU of pid, of its reaped children, and of its live children (socat's per-connection forks)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 (1-based), i.e. 11-14 after the name.
    total = sum(int(value) for value in fields[11:15])
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        children = file.read().split()
    for child in children:
        try:
            with open(f"/proc/{child}/stat") as file:
                total += sum(int(value) for value in file.read().rsplit(")", 1)[1].split()[11:13])
        except OSError:
            pass
    return total / TICKS


async def wait_for(path: str) -> None:
    for _ in range(500):
        if os.path.exists(path):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(path)


async def raw_get(path: str, key: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"GET /cache/{key} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def measure(kind: str, socket_path: str, pid: int, requests: int) -> dict:
    from aleph.sdk.vm.cache import VmCache

    cache = VmCache(unix_socket=socket_path, connector_url="http://localhost")
    await cache.set("bench", b"x" * 100)
    for _ in range(20):
        await cache.get("bench")
    result = {}
    for mode in ("vmcache_keepalive", "new_connection_per_request"):
        latencies = []
        cpu_before = cpu_seconds(pid)
        for _ in range(requests):
            started = time.perf_counter()
            if mode == "vmcache_keepalive":
                value = await cache.get("bench")
            else:
                value = await raw_get(socket_path, "bench")
            latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.2)  # let socat's forked children be reaped into cutime
        cpu = cpu_seconds(pid) - cpu_before
        if not value:
            raise RuntimeError("empty answer")
        latencies.sort()
        result[mode] = {
            "p50_us": round(statistics.median(latencies) * 1e6),
            "p99_us": round(latencies[int(len(latencies) * 0.99) - 1] * 1e6),
            "forwarder_cpu_us_per_request": round(cpu * 1e6 / requests),
        }
    await cache.session.close()
    return result


async def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    sys.path.insert(0, os.path.join(REPOSITORY, "runtime"))
    spec = importlib.util.spec_from_file_location(
        "stub", os.path.join(REPOSITORY, "tests/programs/guest_api_stub.py")
    )
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-guest-api-") as directory:
        base = os.path.join(directory, "v.sock")
        runner = await stub.start(f"{base}_53", "00" * 32)
        env = {**os.environ, "PYTHONPATH": os.path.join(REPOSITORY, "runtime")}
        for kind in ("bridge", "socat"):
            path = os.path.join(directory, f"{kind}-socket")
            if kind == "bridge":
                command = [sys.executable, "-c", BRIDGE, base, path]
            else:
                command = ["socat", f"UNIX-LISTEN:{path},fork", f"UNIX-CONNECT:{base}_53"]
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            try:
                await wait_for(path)
                results[kind] = await measure(kind, path, process.pid, requests)
            finally:
                process.terminate()
                process.wait()
        await runner.cleanup()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
