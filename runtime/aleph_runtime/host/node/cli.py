"""`aleph-runtime run [PATH]`: run one program locally, as a compute node runs it.

    aleph-runtime run                          # the bundled FastAPI example
    aleph-runtime run ./my_app                 # a directory (main.py with `app`, or run.sh)
    aleph-runtime run app.py --mode dev        # in a container of the image, no VM
    aleph-runtime run ./my_app --volume /opt/lib=./lib --volume mount=/data,persistent=db
    aleph-runtime run ./my_app --mode dev --watch --env-file .env   # restart on edits
    aleph-runtime run ./my_app --mode dev --debug   # debugpy in the program, on 127.0.0.1:5678
    aleph-runtime event --content '{"hello": "world"}'            # an aleph message to the program
    aleph-runtime packages requirements.txt -o packages.squashfs  # the /opt/packages volume to publish
    aleph-runtime build ./my_app -o dist       # code.zip (with bytecode) and packages.squashfs to publish

Progress goes to stderr, the URL to stdout. Exit status: 0 after a clean stop
(Ctrl-C / SIGTERM), 1 when the node could not run (boot failure, a machine that could
not be started again), 2 for a usage error (bad PATH, option or volume), 3 when the
program itself failed to start (its import or lifespan startup raised, at the first
start or at 3 restarts in a row: the init's error and traceback are shown). A crashed
program is replaced at the next request, as a node does.
Runnable as `python -m aleph_runtime.host.node.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

# The protocol's names and the image's (stdlib only): the rest is imported when a command
# runs, so --help stays fast.
from aleph_runtime import __version__
from aleph_runtime.host.node.output import OutputFilter, Terminal, log_tail, say
from aleph_runtime.host.vmm.image import COMPRESSIONS, DEFAULT_RUNTIME, KERNELS, RUNTIMES
from aleph_runtime.protocol import INTERFACE_NAMES, Encoding, Interface

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PROGRAM = 0, 1, 2, 3
#: `--debug` without a port: debugpy's (and VS Code's attach configuration's) default.
DEFAULT_DEBUG_PORT = 5678


def exit_status(error: BaseException) -> int:
    """The command's exit status for the error that ended it, the one table for every
    command: 3 the program failed to start, 2 a bad PATH, option or message (the user's
    to fix), 1 anything else (this machine lacks something, the init or VM failed)."""
    from aleph_runtime.host.errors import NodeError, SetupError
    from aleph_runtime.host.supervisor import ConfigurationRejected

    if isinstance(error, ConfigurationRejected):
        return EXIT_PROGRAM
    if isinstance(error, NodeError) and not isinstance(error, SetupError):
        return EXIT_USAGE
    return EXIT_FAILED


EPILOG = """\
how PATH is read (options override):
  a directory          packed as zip (--encoding tar|squashfs to change); entrypoint: main.py -> main:app,
                       else an executable run.sh|run|start.sh|start|entrypoint.sh, else app.py -> app:app,
                       else the only .py file -> <name>:app (inside the only top-level directory if that
                       is all there is)
  a .zip / tar archive the same rules on its listing; encoding zip / tar
  a squashfs image     encoding squashfs: given as the code drive (/opt/code); same rules on its listing
  a .py file           plain code, entrypoint <file name>:app
  any other file       plain code run as an executable
  interface            asgi when the entrypoint has a colon, else executable (the supervisor's rule)

volumes (--volume, repeatable; drives follow in the order given):
  MOUNT=SOURCE                              immutable: a directory (packed as squashfs on the fly)
  mount=MOUNT,source=SOURCE                 or a squashfs image
  mount=MOUNT,persistent=NAME[,size=256M]   persistent, kept in the state directory across runs
  In dev mode the init runs in private namespaces (root, or user namespaces) where each volume is
  bind-mounted at MOUNT, as in a VM. Without them, a volume is visible at <init root>/MOUNT, and an
  --env value naming MOUNT (or a path under it) is rewritten to that place.

after a crash (no answer, the init or VM gone) the next request starts a new machine (same volumes,
cache and key); after 3 failed starts in a row the command stops with exit status 3.

without PATH: the bundled FastAPI example, with
  --volume mount=/var/lib/example,persistent=example --env EXAMPLE_VOLUME=/var/lib/example
"""


def _add_runtime_options(parser: argparse.ArgumentParser, profile: bool = True) -> None:
    """--runtime (and --profile), as `run`, `packages` and `build` have them."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help=f"the runtime (its image and Python): {DEFAULT_RUNTIME} (default: the network's, Python 3.11) or "
        "debian-13 (Python 3.13, ahead of it); built through the cache on first use",
    )
    if profile:
        parser.add_argument(
            "--profile",
            choices=("lean", "full"),
            help="the runtime image: lean (default) or full (+ node, docker, build tools: today's "
            "official image); built through the cache on first use",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aleph-runtime", description="Run aleph.im programs locally, as a compute node runs them."
    )
    parser.add_argument("--version", action="version", version=f"aleph-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run",
        help="run a program (default: the bundled example) and serve it over HTTP",
        description="Run a program locally: a private Redis, the guest API, the VM (or the init as a local "
        "process) and an HTTP front on 127.0.0.1, as a compute node runs it. Ctrl-C halts it cleanly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "path", nargs="?", metavar="PATH", help="the program: a .py file, directory, zip, tar or squashfs"
    )
    run.add_argument(
        "--entrypoint", help="`module:app` for Python ASGI, or the executable's path in the code"
    )
    run.add_argument("--encoding", choices=list(Encoding), help="how the code is sent")
    run.add_argument("--interface", choices=list(INTERFACE_NAMES), help="default: from the entrypoint")
    run.add_argument(
        "--volume", "-v", action="append", default=[], metavar="SPEC", help="a volume (see below)"
    )
    run.add_argument(
        "--env", "-e", action="append", default=[], metavar="KEY=VALUE", help="a program variable"
    )
    run.add_argument(
        "--memory",
        type=int,
        metavar="MiB",
        help="the VM's memory, or the dev container's limit (default 512)",
    )
    run.add_argument("--vcpus", type=int, help="the VM's vCPUs, or the dev container's CPU quota (default 1)")
    run.add_argument(
        "--profile",
        choices=("lean", "full"),
        help="the runtime image: lean (default) or full (+ node, docker, build tools: today's "
        "official image); built through the cache on first use (dev mode too: its root)",
    )
    _add_runtime_options(run, profile=False)
    run.add_argument(
        "--packages",
        type=Path,
        metavar="FILE",
        help="a packages volume (`aleph-runtime packages`) to mount at /opt/packages; by default one is built "
        "(cached) from PATH's requirements.txt or pyproject.toml dependencies",
    )
    run.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        help="the runtime image's squashfs compression (lz4 by default: the fastest to read; vm only)",
    )
    run.add_argument(
        "--seconds", type=float, default=30, help="each call's time limit (resources.seconds; 30)"
    )
    run.add_argument(
        "--mode",
        choices=("vm", "dev"),
        default="vm",
        help="vm: the runtime image in QEMU (default); dev: a container of the same image, no VM",
    )
    run.add_argument(
        "--kernel",
        choices=KERNELS,
        help="vm mode: node (default), the kernel built as a "
        "node's (microvm, virtio-mmio, no initramfs); debian, Debian's kernel and initramfs on q35",
    )
    run.add_argument("--host", default="127.0.0.1", help="the HTTP front's address (127.0.0.1)")
    run.add_argument(
        "--port",
        "-p",
        type=int,
        help="the HTTP front's port (8080; 0 for any free one)",
    )
    run.add_argument(
        "--debug",
        nargs="?",
        const=DEFAULT_DEBUG_PORT,
        type=int,
        metavar="PORT",
        help=f"debugpy in the program's process, on 127.0.0.1:PORT ({DEFAULT_DEBUG_PORT}): attach "
        "VS Code or any Debug Adapter Protocol client (README)",
    )
    run.add_argument(
        "--debug-wait",
        action="store_true",
        help="with --debug: the program starts (is imported) once a debugger has attached",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        help="signing key, Redis data, persistent volumes, logs "
        "(default /var/lib/aleph-runtime as root, else ~/.local/state/aleph-runtime)",
    )
    run.add_argument(
        "--api-server",
        help="the aleph API server the guest API proxies to (default https://official.aleph.cloud)",
    )
    run.add_argument("--redis-url", help="use this Redis for the cache instead of starting one")
    run.add_argument(
        "--vm-hash", help="the program's item hash (default: derived from PATH, stable across runs)"
    )
    run.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="program variables from a dotenv file (KEY=VALUE lines, # comments, quotes); --env wins over it",
    )
    run.add_argument(
        "--watch",
        action="store_true",
        help="restart the program when one of its files changes "
        "(re-packed; the image, kernel, volumes, cache and key are kept)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="everything: the VM's console (kernel included) or the init's whole log, and the host's logs",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no access-log line per request")

    packages = commands.add_parser(
        "packages",
        help="build a program's Python dependencies as the immutable volume mounted at /opt/packages",
        description="Install SRC's requirements with the runtime image's own Python and pip (inside the "
        "image, with this machine's network and pip settings), write their bytecode for the init's "
        "python3 -OO, and pack them as a reproducible squashfs to publish as an immutable volume.",
    )
    packages.add_argument(
        "source", metavar="SRC", help="a requirements.txt, a pyproject.toml, or a directory holding one"
    )
    packages.add_argument(
        "--output", "-o", required=True, type=Path, metavar="FILE", help="the squashfs to write"
    )
    _add_runtime_options(packages)
    packages.add_argument(
        "--find-links", action="append", default=[], type=Path, metavar="DIR",
        help="also look for wheels in this local directory (repeatable)",
    )  # fmt: skip
    packages.add_argument("--no-index", action="store_true", help="only --find-links: no package index")

    build = commands.add_parser(
        "build",
        help="write a program directory's code (with bytecode) and packages volume as files to publish",
        description="Pack PATH's code as `run` does (zip or squashfs, with the runtime's bytecode) and build "
        "its packages volume from its requirements.txt or pyproject.toml, into DIR; print aleph-client's "
        "command lines publishing both.",
    )
    build.add_argument("path", metavar="PATH", help="the program's directory")
    build.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="where the files go")
    build.add_argument("--encoding", choices=("zip", "squashfs"), help="the code's encoding (zip)")
    _add_runtime_options(build)

    event = commands.add_parser(
        "event",
        help="post an aleph message to a running program's /control/event and print its answer",
        description="Post an aleph message (a JSON file, `-` for stdin, or one built from --type, --channel "
        "and --content) to a running `aleph-runtime run`, as a node delivers the messages a program "
        "subscribes to; print the program's answer (JSON) on stdout.",
    )
    event.add_argument(
        "file", nargs="?", metavar="FILE|-", help="the message as JSON (default: built from options)"
    )
    event.add_argument(
        "--url", default="http://127.0.0.1:8080/", help="the running node (http://127.0.0.1:8080/)"
    )
    event.add_argument("--type", default="POST", help="the built message's type (POST)")
    event.add_argument("--channel", default="TEST", help="the built message's channel (TEST)")
    event.add_argument("--content", default="{}", metavar="JSON", help="the built message's content ({})")
    event.add_argument("--timeout", type=float, default=60, help="how long to wait for the answer (60 s)")
    return parser


