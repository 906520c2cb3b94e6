#!/usr/bin/env python3
"""`scripts/bench.sh vm`: the runtime image booted in QEMU, timed through the vsock backend.

Prints one JSON object:
- `host`: seconds from QEMU's start to the ready signal, to the config answer, to the
  first response, and from halt to QEMU's exit;
- `boot`: the guest's own timeline from the console's uptime-stamped lines: when the
  kernel printed its first and last line, and the first and last line of each stage
  that stamps its lines with the uptime (initramfs, init0, init1...), plus the phases
  kernel → initramfs → init0 → init1 → ready derived from them (no initramfs stage with
  the node kernel, the default; `--kernel debian` for Debian's kernel and initramfs);
- `requests`: per-request latency (p50/p90/p99, sequential) and requests/s with N in
  flight, through SupervisorClient → backend → guest vsock → init;
- `body`: MB/s for one POST of a 64 MiB body answered with its sha256, and for a
  64 MiB response (guest → host).

`--init PATH` boots another init program from the same image (kernel `init=PATH`), so
any init that speaks the protocol can be measured side by side on the same kernel and
image. QEMU runs under TCG here: absolute numbers are far slower than on a node with
KVM; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "runtime"))

from aleph_runtime.host.program import program_config  # noqa: E402
from aleph_runtime.host.vmm.qemu import Network, QemuVM, find_images  # noqa: E402

# The hello example's lifespan, with requests answered by the benchmark's own handler.
HELLO = (REPOSITORY / "examples" / "hello" / "main.py").read_bytes()
BENCH_HANDLER = b"""
import hashlib

hello = app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return await hello(scope, receive, send)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    size = scope.get("query_string", b"")
    size = int(size.split(b"=")[1]) if size.startswith(b"size=") else 0
    answer = hashlib.sha256(body).hexdigest().encode() if body else (b"x" * size if size else b"ok")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": answer})
