"""Benchmark the init in dev mode against a bare asyncio server, in one run, as JSON.

Figures, for each server:
- `ready_cpu_ms`: CPU time of the server process from its start until the config is answered;
- `request_cpu_us`: its CPU time per request over N sequential requests (from schedstat);
- `latency_p50_us`, `latency_p99_us`: of those sequential requests, seen by the client;
- `requests_per_s`: with 16 requests in flight;
- `rss_mb`: resident memory after the run.
The baseline is the smallest server that speaks the same framing and answers a canned
response; `ratios` divides the init's figures by it, since absolute numbers drift
with the machine's load and ratios from one run do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aleph_runtime import protocol
from aleph_runtime.host.machines.dev import DevInit
from aleph_runtime.host.program import program_config

#: The trivial program measured: the bundled hello example (plain code, with a lifespan).
TRIVIAL_APP = (Path(__file__).resolve().parents[1] / "examples" / "hello" / "main.py").read_bytes()

#: The bare server: accepts, answers CONNECT, reads one msgpack object, sends a canned answer.
BASELINE_SERVER = r'''
import asyncio, os, sys
import msgpack
try:
    import uvloop
except ImportError:
    uvloop = None
ANSWER = msgpack.packb({"headers": {"status": 200, "headers": [[b"content-type", b"text/plain"]]},
                        "body": {"body": b"hello"}, "output": "", "output_data": None})
base = os.environ["ALEPH_VSOCK_UDS"]

async def handle(reader, writer):
    await reader.readline()
    writer.write(b"OK 1073741824\n")
    first = await reader.read(65536)
    if first[:1].isdigit():
        writer.write(msgpack.packb({"success": True}))
    elif first == b"halt":
        writer.write(b"STOP\nSTOPZ\n"); await writer.drain(); writer.close(); os._exit(0)
    else:
        unpacker = msgpack.Unpacker()
        unpacker.feed(first)
        while not any(True for _ in unpacker):
            unpacker.feed(await reader.read(65536))
        writer.write(ANSWER)
    await writer.drain()
    writer.close()

async def main():
    await asyncio.start_unix_server(handle, path=base)
    _, w = await asyncio.open_unix_connection(base + "_52")
    w.write(msgpack.packb({"version": "2.0.0"})); await w.drain(); w.close()
    await asyncio.Event().wait()

(uvloop.run if uvloop else asyncio.run)(main())
'''


def cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of a process, in ns (schedstat: finer than utime/stime ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(server: DevInit, requests: int, concurrency: int) -> dict:
    await server.start()
    await server.configure(program_config(TRIVIAL_APP, "main:app", vm_hash="ab" * 32))
    pid = server.process.pid
    ready_cpu_ms = cpu_ns(pid) / 1e6
    scope = protocol.http_scope("GET", "/", "", [(b"accept", b"*/*")], b"")

    for _ in range(50):  # warm-up
        await server.client.run_raw(scope)

    latencies = []
    cpu_before = cpu_ns(pid)
    for _ in range(requests):
        started = time.perf_counter()
        await server.client.run_raw(scope)
        latencies.append(time.perf_counter() - started)
    request_cpu_us = (cpu_ns(pid) - cpu_before) / requests / 1e3

    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(requests * 2):
        queue.put_nowait(None)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            answer = await server.client.run_raw(scope)
            if not answer:
                raise RuntimeError("empty answer under load")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    requests_per_s = requests * 2 / (time.perf_counter() - started)
    result = {
        "ready_cpu_ms": round(ready_cpu_ms, 1),
        "request_cpu_us": round(request_cpu_us, 1),
        "latency_p50_us": round(statistics.median(latencies) * 1e6, 1),
        "latency_p99_us": round(statistics.quantiles(latencies, n=100)[98] * 1e6, 1),
        "requests_per_s": round(requests_per_s),
        "rss_mb": round(rss_mb(pid), 1),
    }
    await server.stop()
    return result


async def bench_dev(requests: int, concurrency: int, python: str, pycache: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="aleph-bench-") as workdir:
        baseline_script = Path(workdir) / "baseline_server.py"
        baseline_script.write_text(BASELINE_SERVER)
        # A VM's image carries bytecode compiled ahead of time at -OO; here it goes to a
        # private cache (never next to the system's own modules), warmed by a first run.
        env = {"PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}

        def servers(name: str):
            return (
                DevInit(Path(workdir) / f"init-{name}", python=python, env=env, stderr=asyncio.subprocess.DEVNULL),
                DevInit(Path(workdir) / f"baseline-{name}", python=python, env=env, init_path=baseline_script),
            )

        for server in servers("warm-up"):
            await measure(server, 10, 2)
        init, baseline = servers("measured")
        results = {
            "init": await measure(init, requests, concurrency),
            "baseline": await measure(baseline, requests, concurrency),
        }
    results["ratios"] = {
        key: round(results["init"][key] / results["baseline"][key], 2)
        for key in results["init"]
        if results["baseline"][key]
    }
    results["settings"] = {"requests": requests, "concurrency": concurrency, "python": python}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the init in dev mode against a bare asyncio server.")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the init")
    arguments = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pycache = Path(os.environ.get("ALEPH_RUNTIME_CACHE", "/var/cache/aleph-runtime")) / "pycache"
    results = asyncio.run(bench_dev(arguments.requests, arguments.concurrency, arguments.python, pycache))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