def _options(args: argparse.Namespace):
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.inference import infer_program
    from aleph_runtime.host.node.local import (
        DEFAULT_EXAMPLE,
        DEFAULT_EXAMPLE_ENV,
        DEFAULT_EXAMPLE_VOLUME,
    )
    from aleph_runtime.host.node.provision import NodeOptions, default_state_dir
    from aleph_runtime.host.node.volumes import parse_env, parse_env_file, parse_volume

    volumes = [parse_volume(text) for text in args.volume]
    env: dict[str, str] = {}
    for env_file in args.env_file:
        env.update(parse_env_file(env_file))
    env.update(parse_env(args.env))
    if args.path is None:
        if not DEFAULT_EXAMPLE.is_dir():
            raise NodeError(f"no PATH given and the bundled example is not at {DEFAULT_EXAMPLE}")
        say(f"no PATH: running the bundled example, {DEFAULT_EXAMPLE}")
        program = infer_program(DEFAULT_EXAMPLE, args.entrypoint, args.encoding, args.interface)
        if not volumes:
            volumes = [parse_volume(DEFAULT_EXAMPLE_VOLUME)]
        env = {**DEFAULT_EXAMPLE_ENV, **env}
    else:
        program = infer_program(args.path, args.entrypoint, args.encoding, args.interface)
    if args.mode == "dev" and args.compression is not None:
        say("--compression chooses how the VM reads its image: dev mode unpacks the image once")
    if args.mode == "dev" and args.kernel is not None:
        say("--kernel applies to a VM: dev mode runs on this machine's kernel")
    if args.vm_hash is not None and not (
        len(args.vm_hash) == 64 and all(c in "0123456789abcdef" for c in args.vm_hash)
    ):
        raise NodeError("--vm-hash must be 64 lower-case hexadecimal digits")
    if args.debug is not None and not 0 < args.debug < 65536:
        raise NodeError(f"--debug={args.debug} is not a TCP port (1 to 65535)")
    port = args.port
    return NodeOptions(
        program=program, volumes=volumes, env=env, mode=args.mode,
        memory_mb=args.memory or 512, vcpus=args.vcpus or 1, seconds=args.seconds,
        host=args.host, port=8080 if port is None else port, state_dir=args.state_dir or default_state_dir(),
        api_server=args.api_server, redis_url=args.redis_url, vm_hash=args.vm_hash, kernel=args.kernel,
        profile=args.profile, compression=args.compression, runtime=args.runtime, packages=args.packages,
        debug_port=args.debug if args.debug is not None or not args.debug_wait else DEFAULT_DEBUG_PORT,
        debug_wait=args.debug_wait,
    )  # fmt: skip


