#!/usr/bin/env python3
"""`scripts/bench.sh vm`: the runtime image booted in QEMU, timed through the vsock backend.

By default, cold starts (what a user waits for on a node's first call), as JSON: for
each program (`--programs`: `hello`, the bundled hello example; `fastapi`, a FastAPI
app behind aleph-sdk's AlephApp, as the aleph docs teach), `--runs` fresh boots, each
figure the median:
- `qemu_to_ready_s`, `qemu_to_config_answer_s`, `qemu_to_first_response_s`: seconds from
  QEMU's start, seen by the host;
- `qemu_cpu_ms_per_call`: QEMU's CPU per call over `--calls` sequential calls after it;
- `boot`: the guest's own stages from the console's uptime stamps (kernel, init0,
  init1's first line, its ready signal, the program started), ours only.

`--floor` also boots, alternating with the inits and from the same image, the least any
init could do: the kernel starts Python itself (no init0, no ready signal, no config),
which imports what an init speaking the protocol with asyncio needs (FLOOR_MODULES) and
the program's own imports, then powers off. `floor`: seconds from QEMU's start to the
end of those imports, as the host sees the console line (and `floor_ratios`: ours and
each other side's first response against it). No init does less than that; the floor
and the inits are separate boots, though, and TCG's noise between boots (about 15% here)
can put one run's init under the floor: read `floor_ratios` near 1 as "at the floor".

`--against DIR` (repeatable) boots other inits beside ours, alternating, from one image
derived from the base (`--profile`, full by default then: today's init0.sh runs
cgroupfs-mount, update-alternatives and unzip) holding each of them, so every side reads
the same squashfs: today's aleph-vm init (a directory with its init0.sh and init1.py,
from aleph-vm's runtimes/aleph-debian-12-python/, installed as its image has them:
/root/init0.sh as the kernel's init, /root/init1.py), or another checkout of ours (a
directory with init/ and runtime/, byte-compiled like ours). `ratios` divides our
figures by each other side's. The derived image is packed as the base is (its manifest's
compression and level) and cached by its inputs.

`--runtime debian-13` boots that runtime's image (Debian 13, Python 3.13) instead of
debian-12's, the network's; `--runtime debian-12,debian-13` runs the cold starts on each
in turn, each runtime's figures under `runtimes`.

`--throughput` instead boots once and measures calls: per-request latency (p50/p90/p99,
sequential) and requests/s with N in flight, MB/s for one POST of a 64 MiB body answered
with its sha256 and for a 64 MiB response; `--init PATH` boots another init program from
the image there (kernel `init=PATH`).

`--dependencies` instead times a program importing a dependency set of fastapi's size
(fastapi, pydantic, idna, six) from /opt/packages, alternating: the volume built the docs'
way (this machine's `pip install --target`, then `mksquashfs`: level-0 bytecode only, so
the init's `python3 -OO` compiles every import from source, at every boot) against the one
`aleph-runtime packages` builds, and the program's own code (main.py and a module of 400
functions) zipped without and with its bytecode; also the volumes' and zips' sizes and the
time packing the bytecode adds.

QEMU runs under TCG here: absolute numbers are far slower than on a node with KVM;
compare figures of one run.
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

from aleph_runtime.host.machines.qemu import QemuMachine, find_images  # noqa: E402
from aleph_runtime.host.program import program_config  # noqa: E402
from aleph_runtime.host.vmm import image  # noqa: E402
from aleph_runtime.host.vmm.image import COMPRESSIONS  # noqa: E402
from aleph_runtime.host.vmm.qemu import UserNetwork  # noqa: E402

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


#: The FastAPI program of the cold starts: a FastAPI app behind aleph-sdk's AlephApp, as
#: the aleph docs teach (no lifespan state: today's init gives the lifespan no `state`).
FASTAPI_SDK_APP = b"""
from aleph.sdk.vm.app import AlephApp
from fastapi import FastAPI

http_app = FastAPI()
app = AlephApp(http_app=http_app)


