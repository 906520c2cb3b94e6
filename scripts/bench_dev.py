"""Benchmark the init in dev mode against a bare asyncio server, in one run, as JSON.

`--against PATH` (root): compare with another init, today's aleph-vm init1.py (from
aleph-vm's runtimes/aleph-debian-12-python/; not part of this repository: e.g.
`git clone --depth 1 https://github.com/aleph-im/aleph-vm` and pass
aleph-vm/runtimes/aleph-debian-12-python/init1.py; it needs aiohttp and msgpack, which
the venv has), driven the
same way: each init runs as PID 1 of a fresh sandbox (private namespaces, as in a VM),
its CPU counted by a cgroup it joins at its exec (the interpreter, and every child it
spawns: today's init runs `hostname`, `ip`, `mount`, `unzip`), the program sent as a zip
(main.py, `main:app`, what both inits take alike). An init that speaks AF_VSOCK runs
through scripts/bench_vsock_shim.py (vsock mapped onto the same Unix sockets). `--runs N`
rounds, the order alternating, each figure the median; `ratios` is ours / theirs.
`--against` may be repeated (today's init, and another checkout's init/init1.py for a
before/after): the others are `theirs`, `theirs2`..., each with its own ratios.

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
from aleph_runtime.host.machines.dev import INIT1, DevMachine
from aleph_runtime.host.program import program_config, zip_directory
from aleph_runtime.host.supervisor import SupervisorClient

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent

#: The trivial program measured: the bundled hello example (plain code, with a lifespan).
TRIVIAL_APP = (Path(__file__).resolve().parents[1] / "examples" / "hello" / "main.py").read_bytes()

#: The same program for --against, its lifespan written so today's init can start it too:
#: today's lifespan `receive` answers `lifespan.startup` on every call, so an app that
#: keeps receiving (the hello example, as ASGI allows) never lets it finish the startup;
#: one message per lifespan call works with both.
TRIVIAL_APP_ONE_LIFESPAN_MESSAGE = TRIVIAL_APP.replace(
    b"""        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
""",
    b"""        message = await receive()
        await send({"type": message["type"] + ".complete"})
        return