async def _watch_program(node, initial) -> None:
    """`--watch`: re-pack and restart the program after each burst of edits."""
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.watch import watch

    async def restart(changes: list[str]) -> None:
        shown = ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
        try:
            await asyncio.to_thread(node.repack)
        except (NodeError, OSError, subprocess.CalledProcessError) as error:
            say(f"{shown}: cannot re-pack the program: {error}")
            return
        await node.restart(shown)  # says how long it took

    await watch(node.options.program.source, restart, initial=initial)


def report_failed_start(error: BaseException, what: str, log_path: Path, verbose: bool) -> int:
    """Say why the machine or program did not start; the command's exit status."""
    from aleph_runtime.host.supervisor import ConfigurationRejected

    if isinstance(error, ConfigurationRejected):
        say(f"the program failed to start: {error.error}")
        if error.traceback:
            print(textwrap.indent(error.traceback.rstrip(), "  "), file=sys.stderr)
        if not verbose:
            say(f"the {what}'s log is {log_path}")
    else:
        say(f"could not start: {type(error).__name__}: {error}")
        if not verbose and log_tail(log_path) and "console:" not in str(error):
            say(f"last lines of the {what}'s log ({log_path}):")
            print(textwrap.indent(log_tail(log_path), "  "), file=sys.stderr)
    return exit_status(error)