"""
APP = HELLO + BENCH_HANDLER

KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s*(.*)$")
STAMPED_LINE = re.compile(r"^(\d+\.\d+)\s+([A-Za-z0-9_.-]+?):?\s(.*)$")


def boot_timeline(lines) -> dict:
    """Guest uptimes of the first and last console line of each source."""
    sources: dict[str, dict] = {}
    for line in lines:
        text = re.sub(r"^<\d>", "", line.text.strip())  # printk levels, if any
        m = KERNEL_LINE.match(text)
        if m:
            # init1 stamps its lines like the kernel: "[  uptime] init1 INFO: ..."
            own = re.match(r"(init\w*)\s", m.group(2))
            source, uptime = (own.group(1) if own else "kernel"), float(m.group(1))
        else:
            m = STAMPED_LINE.match(text)
            if not m:
                continue
            source, uptime = m.group(2).lower(), float(m.group(1))
        entry = sources.setdefault(
            source, {"first": uptime, "last": uptime, "lines": 0, "host_first": line.host_time}
        )
        entry["last"] = uptime
        entry["lines"] += 1
    phases = {}
    order = [s for s in ("kernel", "initramfs", "init0", "init1") if s in sources]
    for a, b in itertools.pairwise(order):
        phases[f"{a}_to_{b}"] = round(sources[b]["first"] - sources[a]["first"], 3)
    return {"sources": sources, "phases": phases}


IMPORT_LINE = re.compile(r"import time:\s*(\d+) \|\s*(\d+) \| (\s*)(\S+)")


def import_times(lines, top: int = 25) -> dict:
    """The guest's `python -X importtime` lines (PYTHONPROFILEIMPORTTIME=1 on the kernel
    command line reaches init1 through init0's environment): the heaviest imports, in ms
    of guest time, by cumulative time (top-level ones: imported by a function, or by the
    init's own module) and by self time (anywhere in the tree)."""
    entries = []
    for line in lines:
        m = IMPORT_LINE.search(line.text)
        if m:
            entries.append((m.group(4), len(m.group(3)), int(m.group(1)), int(m.group(2))))
    top_level = sorted((e for e in entries if e[1] <= 2), key=lambda e: -e[3])[:top]
    by_self = sorted(entries, key=lambda e: -e[2])[:top]
    return {
        "modules": len(entries),
        "top_level_cumulative_ms": {name: round(c / 1000, 1) for name, _, _, c in top_level},
        "self_ms": {name: round(s / 1000, 1) for name, _, s, _ in by_self},
    }


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def run(args) -> dict:
    if args.kernel in ("node", "debian"):
        kernel, initramfs, rootfs = find_images(args.kernel, args.profile, args.compression)
    else:  # a kernel file: booted without initramfs unless one is given
        kernel, initramfs, rootfs = args.kernel, args.initramfs, None
    if args.rootfs:
        rootfs = args.rootfs
    elif rootfs is None:
        from aleph_runtime.host.vmm import image

        rootfs = image.ensure_rootfs(args.profile or "lean", args.compression or "gzip")
    network = Network(ip="172.16.9.2", route="172.16.9.1")
    vm = QemuVM(
        kernel, initramfs, rootfs, network=network, init=args.init,
        memory_mb=args.memory, vcpus=args.vcpus, machine=args.machine,
        cmdline=[*(args.cmdline or ()), *(["PYTHONPROFILEIMPORTTIME=1"] if args.importtime else [])],
    )  # fmt: skip
    result: dict = {"kernel": str(kernel), "initramfs": str(initramfs) if initramfs else None,
                    "rootfs": str(rootfs), "init": args.init or "/sbin/init", "memory_mb": args.memory,
                    "vcpus": args.vcpus, "machine": vm.machine, "cmdline": vm.kernel_cmdline()}  # fmt: skip
    try:
        ready = await vm.start(timeout=args.boot_timeout)
        t_ready = vm.elapsed()
        config = program_config(APP, "main:app", interface="asgi", ip="172.16.9.2", route="172.16.9.1")
        await vm.client.configure(config, timeout=120)
        t_config = vm.elapsed()
        first = await vm.client.http("GET", "/")
        t_first = vm.elapsed()
        assert first["body"]["body"] == b"ok", first

        latencies = []
        cpu0 = time.process_time()
        for _ in range(args.requests):
            t = time.perf_counter()
            await vm.client.http("GET", "/")
            latencies.append(time.perf_counter() - t)
        host_cpu = time.process_time() - cpu0

        semaphore = asyncio.Semaphore(args.concurrency)

        async def one():
            async with semaphore:
                await vm.client.http("GET", "/")

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.requests)))
        concurrent_s = time.perf_counter() - t

        body = os.urandom(1 << 20) * args.body_mib
        t = time.perf_counter()
        answer = await vm.client.http("POST", "/", body=body, timeout=900)
        body_s = time.perf_counter() - t
        assert answer["body"]["body"] == hashlib.sha256(body).hexdigest().encode(), "body corrupted"

        t = time.perf_counter()
        answer = await vm.client.http("GET", "/", query_string=f"size={len(body)}", timeout=900)
        download_s = time.perf_counter() - t
        assert len(answer["body"]["body"]) == len(body), "download truncated"

        t_halt = vm.elapsed()
        await vm.client.halt()
        exited = await vm.wait_exit(60)
        t_exit = vm.elapsed()
        result.update(
            ready_signal=ready,
            host={
                "qemu_to_ready_s": round(t_ready, 3),
                "qemu_to_config_answer_s": round(t_config, 3),
                "qemu_to_first_response_s": round(t_first, 3),
                "config_s": round(t_config - t_ready, 3),
                "halt_to_exit_s": round(t_exit - t_halt, 3) if exited is not None else None,
            },
            boot=boot_timeline(vm.console),
            **({"imports": import_times(vm.console)} if args.importtime else {}),
            requests={
                "count": args.requests,
                "p50_ms": round(statistics.median(latencies) * 1000, 2),
                "p90_ms": round(percentile(latencies, 90) * 1000, 2),
                "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                "sequential_per_s": round(len(latencies) / sum(latencies), 1),
                # CPU of this process (client + vsock backend) per sequential request
                "host_cpu_us_per_request": round(host_cpu / len(latencies) * 1e6),
                "concurrency": args.concurrency,
                "concurrent_per_s": round(args.requests / concurrent_s, 1),
            },
            body={
                "mib": args.body_mib,
                "seconds": round(body_s, 3),
                "MB_per_s": round(len(body) / body_s / 1e6, 2),
                "download_seconds": round(download_s, 3),
                "download_MB_per_s": round(len(body) / download_s / 1e6, 2),
            },
            backend=dict(vm.backend.device.stats),
        )
    finally:
        await vm.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--init", help="init program to boot from the image (kernel init=), default /sbin/init"
    )
    parser.add_argument(
        "--kernel",
        default="node",
        help="node (default: the node-like kernel, microvm, no "
        "initramfs), debian (Debian's kernel and initramfs, q35), or a kernel file",
    )
    parser.add_argument("--initramfs", help="with a kernel file: its initramfs")
    parser.add_argument("--rootfs", help="the runtime image (default: the cached lean gzip one)")
    parser.add_argument("--profile", choices=["lean", "full"], help="the image to build or find in the cache")
    parser.add_argument("--compression", choices=["gzip", "zstd"], help="its squashfs compression")
    parser.add_argument("--memory", type=int, default=512, help="MiB")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument(
        "--machine", choices=["q35", "microvm"], help="default: microvm without an initramfs, q35 with one"
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--body-mib", type=int, default=64)
    parser.add_argument("--boot-timeout", type=float, default=180)
    parser.add_argument("--cmdline", nargs="*", help="extra kernel arguments")
    parser.add_argument("--importtime", action="store_true",
                        help="profile the init's imports in the guest (python -X importtime, through the kernel "
                             "command line): adds `imports`; the profiling slows the boot itself")  # fmt: skip
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
