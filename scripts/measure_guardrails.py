#!/usr/bin/env python3
"""Measure the init's guardrails (issue 9) on a checkout, as JSON; run it on two checkouts
(before and after) in the same session to compare.

    scripts/measure_guardrails.py [--repository DIR] [--calls 1000] [--entries 99000]

Against the dev-mode init of DIR (default: this checkout), with descriptors limited to
1024 as PID 1's are in a VM:
- `abandoned`: the init's descriptors and RSS before and after N calls (64 KiB bodies) to
  a handler that never answers, 50 at a time, each closed by the host once the 50 reached
  the program (0.3 s at least); whether a call and `halt` are still answered afterwards;
- `endless`: the init's peak RSS during an endless ASGI stream the host gives up on
  after 2 s, watched for 10 s (stopped early at 3 GiB, to spare the machine);
- `extraction`: seconds from `halt` to STOPZ while a zip of N empty files is unpacked
  (the supervisor waits 5 s); 99,000 by default, under the archive's 100,000-entry limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "runtime"))

from aleph_runtime.host.machines.dev import DevMachine  # noqa: E402
from aleph_runtime.host.program import program_config  # noqa: E402

APP = (HERE / "tests" / "programs" / "guardrails_app.py").read_bytes()
RSS_STOP = 3 << 30


def limited(repository: Path) -> dict:
    """A DevMachine of that checkout, with PID 1's usual descriptor limit."""
    return {
        "init_path": repository / "init" / "init1.py",
        "python": "prlimit",
        "python_flags": ("--nofile=1024:4096", "--", sys.executable, "-OO"),
    }


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def answered(init: DevMachine, path: str = "/", timeout: float = 10) -> bool:
    try:
        answer = await init.client.http("GET", path, timeout=timeout)
    except (TimeoutError, OSError, Exception):  # noqa: BLE001 - any failure is "no"
        return False
    return "headers" in answer


async def hanging(init: DevMachine) -> int:
    try:
        answer = await init.client.http("GET", "/stats", timeout=10)
        return json.loads(answer["body"]["body"])["hanging"]
    except Exception:  # noqa: BLE001 - an init that no longer answers
        return -1


async def abandon_batch(init: DevMachine, count: int, body: bytes) -> None:
    """`count` calls, given up (their connections closed) once they all reached the program
    or after 10 s, whichever comes first; at least 0.3 s after they were made."""
    # Calls an init did not release are still hanging: count from there.
    target = max(await hanging(init), 0) + count
    calls = [
        asyncio.ensure_future(init.client.http("POST", "/hang", body=body, timeout=60)) for _ in range(count)
    ]
    await asyncio.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(call.done() for call in calls):
        if await hanging(init) >= target:
            break
        await asyncio.sleep(0.05)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def measure_abandoned(repository: Path, calls: int, workdir: Path) -> dict:
    log = open(workdir / "abandoned.log", "wb")  # noqa: SIM115 - the init holds it
    init = DevMachine(workdir / "abandoned", stderr=log, **limited(repository))
    await init.start()
    try:
        await init.configure(program_config(APP, "main:app"))
        await answered(init)
        pid = init.process.pid
        before = {"fds": descriptors(pid), "rss_mib": rss_mib(pid)}
        body = b"b" * (64 << 10)
        for start in range(0, calls, 50):
            await abandon_batch(init, min(50, calls - start), body)
        await asyncio.sleep(1)
        after = {"fds": descriptors(pid), "rss_mib": rss_mib(pid)}
        call_after = await answered(init)
        halt = await init.client.halt()
        return {"calls": calls, "before": before, "after": after, "call_answered_after": call_after,
                "halt_answered": halt.shut_down}  # fmt: skip
    finally:
        await init.kill()


async def measure_endless(repository: Path, workdir: Path) -> dict:
    init = DevMachine(workdir / "endless", stderr=open(workdir / "endless.log", "wb"), **limited(repository))  # noqa: SIM115 - the init holds it
    await init.start()
    try:
        await init.configure(program_config(APP, "main:app"))
        pid = init.process.pid
        start_rss = rss_mib(pid)
        call = asyncio.ensure_future(init.client.http("GET", "/endless", timeout=2))
        peak, started = start_rss, time.monotonic()
        outcome = "host gave up after 2 s"
        while time.monotonic() - started < 10:
            peak = max(peak, rss_mib(pid))
            if peak * 2**20 > RSS_STOP:
                outcome = "stopped at 3 GiB"
                break
            if call.done() and not call.cancelled() and call.exception() is None:
                outcome = "answered: " + str(call.result().get("error", "a body"))[:100]
            await asyncio.sleep(0.05)
        with contextlib.suppress(BaseException):
            await call
        return {"rss_start_mib": start_rss, "rss_peak_mib": peak, "outcome": outcome}
    finally:
        await init.kill()


async def measure_extraction(repository: Path, entries: int, workdir: Path) -> dict:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", APP)
        for index in range(entries):
            archive.writestr(f"d{index // 1000}/f{index}", b"")
    code = buffer.getvalue()
    init = DevMachine(
        workdir / "extraction",
        stderr=open(workdir / "extraction.log", "wb"),  # noqa: SIM115 - the init holds it
        **limited(repository),
    )
    await init.start()
    try:
        configure = asyncio.ensure_future(
            init.configure(program_config(code, "main:app", encoding="zip"), timeout=600)
        )
        opt = init.root / "opt"
        while not (opt.is_dir() and any(opt.iterdir())):
            if configure.done():  # refused at once (e.g. over the archive's entry limit)
                return {"entries": entries, "refused": str(configure.exception() or configure.result())[:200]}
            await asyncio.sleep(0.05)
        asked = time.monotonic()
        halt = await init.client.halt(timeout=600)
        seconds = time.monotonic() - asked
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(configure, 1)
        return {"entries": entries, "halt_to_stopz_s": round(seconds, 3), "stopz": halt.shut_down}
    finally:
        await init.kill()


async def main_async(arguments: argparse.Namespace) -> dict:
    repository = Path(arguments.repository).resolve()
    with tempfile.TemporaryDirectory(prefix="ar-measure-", dir="/tmp") as directory:
        workdir = Path(directory)
        parts = arguments.parts.split(",")
        figures: dict = {"repository": str(repository)}
        if "abandoned" in parts:
            figures["abandoned"] = await measure_abandoned(repository, arguments.calls, workdir)
        if "endless" in parts:
            figures["endless"] = await measure_endless(repository, workdir)
        if "extraction" in parts:
            figures["extraction"] = await measure_extraction(repository, arguments.entries, workdir)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=str(HERE))
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=99_000)
    parser.add_argument(
        "--parts", default="abandoned,endless,extraction", help="which figures, comma-separated"
    )
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