async def run_node(node, terminal: Terminal, verbose: bool, watch_from: dict | None = None) -> int:
    """Start the node, print its URL, run until Ctrl-C/SIGTERM or until the node gives up; stop it.
    `terminal`: the node's callbacks, which now follow its log; `watch_from`: with --watch, the
    program's files as they were before it was packed."""
    from aleph_runtime.host.node.local import MAX_FAILED_STARTS
    from aleph_runtime.host.services.redis_server import RedisServerError
    from aleph_runtime.host.supervisor import ConfigurationRejected, InitError

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    stopping = False
    signals_seen = 0
    kills: set[asyncio.Future] = set()  # held until done: the loop keeps only weak references

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            say(f"{signal.Signals(signum).name}: halting the program")
            stop_requested.set()
        elif stopping and node.machine is not None:
            say("still halting; killing the machine")
            kill = asyncio.ensure_future(node.machine.kill())
            kills.add(kill)
            kill.add_done_callback(kills.discard)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    terminal.follow(node.log_path)
    what = "VM" if node.options.mode == "vm" else "init"
    status = EXIT_OK
    try:
        starting = asyncio.create_task(node.start())
        interrupted = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({starting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            return EXIT_OK
        interrupted.cancel()
        try:
            url = starting.result()
        except (
            ConfigurationRejected,
            InitError,
            RedisServerError,
            OSError,
            TimeoutError,
            RuntimeError,
        ) as error:
            return report_failed_start(error, what, node.log_path, verbose)
        hash_url = f"{url}vm/{node.vm_hash}/"
        print(f"Program running at {url}  (also {hash_url}); Ctrl-C to stop", flush=True)
        say(node.runtime_report())
        say(node.startup_report())
        say(f"events: POST an aleph message as JSON to {url}control/event (or `aleph-runtime event`)")

        watching = None
        if watch_from is not None:
            node.wait_for_edits = True
            watching = asyncio.create_task(_watch_program(node, watch_from))
            say(f"watching {node.options.program.source} for changes")
        gave_up = asyncio.create_task(node.wait())
        interrupted = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({gave_up, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if gave_up.done():
            interrupted.cancel()
            error = gave_up.result()
            say(f"the program failed to start {MAX_FAILED_STARTS} times in a row: giving up")
            status = report_failed_start(error, what, node.log_path, verbose=True)
        else:
            gave_up.cancel()
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    finally:
        stopping = True
        try:
            await node.stop()
        except Exception as error:  # noqa: BLE001 - reported; the rest of the cleanup goes on
            say(f"error while stopping: {type(error).__name__}: {error}")
            status = EXIT_FAILED
        await terminal.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if status == EXIT_OK:
        say("stopped")
    return status


def run(args: argparse.Namespace) -> int:
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.local import LocalNode, check_port_free
    from aleph_runtime.host.node.watch import snapshot

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="aleph-runtime: %(name)s: %(message)s"
    )
    try:
        options = _options(args)
        say(f"program {options.program.describe()} ({options.program.why})")
        check_port_free(options.host, options.port)
        if options.debug_port is not None and options.program.interface is Interface.EXECUTABLE:
            say(
                "--debug: an executable starts debugpy itself, from /opt/aleph-debug on $ALEPH_DEBUG_PORT (README)"
            )
        if options.debug_port is not None:
            check_port_free("127.0.0.1", options.debug_port, "--debug's port: give another (--debug=PORT)")
        terminal = Terminal(None if args.verbose else OutputFilter(options.mode == "vm"))
        node = LocalNode(
            options, progress=terminal.progress, access_log=None if args.quiet else terminal.access,
            on_boot=terminal.on_boot,
        )  # fmt: skip
        # Before packing: an edit made while the machine starts is not missed.
        watch_from = snapshot(options.program.source) if args.watch else None
        node.prepare()
    except NodeError as error:  # SetupError included
        say(f"error: {error}")
        return exit_status(error)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - a build that failed: its output was shown
        say(f"error while preparing: {type(error).__name__}: {error}")
        return exit_status(error)
    try:
        return asyncio.run(run_node(node, terminal, args.verbose, watch_from))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        node.cleanup()
        return EXIT_OK


def build_event(args: argparse.Namespace) -> dict:
    """The message to post: the FILE's JSON, or one built from --type, --channel, --content
    in the shape of an aleph message (inline content, its hash as item_hash)."""
    import json

    from aleph_runtime.host.errors import NodeError

    if args.file is not None:
        try:
            text = sys.stdin.read(MAX_EVENT_BYTES + 1) if args.file == "-" else Path(args.file).read_text()
        except OSError as error:
            raise NodeError(f"cannot read {args.file}: {error.strerror or error}") from None
        if len(text) > MAX_EVENT_BYTES:
            raise NodeError(f"{args.file}: larger than {MAX_EVENT_BYTES} bytes")
        try:
            message = json.loads(text)
        except ValueError as error:
            raise NodeError(f"{args.file} is not JSON: {error}") from None
        if not isinstance(message, dict):
            raise NodeError(f"{args.file}: an aleph message is a JSON object")
        return message
    try:
        content = json.loads(args.content)
    except ValueError as error:
        raise NodeError(f"--content is not JSON: {error}") from None
    return aleph_message(content, args.type, args.channel)


def aleph_message(content, message_type: str = "POST", channel: str = "TEST") -> dict:
    """An aleph message in the network's shape carrying `content` inline, its hash as
    item_hash (a dict content gets the zero address and the time, as a real one has);
    also what the pytest fixture's `event()` sends."""
    import hashlib
    import json
    import time

    now = time.time()
    if isinstance(content, dict):
        content = {"address": "0x" + "0" * 40, "time": now, **content}
    item_content = json.dumps(content, separators=(",", ":"))
    return {
        "chain": "ETH", "sender": "0x" + "0" * 40, "type": message_type, "channel": channel,
        "item_type": "inline", "item_content": item_content,
        "item_hash": hashlib.sha256(item_content.encode()).hexdigest(), "time": now,
        "content": content, "signature": "", "confirmed": False,
    }  # fmt: skip


MAX_EVENT_BYTES = 1 << 20


async def send_event(url: str, message: dict, timeout: float) -> int:
    """`aleph-runtime event`: post the message to a running node's /control/event; print the answer."""
    import json

    import aiohttp

    target = url.rstrip("/") + "/control/event"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(target, json=message) as response,
        ):
            body = await response.content.read(16 << 20)
            status = response.status
    except (aiohttp.ClientError, OSError) as error:
        say(f"cannot reach {target}: {error} (is `aleph-runtime run` running there?)")
        return EXIT_FAILED
    except TimeoutError:
        say(f"no answer from {target} within {timeout:g} s")
        return EXIT_FAILED
    text = body.decode(errors="replace")
    if status != 200:
        say(f"{target} answered {status}:")
        print(text.rstrip(), file=sys.stderr)
        return EXIT_FAILED
    try:
        print(json.dumps(json.loads(text), indent=2))
    except ValueError:
        print(text.rstrip())
    return EXIT_OK


def event(args: argparse.Namespace) -> int:
    from aleph_runtime.host.errors import NodeError

    try:
        message = build_event(args)
    except NodeError as error:
        say(f"error: {error}")
        return exit_status(error)
    return asyncio.run(send_event(args.url, message, args.timeout))


def build_packages_command(args: argparse.Namespace) -> int:
    """`aleph-runtime packages SRC -o FILE`: build the volume, say what it is and how to publish it."""
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.packages import build_packages, publish_lines, read_requirements

    try:
        requirements = read_requirements(Path(args.source))
        output = args.output.expanduser().resolve()
        volume = build_packages(
            requirements, output, runtime=args.runtime or DEFAULT_RUNTIME, profile=args.profile, find_links=args.find_links,
            no_index=args.no_index, progress=say,
        )  # fmt: skip
    except NodeError as error:
        say(f"error: {error}")
        return exit_status(error)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - a failed image build or mksquashfs: one line
        say(f"error: {type(error).__name__}: {error}")
        return EXIT_FAILED
    for warning in volume.warnings:
        say(f"warning: {warning}")
    print(f"{volume.path}: {volume.size / 2**20:.1f} MiB, sha256 {volume.sha256}")
    print(f"{len(volume.distributions)} distributions for {volume.runtime} ({volume.profile}): "
          + ", ".join(f"{name} {version}" for name, version in volume.distributions.items()))  # fmt: skip
    print("publish it as the program's immutable volume at /opt/packages (aleph-client):")
    for line in publish_lines(str(volume.path)):
        print(f"  {line}")
    return EXIT_OK


def build_command(args: argparse.Namespace) -> int:
    """`aleph-runtime build PATH -o DIR`: the files to publish, and how."""
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.packages import build_for_publishing

    try:
        lines = build_for_publishing(
            Path(args.path), args.output.expanduser().resolve(), encoding=args.encoding, runtime=args.runtime or DEFAULT_RUNTIME,
            profile=args.profile, progress=say,
        )  # fmt: skip
    except NodeError as error:
        say(f"error: {error}")
        return exit_status(error)
    except Exception as error:  # noqa: BLE001 - a failed image build or mksquashfs: one line
        say(f"error: {type(error).__name__}: {error}")
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "packages":
        return build_packages_command(args)
    if args.command == "build":
        return build_command(args)
    if args.command == "event":
        return event(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
