#!/usr/bin/env python3
"""Benchmark: proxying a call to an executable program, our small HTTP client vs aiohttp.

A canned HTTP server (asyncio, in its own process) stands for the program. Each client
runs in a fresh process: its import time, then N sequential requests, CPU time per
request of the client process (what the init pays) and p50 latency. aiohttp is measured
as the old init used it (one ClientSession per call) and at its best (one shared session).
Prints JSON. Usage: scripts/bench_executable.py [requests]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = r"""
import asyncio, sys
async def answer(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        close = b"connection: close" in head.lower()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n")
        await writer.drain()
        if close:
            writer.close()
            return
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, statistics, sys, time
variant, port, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:  # the init runs on uvloop when it is installed
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
except ImportError:
    pass
scope = {"type": "http", "method": "GET", "path": "/", "query_string": "a=1",
         "headers": [(b"host", b"example.org"), (b"user-agent", b"bench")], "body": b""}
t0 = time.perf_counter()
if variant == "ours":
    from aleph_runtime.guest.executable import ExecutableProgram
    program = ExecutableProgram("/bin/true", {}, port=port)
    async def call(state):
        status, headers, body = await program.request(scope)
        return body
else:
    import aiohttp
    async def call(state):
        url = f"http://127.0.0.1:{port}{scope['path']}?{scope['query_string']}"
        if variant == "aiohttp_session_per_call":
            async with aiohttp.ClientSession() as session:
                async with session.request(scope["method"], url, headers=[(k.decode(), v.decode()) for k, v in scope["headers"]]) as response:
                    return await response.read()
        async with state["session"].request(scope["method"], url, headers=[(k.decode(), v.decode()) for k, v in scope["headers"]]) as response:
            return await response.read()
import_ms = (time.perf_counter() - t0) * 1000
async def main():
    state = {}
    if variant == "aiohttp_shared_session":
        state["session"] = aiohttp.ClientSession()
    for _ in range(50):
        await call(state)
    latencies = []
    cpu0 = time.process_time()
    for _ in range(requests):
        started = time.perf_counter()
        body = await call(state)
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu0
    if body != b"hello world\n":
        raise SystemExit(f"bad body {body!r}")
    if "session" in state:
        await state["session"].close()
    latencies.sort()
    print(json.dumps({"import_ms": round(import_ms, 1), "cpu_us_per_request": round(cpu * 1e6 / requests),
                      "p50_us": round(statistics.median(latencies) * 1e6),
                      "p99_us": round(latencies[int(len(latencies) * 0.99) - 1] * 1e6)}))
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.join(REPOSITORY, "runtime")}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        server.stdout.readline()
        results = {}
        for variant in ("ours", "aiohttp_session_per_call", "aiohttp_shared_session"):
            output = subprocess.run(
                [sys.executable, "-c", CLIENT, variant, str(port), str(requests)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[variant] = json.loads(output)
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