""",
)

#: The bare server: accepts, answers CONNECT, reads one msgpack object, sends a canned answer.
BASELINE_SERVER = r"""
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
"""


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


async def measure(server, requests: int, concurrency: int, config: dict | None = None) -> dict:
    await server.start()
    await server.configure(config or program_config(TRIVIAL_APP, "main:app", vm_hash="ab" * 32))
    if isinstance(server, DevMachine):
        pid = server.process.pid

        def server_cpu_ns() -> int:
            return cpu_ns(pid)
    else:
        pid = server.pid
        server_cpu_ns = server.cpu_ns
    ready_cpu_ms = server_cpu_ns() / 1e6
    scope = protocol.http_scope("GET", "/", "", [(b"accept", b"*/*")], b"")

    answer = protocol.unpack(await server.client.run_raw(scope))
    if not isinstance(answer, dict) or answer.get("headers", {}).get("status") != 200:
        raise RuntimeError(f"the init did not answer the call: {answer!r}"[:2000])
    for _ in range(50):  # warm-up
        await server.client.run_raw(scope)

    latencies = []
    cpu_before = server_cpu_ns()
    for _ in range(requests):
        started = time.perf_counter()
        await server.client.run_raw(scope)
        latencies.append(time.perf_counter() - started)
    request_cpu_us = (server_cpu_ns() - cpu_before) / requests / 1e3

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
                DevMachine(
                    Path(workdir) / f"init-{name}", python=python, env=env, stderr=asyncio.subprocess.DEVNULL
                ),
                DevMachine(
                    Path(workdir) / f"baseline-{name}", python=python, env=env, init_path=baseline_script
                ),
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


class Cgroup:
    """A CPU accounting group of its own (cgroup v1 cpuacct, else v2), removed at the end."""

    def __init__(self, name: str):
        v1 = Path("/sys/fs/cgroup/cpuacct")
        if (v1 / "cpuacct.usage").is_file():
            self.path, self.v2 = v1 / name, False
        else:
            v2 = next(
                (
                    p
                    for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                    if (p / "cgroup.procs").is_file() and (p / "cgroup.controllers").is_file()
                ),
                None,
            )
            if v2 is None:
                raise SystemExit("--against needs cgroups (v1 cpuacct or v2) to count the inits' CPU")
            self.path, self.v2 = v2 / name, True
        self.path.mkdir()

    def cpu_ns(self) -> int:
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * 1000
            return 0
        return int((self.path / "cpuacct.usage").read_text())

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # its last task is still exiting
                time.sleep(0.05)


class SandboxedInit:
    """An init as PID 1 of a fresh sandbox, driven as the supervisor drives it.

    The sandbox's last step joins the cgroup and execs the interpreter, so the cgroup
    counts the init and whatever it spawns, not the sandbox's own setup.
    """

    def __init__(
        self, name: str, python: str, arguments: list[str], env: dict[str, str], binds: list[Path], log: Path
    ):
        self.name = name
        self.log = log
        self.python = python
        self.arguments = arguments
        self.env = env
        self.binds = binds
        self.box = None
        self.cgroup: Cgroup | None = None
        self.client: SupervisorClient | None = None

    async def start(self, timeout: float = 60) -> dict:
        from aleph_runtime.host.machines.sandbox import Sandbox

        self.cgroup = Cgroup(f"aleph-bench-{os.getpid()}-{self.name}")
        gate = self.log.with_suffix(".gate")
        with contextlib.suppress(FileNotFoundError):
            gate.unlink()
        os.mkfifo(gate)
        # The sandbox's PID 1 is one task from its setup to the init (each step execs the
        # next): it waits at the gate until we have put it in the cgroup.
        command = ["/bin/sh", "-c", 'read -r _ <"$0" && exec "$@"', str(gate), self.python, *self.arguments]
        with open(self.log, "ab") as log:
            self.box = Sandbox(command, env=self.env, binds=self.binds, stdout=log, stderr=log)
            self.box.env["ALEPH_VSOCK_UDS"] = self.box.base
            self.client = SupervisorClient(self.box.base)
            ready = await self.client.ready_signal().start()
            self.box.start()
        try:
            await self._open_gate(gate, timeout)
            return await ready.wait(timeout)
        except (OSError, RuntimeError, TimeoutError) as error:
            await self.stop()
            raise RuntimeError(
                f"{self.name}: no ready signal ({error}); its output: {self.log.read_text()[-3000:]}"
            ) from None
        except BaseException:
            await self.stop()
            raise

    async def _open_gate(self, gate: Path, timeout: float) -> None:
        # The sandbox's setup (its mounts, each step an exec, some with children) runs
        # before the gate: the cgroup takes the task only once it waits there, so that
        # setup is nobody's CPU. A writer's open succeeds once the shell has the FIFO open.
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: the shell has not opened it yet
                if time.monotonic() > deadline or self.box.process.poll() is not None:
                    raise RuntimeError("the sandbox did not reach its gate") from None
                await asyncio.sleep(0.002)
                continue
            try:
                self.cgroup.add(self.box.pid)
                os.write(fd, b"go\n")
            finally:
                os.close(fd)
            return

    @property
    def pid(self) -> int:
        return self.box.pid

    def cpu_ns(self) -> int:
        return self.cgroup.cpu_ns()

    async def configure(self, config: dict) -> dict:
        try:
            return await self.client.configure(config)
        except (OSError, RuntimeError, TimeoutError) as error:  # the init's error, or none in time
            raise RuntimeError(f"{self.name}: configuration failed ({error!r}); its output: "
                               f"{self.log.read_text()[-3000:]}") from None  # fmt: skip

    async def stop(self) -> None:
        try:
            if self.box is not None and self.box.process.poll() is None:
                with contextlib.suppress(Exception):
                    await self.client.halt()
                await asyncio.to_thread(self.box.stop, 5.0)
            elif self.box is not None:
                self.box.stop(0)
        finally:
            if self.cgroup is not None:
                self.cgroup.remove()


async def bench_against(
    others: list[Path], requests: int, concurrency: int, python: str, pycache: Path, runs: int
) -> dict:
    """Ours against `others` (init1.py files, vsock or dev mode), each as PID 1 of a sandbox."""
    from aleph_runtime.host.machines.sandbox import require_root

    reason = require_root()
    if reason:
        raise SystemExit(f"--against: {reason}")
    with tempfile.TemporaryDirectory(prefix="aleph-bench-") as workdir:
        app = Path(workdir) / "app"
        app.mkdir()
        if TRIVIAL_APP_ONE_LIFESPAN_MESSAGE == TRIVIAL_APP:
            raise SystemExit("examples/hello/main.py changed: update TRIVIAL_APP_ONE_LIFESPAN_MESSAGE")
        (app / "main.py").write_bytes(TRIVIAL_APP_ONE_LIFESPAN_MESSAGE)
        config = program_config(zip_directory(app), "main:app", encoding="zip", vm_hash="ab" * 32)
        others = [other.resolve() for other in others]
        names = ["ours"] + [f"theirs{i + 1 if i else ''}" for i in range(len(others))]
        paths = dict(zip(names[1:], others, strict=True))
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPYCACHEPREFIX": str(pycache),
        }
        # The other init's directory and its parent (where a checkout's runtime/ is); the
        # sandbox's own writes vanish with it.
        binds = [REPOSITORY, Path(workdir), pycache, *{other.parent.parent for other in others}]
        pycache.mkdir(parents=True, exist_ok=True)

        def server(name: str) -> SandboxedInit:
            if name in paths:
                arguments = ["-OO", str(HERE / "bench_vsock_shim.py"), str(paths[name])]
            else:
                arguments = ["-OO", str(INIT1)]
            return SandboxedInit(name, python, arguments, env, binds, Path(workdir) / f"{name}.log")

        for name in names:  # warm-up: bytecode into the cache, files into the page cache
            await _measure_stopping(server(name), 10, 2, config)
        rounds: dict[str, list[dict]] = {name: [] for name in names}
        for run in range(runs):
            for name in names if run % 2 == 0 else names[::-1]:
                rounds[name].append(await _measure_stopping(server(name), requests, concurrency, config))
    results: dict = {
        name: {key: round(statistics.median(r[key] for r in rounds[name]), 1) for key in rounds[name][0]}
        for name in names
    }
    for name in names[1:]:
        results["ratios" + name[len("theirs") :]] = {
            key: round(results["ours"][key] / results[name][key], 2)
            for key in results["ours"]
            if results[name][key]
        }
    results["runs"] = rounds
    results["settings"] = {"requests": requests, "concurrency": concurrency, "python": python, "runs": runs,
                           "against": {name: str(path) for name, path in paths.items()}, "harness": "PID 1 of a sandbox, CPU from a cgroup"}  # fmt: skip
    return results


async def _measure_stopping(server: SandboxedInit, requests: int, concurrency: int, config: dict) -> dict:
    try:
        return await measure(server, requests, concurrency, config)
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark the init in dev mode against a bare asyncio server."
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the init")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="INIT1_PY",
        action="append",
        help="compare with this init (e.g. aleph-vm's runtimes/aleph-debian-12-python/init1.py), as root",
    )
    parser.add_argument("--runs", type=int, default=3, help="with --against: rounds, alternating (median)")
    arguments = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pycache = Path(os.environ.get("ALEPH_RUNTIME_CACHE", "/var/cache/aleph-runtime")) / "pycache"
    if arguments.against:
        results = asyncio.run(bench_against(arguments.against, arguments.requests, arguments.concurrency,
                                            arguments.python, pycache, arguments.runs))  # fmt: skip
    else:
        results = asyncio.run(bench_dev(arguments.requests, arguments.concurrency, arguments.python, pycache))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
