"""Benchmark an author's loop with `aleph-runtime run` (dev mode by default), as JSON.

Figures from the client's side:
- `command_to_first_200_s`: from starting `aleph-runtime run` to the first request's 200
  (the image and any program packages already built: a warm start);
and each the median (and max) over N rounds:
- `edit_to_live_s`: from writing main.py under `--watch` until a request gets the new answer;
- `crash_to_200_s`: from a request whose handler calls sys.exit(1) (answered 502) until the
  next request's 200, which boots a new program.

    scripts/bench.sh reload [--rounds 5] [--mode vm] [--runtime debian-13]

`runtime` says which runtime ran the program (the command's own line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "runtime"))

from aleph_runtime.host.vmm.image import DEFAULT_RUNTIME, RUNTIMES  # noqa: E402

PROGRAM = """\
import sys

VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/crash":
        sys.exit(1)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with http.get(url) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def bench(mode: str, rounds: int, workdir: Path, runtime: str | None = None) -> dict:
    program = workdir / "app"
    program.mkdir()
    main = program / "main.py"
    main.write_text(PROGRAM.format(version="v0"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime")}
    log = open(workdir / "cli.log", "wb")  # noqa: SIM115 - closed below
    launched = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aleph_runtime.host.node.cli", "run", str(program), "--mode", mode,
        "--port", str(port), "--watch", "--quiet", "--state-dir", str(workdir / "state"),
        *(["--runtime", runtime] if runtime else []),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    edits: list[float] = []
    crashes: list[float] = []
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with asyncio.timeout(600):
            while b"Program running at" not in await process.stdout.readline():
                if process.returncode is not None:
                    raise RuntimeError((workdir / "cli.log").read_text())
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while (await get(http, url))[0] != 200:
                await asyncio.sleep(0.01)
            first_200 = time.monotonic() - launched
            for n in range(1, rounds + 1):
                main.write_text(PROGRAM.format(version=f"v{n}"))
                began = time.monotonic()
                async with asyncio.timeout(300):
                    while (await get(http, url))[1] != f"v{n}":
                        await asyncio.sleep(0.02)
                edits.append(time.monotonic() - began)
                await asyncio.sleep(1)  # the watcher's quiet period, so rounds do not merge
                began = time.monotonic()
                assert (await get(http, f"{url}crash"))[0] == 502
                async with asyncio.timeout(300):
                    while (await get(http, url))[0] != 200:
                        await asyncio.sleep(0.02)
                crashes.append(time.monotonic() - began)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 60)
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()

    def summary(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}

    output = (workdir / "cli.log").read_text()
    boot = re.search(r"started in [^\n]*", output)
    ran_on = re.search(r"^aleph-runtime: runtime (.*)$", output, re.MULTILINE)
    return {
        "mode": mode,
        "runtime": ran_on.group(1) if ran_on else runtime,
        "rounds": rounds,
        "command_to_first_200_s": round(first_200, 3),
        "edit_to_live_s": summary(edits),
        "crash_to_200_s": summary(crashes),
        "startup_report": boot.group(0) if boot else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("dev", "vm"), default="dev")
    parser.add_argument("--runtime", choices=RUNTIMES, help=f"the runtime image (default {DEFAULT_RUNTIME})")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reload-", dir="/tmp") as workdir:
        result = bench(arguments.mode, arguments.rounds, Path(workdir), arguments.runtime)
        print(json.dumps(asyncio.run(result), indent=2))


if __name__ == "__main__":
    main()