@http_app.get("/")
async def index():
    return {"message": "ok"}
"""

COLD_METRICS = (
    "qemu_to_ready_s",
    "qemu_to_config_answer_s",
    "qemu_to_first_response_s",
    "qemu_cpu_ms_per_call",
)
#: init1's own lines that mark a stage, by the start of their message.
STAGE_LINES = {"Ready signal sent": "ready_signal", "Program started": "program_started"}


def cold_sources() -> dict[str, bytes]:
    """name -> main.py of the cold starts' programs. The hello example's lifespan as one
    message per lifespan call, so today's init (which answers `lifespan.startup` to every
    receive) starts it."""
    from bench_dev import TRIVIAL_APP_ONE_LIFESPAN_MESSAGE

    return {"hello": TRIVIAL_APP_ONE_LIFESPAN_MESSAGE, "fastapi": FASTAPI_SDK_APP}


def cold_programs() -> dict[str, bytes]:
    """name -> zip of its main.py (`cold_sources`), as the supervisor sends it."""
    import tempfile

    from aleph_runtime.host.program import zip_directory

    programs = {}
    for name, main in cold_sources().items():
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "main.py").write_bytes(main)
            programs[name] = zip_directory(directory)
    return programs


#: What any init that speaks the supervisor's protocol with asyncio imports before it can
#: answer a call: the event loop (asyncio, uvloop), the wire format (msgpack) and the zip
#: the code comes in (zipfile).
FLOOR_MODULES = ("asyncio", "uvloop", "msgpack", "zipfile")
FLOOR_MARKER = "floor: imported at"


def floor_source(program: bytes) -> bytes:
    """The floor's Python: FLOOR_MODULES, the program's top-level imports (not the rest of
    its body, so the floor stays a lower bound), a console line with the guest's uptime,
    then the reboot a node's VM ends with."""
    import ast

    from aleph_runtime.guest.linux import RB_AUTOBOOT

    imports = [
        ast.unparse(node)
        for node in ast.parse(program).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    return "\n".join([
        f"import {', '.join(FLOOR_MODULES)}",
        *imports,
        "import os, time",
        f"os.write(1, b'{FLOOR_MARKER} %.3f s\\n' % time.clock_gettime(time.CLOCK_BOOTTIME))",
        "import ctypes",
        f"ctypes.CDLL(None).reboot({RB_AUTOBOOT:#x})",
        "",
    ]).encode()  # fmt: skip


def floor_cmdline(program: bytes) -> list[str]:
    """Kernel arguments that run `floor_source` as init=/usr/bin/python3. The kernel gives
    init the words it does not know as arguments, but makes a word with an `=` an
    environment variable and drops one with a dot before it (a module's parameter), and
    quotes cannot hold a newline: so the code travels hex-encoded in the environment, and
    the `-c` that runs it has neither a dot nor an `=`."""
    code = floor_source(program).hex()
    if len(code) > 1500:  # the kernel's command line holds 2048 bytes in all
        raise SystemExit(
            f"--floor: the program's imports are too long for the kernel's command line ({len(code)})"
        )
    run = "from binascii import unhexlify as u;from os import environ as e;exec(u(e['ALEPH_FLOOR']))"
    # The root is the read-only image: an import that writes a temporary file (aleph-sdk's
    # python-magic runs the C compiler, where there is one, to look for libmagic) gets the
    # devtmpfs the kernel mounts on /dev.
    return ["PYTHONPATH=/opt/aleph/libs", "TMPDIR=/dev", f"ALEPH_FLOOR={code}", "-OO", "-c", f'"{run}"']


class Side:
    """One init to boot: its name, the kernel's `init=` and extra kernel arguments."""

    def __init__(self, name: str, init: str | None = None, cmdline: tuple[str, ...] = ()):
        self.name, self.init, self.cmdline = name, init, cmdline


def derived_image(base: Path, against: list[Path]) -> tuple[Path, list[Side]]:
    """The base image plus each other init, cached by its inputs; and how to boot each."""
    import shutil
    import subprocess
    import tempfile

    from aleph_runtime.host.vmm import image

    sides, files = [], {}
    for i, directory in enumerate(against):
        if (directory / "init1.py").is_file() and (directory / "init0.sh").is_file():
            name = "today" if "today" not in (side.name for side in sides) else f"today{i}"
            files[f"root/{name}-init0.sh"] = directory / "init0.sh"
            files["root/init1.py"] = directory / "init1.py"  # where its init0.sh execs it
            sides.append(Side(name, init=f"/root/{name}-init0.sh"))
        elif (directory / "init" / "init1.py").is_file() and (
            directory / "runtime" / "aleph_runtime"
        ).is_dir():
            name = f"checkout{i}"
            for path in sorted((directory / "init").rglob("*")) + sorted(
                (directory / "runtime").rglob("*.py")
            ):
                if path.is_file() and "__pycache__" not in path.parts:
                    files[f"opt/against/{name}/{path.relative_to(directory)}"] = path
            sides.append(Side(name, cmdline=(f"ALEPH_INIT1=/opt/against/{name}/init/init1.py",)))
        else:
            raise SystemExit(
                f"--against {directory}: neither today's init (init0.sh, init1.py) nor a checkout"
            )
    if sum(side.name.startswith("today") for side in sides) > 1:
        raise SystemExit("--against: one of today's inits at a time (its init0.sh execs /root/init1.py)")
    manifest = image.read_manifest(base)
    # Packed as the base is, so that every side reads the squashfs a node would.
    compression = ["-comp", manifest.get("compression", image.DEFAULT_COMPRESSION)]
    if manifest.get("compression_level"):
        compression += ["-Xcompression-level", str(manifest["compression_level"])]
    digest = hashlib.sha256(manifest["sha256"].encode())
    for target, path in sorted(files.items()):
        digest.update(target.encode() + b"\0" + path.read_bytes() + b"\0")
    out = image.cache_dir() / "bench" / f"against-{digest.hexdigest()[:16]}"
    if (out / ".complete").exists():
        return out / "rootfs.squashfs", sides
    print(f"bench: building the image with the other inits in {out} (minutes)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (image.cache_dir() / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=image.cache_dir() / "tmp", prefix="bench-") as work:
        root = Path(work) / "root"
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-d", str(root), str(base)], check=True, stdout=subprocess.DEVNULL
        )
        for target, path in files.items():
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, root / target)
            os.chmod(root / target, 0o755 if target.endswith((".sh", "init1.py")) else 0o644)
        if (root / "opt" / "against").is_dir():  # ours are read from bytecode, as in the image
            subprocess.run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q", "-o", "0",
                            "-o", "2", "/opt/against"], check=True)  # fmt: skip
        subprocess.run(["mksquashfs", str(root), str(out / "rootfs.squashfs"), "-noappend", *compression,
                        "-processors", "2", "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    (out / ".complete").touch()
    return out / "rootfs.squashfs", sides


def guest_stages(console) -> dict:
    """Guest uptimes (s) of the stages our init and the kernel stamp on the console."""
    timeline = boot_timeline(console)
    stages = {f"{source}_first": entry["first"] for source, entry in timeline["sources"].items()}
    for line in console:
        m = KERNEL_LINE.match(line.text.strip())
        if m and " init1 " in f" {m.group(2)} ":
            message = m.group(2).split(": ", 1)[-1]
            for start, stage in STAGE_LINES.items():
                if message.startswith(start) and stage not in stages:
                    stages[stage] = float(m.group(1))
    return stages


async def cold_start(kernel, initramfs, rootfs, side: Side, code: bytes, args) -> dict:
    from bench_dev import cpu_ns

    network = UserNetwork(ip="172.16.9.2", route="172.16.9.1")
    vm = QemuMachine(kernel, initramfs, rootfs, network=network, init=side.init, cmdline=side.cmdline,
                memory_mb=args.memory, vcpus=args.vcpus, machine=args.machine)  # fmt: skip
    try:
        await vm.start(timeout=args.boot_timeout)
        t_ready = vm.elapsed()
        config = program_config(code, "main:app", encoding="zip", interface="asgi", ip="172.16.9.2",
                                 route="172.16.9.1")  # fmt: skip
        await vm.client.configure(config, timeout=300)
        t_config = vm.elapsed()
        first = await vm.client.http("GET", "/", timeout=300)
        t_first = vm.elapsed()
        if first.get("headers", {}).get("status") != 200:
            raise RuntimeError(
                f"{side.name}: the first call failed: {str(first)[:2000]}\n{vm.console_tail()}"
            )
        cpu = cpu_ns(vm.process.pid)
        for _ in range(args.calls):
            await vm.client.http("GET", "/")
        per_call_ms = (cpu_ns(vm.process.pid) - cpu) / max(args.calls, 1) / 1e6
        return {
            "qemu_to_ready_s": round(t_ready, 3),
            "qemu_to_config_answer_s": round(t_config, 3),
            "qemu_to_first_response_s": round(t_first, 3),
            "qemu_cpu_ms_per_call": round(per_call_ms, 2),
            "boot": guest_stages(vm.console),
        }
    finally:
        await vm.stop()


async def floor_start(kernel, initramfs, rootfs, program: bytes, args) -> dict:
    """One boot of the floor (`floor_source`): seconds from QEMU's start to its console line."""
    from aleph_runtime.host.machines.base import MachineExited

    vm = QemuMachine(kernel, initramfs, rootfs, init="/usr/bin/python3", cmdline=floor_cmdline(program),
                memory_mb=args.memory, vcpus=args.vcpus, machine=args.machine)  # fmt: skip
    try:
        # It sends no ready signal: the boot ends when it powers off.
        await vm.start(timeout=args.boot_timeout)
    except MachineExited:
        pass
    finally:
        await vm.kill()
    for line in vm.console:
        if line.text.startswith(FLOOR_MARKER):
            return {
                "qemu_to_imported_s": round(line.host_time, 3),
                "guest_uptime_s": float(line.text.split()[-2]),
                "boot": guest_stages(vm.console),
            }
    raise RuntimeError(f"floor: no {FLOOR_MARKER!r} line\n{vm.console_tail()}")


def runtime_image(args, profile: str) -> Path | None:
    """`--runtime`'s image (built through the cache), or None without --runtime."""
    if not args.runtime:
        return None
    return image.ensure_rootfs(profile, args.compression or image.DEFAULT_COMPRESSION, runtime=args.runtime)


async def cold_starts(args) -> dict:
    profile = args.profile or ("full" if args.against else "lean")
    kernel, initramfs, built = find_images(args.kernel, profile, args.compression)
    base = Path(args.rootfs) if args.rootfs else runtime_image(args, profile) or built
    sides = [Side("ours")]
    rootfs = base
    if args.against:
        rootfs, others = derived_image(base, [Path(a).resolve() for a in args.against])
        sides += others
    programs, sources = cold_programs(), cold_sources()
    names = [name for name in args.programs.split(",") if name]
    for name in names:
        if name not in programs:
            raise SystemExit(f"--programs: unknown program {name!r} ({', '.join(programs)})")
    runs: dict = {side.name: {name: [] for name in names} for side in sides}
    floors: dict = {name: [] for name in names}
    order = [*sides, *(["floor"] if args.floor else [])]
    for run in range(args.runs):
        for side in order if run % 2 == 0 else order[::-1]:
            for name in names:
                if side == "floor":
                    floors[name].append(await floor_start(kernel, initramfs, rootfs, sources[name], args))
                else:
                    runs[side.name][name].append(
                        await cold_start(kernel, initramfs, rootfs, side, programs[name], args)
                    )
    result: dict = {"kernel": str(kernel), "rootfs": str(rootfs), "base_rootfs": str(base), "runs": args.runs,
                    "runtime": None if args.rootfs else args.runtime or image.DEFAULT_RUNTIME, "sides": {}}  # fmt: skip
    for side in sides:
        result["sides"][side.name] = {}
        for name in names:
            done = runs[side.name][name]
            medians = {key: round(statistics.median(r[key] for r in done), 3) for key in COLD_METRICS}
            stages = {key for r in done for key in r["boot"]}
            medians["boot"] = {
                key: round(statistics.median(r["boot"][key] for r in done if key in r["boot"]), 3)
                for key in sorted(stages)
            }
            result["sides"][side.name][name] = {**medians, "each": done}
    if args.floor:
        result["floor"] = {
            name: {"qemu_to_imported_s": round(statistics.median(r["qemu_to_imported_s"] for r in done), 3),
                   "each": done}
            for name, done in floors.items()
        }  # fmt: skip
        result["floor_ratios"] = {
            side.name: {
                name: round(result["sides"][side.name][name]["qemu_to_first_response_s"]
                            / result["floor"][name]["qemu_to_imported_s"], 2)
                for name in names
            }
            for side in sides
        }  # fmt: skip
    for side in sides[1:]:
        result.setdefault("ratios", {})[side.name] = {
            name: {
                key: round(result["sides"]["ours"][name][key] / result["sides"][side.name][name][key], 2)
                for key in COLD_METRICS
                if result["sides"][side.name][name][key]
            }
            for name in names
        }
    return result


#: `--dependencies`: a dependency set of fastapi's size, shipped at /opt/packages (the image
#: has fastapi too: /opt/packages comes first, so these copies are the ones imported).
DEPENDENCIES = "fastapi\npydantic\nidna\nsix\n"
DEPENDENCIES_APP = b"""
import fastapi, idna, pydantic, six
import handlers

app = fastapi.FastAPI()


class Item(pydantic.BaseModel):
    name: str
    count: int = 0


@app.get("/")
async def index():
    assert fastapi.__file__.startswith("/opt/packages/"), fastapi.__file__
    return {"item": Item(name="x").model_dump(), "handlers": handlers.total(), "from": fastapi.__file__}
"""


def dependencies_handlers(functions: int = 400) -> bytes:
    """The program's own code, of a size worth compiling: `functions` small functions."""
    body = "".join(
        f"def handler_{i}(value, scale={i}):\n    if value > {i}:\n        return value * scale - {i}\n"
        f"    return [value + k for k in range({i % 7})]\n\n"
        for i in range(functions)
    )
    return (body + "def total():\n    return " + " + ".join(f"len(str(handler_{i}(1)))" for i in range(functions))
            + "\n").encode()  # fmt: skip


def dependency_volumes(work: Path, profile: str | None) -> dict[str, Path]:
    """(a) the docs' way: this machine's pip into a directory (level-0 bytecode, timestamp
    checked), mksquashfs's defaults; (b) `aleph-runtime packages`."""
    import subprocess

    from aleph_runtime.host.node.packages import build_packages, read_requirements

    requirements = work / "requirements.txt"
    requirements.write_text(DEPENDENCIES)
    volumes = {"docs": work / "docs.squashfs", "command": work / "command.squashfs"}
    target = work / "docs-target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "-r", str(requirements)],
                   check=True)  # fmt: skip
    subprocess.run(["mksquashfs", str(target), str(volumes["docs"]), "-noappend", "-quiet", "-no-progress"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    build_packages(read_requirements(requirements), volumes["command"], profile=profile,
                   progress=lambda message: print(message, file=sys.stderr))  # fmt: skip
    return volumes


async def dependency_start(kernel, initramfs, rootfs, volume: Path, code: bytes, args) -> dict:
    from aleph_runtime.host.vmm.qemu import Drive

    network = UserNetwork(ip="172.16.9.2", route="172.16.9.1")
    vm = QemuMachine(kernel, initramfs, rootfs, [Drive(volume, read_only=True)], network=network,
                     memory_mb=args.memory, vcpus=args.vcpus, machine=args.machine)  # fmt: skip
    try:
        await vm.start(timeout=args.boot_timeout)
        t_ready = vm.elapsed()
        config = program_config(code, "main:app", encoding="zip", interface="asgi", ip="172.16.9.2",
                                route="172.16.9.1",
                                volumes=[{"mount": "/opt/packages", "device": "vdb", "read_only": True}])  # fmt: skip
        await vm.client.configure(config, timeout=300)
        t_config = vm.elapsed()
        first = await vm.client.http("GET", "/", timeout=300)
        t_first = vm.elapsed()
        if first.get("headers", {}).get("status") != 200:
            raise RuntimeError(f"the first call failed: {str(first)[:2000]}\n{vm.console_tail()}")
        return {
            "qemu_to_ready_s": round(t_ready, 3),
            "config_to_answer_s": round(t_config - t_ready, 3),
            "qemu_to_first_response_s": round(t_first, 3),
        }
    finally:
        await vm.stop()


async def dependency_starts(args) -> dict:
    """`--dependencies`: cold starts of a program importing fastapi's dependency set from
    /opt/packages, side by side, alternating: the volume built the docs' way or by the command
    (code without bytecode), and the command's volume with the code packed with bytecode."""
    import tempfile

    from aleph_runtime.host.program import zip_directory

    kernel, initramfs, rootfs = find_images(args.kernel, args.profile or "lean", args.compression)
    with tempfile.TemporaryDirectory(prefix="bench-deps-", dir="/var/tmp") as directory:
        work = Path(directory)
        volumes = await asyncio.to_thread(dependency_volumes, work, args.profile)  # pip: synchronous
        code_dir = work / "code"
        code_dir.mkdir()
        (code_dir / "main.py").write_bytes(DEPENDENCIES_APP)
        (code_dir / "handlers.py").write_bytes(dependencies_handlers())
        codes = {"plain": zip_directory(code_dir)}
        began = time.perf_counter()
        codes["bytecode"] = zip_directory(code_dir, bytecode=True)
        pack_bytecode_ms = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        zip_directory(code_dir)
        pack_plain_ms = (time.perf_counter() - began) * 1000
        cases = {
            "docs_volume_plain_code": ("docs", "plain"),
            "command_volume_plain_code": ("command", "plain"),
            "command_volume_bytecode_code": ("command", "bytecode"),
        }
        runs: dict = {name: [] for name in cases}
        order = list(cases)
        for run in range(args.runs):
            for name in order if run % 2 == 0 else order[::-1]:
                volume, code = cases[name]
                runs[name].append(
                    await dependency_start(kernel, initramfs, rootfs, volumes[volume], codes[code], args)
                )
        result: dict = {
            "requirements": DEPENDENCIES.split(), "runs": args.runs,
            "volume_bytes": {name: path.stat().st_size for name, path in volumes.items()},
            "code_bytes": {name: len(code) for name, code in codes.items()},
            "pack_ms": {"plain": round(pack_plain_ms, 1), "bytecode": round(pack_bytecode_ms, 1)},
            "cases": {},
        }  # fmt: skip
        for name, done in runs.items():
            result["cases"][name] = {
                key: round(statistics.median(r[key] for r in done), 3) for key in done[0]
            } | {"each": done}
        return result


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def throughput(args) -> dict:
    if args.kernel in ("node", "debian"):
        kernel, initramfs, rootfs = find_images(args.kernel, args.profile, args.compression)
    else:  # a kernel file: booted without initramfs unless one is given
        kernel, initramfs, rootfs = args.kernel, args.initramfs, None
    if args.rootfs:
        rootfs = args.rootfs
    elif args.runtime or rootfs is None:
        rootfs = image.ensure_rootfs(
            args.profile or "lean",
            args.compression or image.DEFAULT_COMPRESSION,
            runtime=args.runtime or image.DEFAULT_RUNTIME,
        )
    network = UserNetwork(ip="172.16.9.2", route="172.16.9.1")
    vm = QemuMachine(
        kernel, initramfs, rootfs, network=network, init=args.init,
        memory_mb=args.memory, vcpus=args.vcpus, machine=args.machine,
        cmdline=[*(args.cmdline or ()), *(["PYTHONPROFILEIMPORTTIME=1"] if args.importtime else [])],
    )  # fmt: skip
    result: dict = {"kernel": str(kernel), "initramfs": str(initramfs) if initramfs else None,
                    "rootfs": str(rootfs), "init": args.init or "/sbin/init", "memory_mb": args.memory,
                    "vcpus": args.vcpus, "machine": vm.qemu.machine, "cmdline": vm.kernel_cmdline()}  # fmt: skip
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
        "--throughput", action="store_true", help="one boot, then latency, requests/s and MB/s"
    )
    parser.add_argument(
        "--init",
        help="with --throughput: init program to boot from the image (kernel init=), default /sbin/init",
    )
    parser.add_argument("--against", action="append", metavar="DIR",
                        help="cold starts of another init beside ours: today's (init0.sh + init1.py) or a checkout")  # fmt: skip
    parser.add_argument(
        "--programs", default="hello,fastapi", help="cold starts: hello, fastapi (comma-separated)"
    )
    parser.add_argument("--floor", action="store_true",
                        help="cold starts: also boot the least any init could do (see above), alternating")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="cold starts per program and init (median)")
    parser.add_argument(
        "--calls", type=int, default=100, help="cold starts: calls after the first, for CPU per call"
    )
    parser.add_argument(
        "--kernel",
        default="node",
        help="node (default: the node-like kernel, microvm, no "
        "initramfs), debian (Debian's kernel and initramfs, q35), or a kernel file",
    )
    parser.add_argument("--initramfs", help="with a kernel file: its initramfs")
    parser.add_argument("--rootfs", help="the runtime image (default: the cached lean one)")
    parser.add_argument("--profile", choices=["lean", "full"], help="the image to build or find in the cache")
    parser.add_argument(
        "--runtime",
        type=runtime_list,
        help=f"the image's runtime (default {image.DEFAULT_RUNTIME}: the network's); cold starts take several, "
        "comma-separated (debian-12,debian-13): each runtime's figures under `runtimes`, one after the other",
    )
    parser.add_argument("--compression", choices=COMPRESSIONS, help="its squashfs compression")
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
    parser.add_argument("--dependencies", action="store_true",
                        help="cold starts importing fastapi's dependency set from /opt/packages: a volume built "
                             "the docs' way against `aleph-runtime packages`, and code packed with and without "
                             "bytecode")  # fmt: skip
    args = parser.parse_args()
    runtimes = args.runtime or [None]
    if args.dependencies:
        if runtimes not in ([None], ["debian-12"]):
            parser.error(
                "--dependencies: debian-12's image only (this machine's Python writes the code's bytecode)"
            )
        print(json.dumps(asyncio.run(dependency_starts(args)), indent=2))
        return
    if len(runtimes) > 1 and (args.throughput or args.rootfs):
        parser.error("several runtimes: cold starts only, from the runtimes' own images (no --rootfs)")
    if len(runtimes) == 1:
        args.runtime = runtimes[0]
        print(json.dumps(asyncio.run(throughput(args) if args.throughput else cold_starts(args)), indent=2))
        return
    result = {}
    for runtime in runtimes:
        args.runtime = runtime
        result[runtime] = asyncio.run(cold_starts(args))
    print(json.dumps({"runtimes": result}, indent=2))


def runtime_list(value: str) -> list[str]:
    """`--runtime`'s value: one runtime or several, comma-separated, each a known one."""
    names = [name for name in value.split(",") if name]
    for name in names:
        if name not in image.RUNTIMES:
            raise argparse.ArgumentTypeError(f"unknown runtime {name!r}: one of {', '.join(image.RUNTIMES)}")
    return names


if __name__ == "__main__":
    main()
