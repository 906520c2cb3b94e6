"""`aleph-runtime run [PATH]`: run one program locally, as a compute node runs it.

    aleph-runtime run                          # the bundled FastAPI example
    aleph-runtime run ./my_app                 # a directory (main.py with `app`, or run.sh)
    aleph-runtime run app.py --mode dev        # the init as a local process, no VM
    aleph-runtime run ./my_app --volume /opt/lib=./lib --volume mount=/data,persistent=db

Progress goes to stderr, the URL to stdout. Exit status: 0 after a clean stop
(Ctrl-C / SIGTERM), 1 when the node could not run (boot failure, a machine that died),
2 for a usage error (bad PATH, option or volume), 3 when the program itself failed to
start (its import or lifespan startup raised: the init's error and traceback are shown).
Runnable as `python -m aleph_runtime.host.node.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import textwrap
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PROGRAM = 0, 1, 2, 3

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
  In dev mode (no VM, nothing is mounted) a volume is made visible at <init root>/MOUNT, and an
  --env value naming MOUNT (or a path under it) is rewritten to that place.

without PATH: the bundled FastAPI example, with
  --volume mount=/var/lib/example,persistent=example --env EXAMPLE_VOLUME=/var/lib/example
"""


def say(message: str) -> None:
    print(f"aleph-runtime: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    from aleph_runtime import __version__

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
    run.add_argument("path", nargs="?", metavar="PATH", help="the program: a .py file, directory, zip, tar or squashfs")
    run.add_argument("--entrypoint", help="`module:app` for Python ASGI, or the executable's path in the code")
    run.add_argument("--encoding", choices=("plain", "zip", "tar", "squashfs"), help="how the code is sent")
    run.add_argument("--interface", choices=("asgi", "executable", "binary"), help="default: from the entrypoint")
    run.add_argument("--volume", "-v", action="append", default=[], metavar="SPEC", help="a volume (see below)")
    run.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE", help="a program variable")
    run.add_argument("--memory", type=int, metavar="MiB", help="the VM's memory (default 512; vm mode only)")
    run.add_argument("--vcpus", type=int, help="the VM's vCPUs (default 1; vm mode only)")
    run.add_argument("--profile", choices=("lean", "full"),
                     help="the runtime image: lean (default) or full (+ node, docker, build tools: today's "
                          "official image); built through the cache on first use (vm mode only)")
    run.add_argument("--compression", choices=("gzip", "zstd"),
                     help="the runtime image's squashfs compression (gzip: what nodes' kernels read; vm only)")
    run.add_argument("--seconds", type=float, default=30, help="each call's time limit (resources.seconds; 30)")
    run.add_argument("--mode", choices=("vm", "dev"), default="vm",
                     help="vm: the runtime image in QEMU (default); dev: the init as a local process, no VM")
    run.add_argument("--host", default="127.0.0.1", help="the HTTP front's address (127.0.0.1)")
    run.add_argument("--port", "-p", type=int, help="the HTTP front's port (8080, or 8081 for an executable in dev "
                     "mode, which itself listens on 8080; 0 for any free one)")
    run.add_argument("--state-dir", type=Path, help="signing key, Redis data, persistent volumes, logs "
                     "(default /var/lib/aleph-runtime as root, else ~/.local/state/aleph-runtime)")
    run.add_argument("--api-server", help="the aleph API server the guest API proxies to "
                     "(default https://official.aleph.cloud)")
    run.add_argument("--redis-url", help="use this Redis for the cache instead of starting one")
    run.add_argument("--vm-hash", help="the program's item hash (default: derived from PATH, stable across runs)")
    run.add_argument("--verbose", action="store_true", help="stream the VM's console (or the init's log)")
    return parser


class LogTail:
    """Streams a growing log file (the VM console, the init's log) to stderr."""

    def __init__(self, path: Path, out=None):
        self.path = path
        self.out = out or sys.stderr
        self.offset = 0
        self._task: asyncio.Task | None = None

    def start(self) -> LogTail:
        self._task = asyncio.create_task(self._follow())
        return self

    def flush(self) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.out.write(data.decode(errors="replace"))
            self.out.flush()

    async def _follow(self) -> None:
        while True:
            self.flush()
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _options(args: argparse.Namespace):
    from aleph_runtime.host.errors import NodeError
    from aleph_runtime.host.node.inference import infer_program
    from aleph_runtime.host.node.local import (
        DEFAULT_EXAMPLE,
        DEFAULT_EXAMPLE_ENV,
        DEFAULT_EXAMPLE_VOLUME,
        NodeOptions,
        check_port_free,
        default_state_dir,
    )
    from aleph_runtime.host.node.volumes import parse_env, parse_volume

    volumes = [parse_volume(text) for text in args.volume]
    env = parse_env(args.env)
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
    if args.mode == "dev" and (args.memory is not None or args.vcpus is not None):
        say("--memory and --vcpus apply to a VM: dev mode runs the init as a local process, without limits")
    if args.mode == "dev" and (args.profile is not None or args.compression is not None):
        say("--profile and --compression choose the VM's image: dev mode runs with this machine's programs")
    if args.vm_hash is not None and not (len(args.vm_hash) == 64 and all(c in "0123456789abcdef" for c in args.vm_hash)):
        raise NodeError("--vm-hash must be 64 lower-case hexadecimal digits")
    port = args.port
    executable_on_host = args.mode == "dev" and program.interface == "executable"
    if executable_on_host:
        # The init's executables listen on 127.0.0.1:8080; in dev mode that is this machine's.
        if port == 8080:
            raise NodeError("in dev mode an executable program listens on this machine's 127.0.0.1:8080 itself: "
                            "give the front another --port")
        check_port_free("127.0.0.1", 8080, "an executable program in dev mode listens on 127.0.0.1:8080")
        if port is None:
            port = 8081
            say("the front listens on 8081: in dev mode the executable program itself listens on 127.0.0.1:8080")
    return NodeOptions(
        program=program, volumes=volumes, env=env, mode=args.mode,
        memory_mb=args.memory or 512, vcpus=args.vcpus or 1, seconds=args.seconds,
        host=args.host, port=8080 if port is None else port, state_dir=args.state_dir or default_state_dir(),
        api_server=args.api_server, redis_url=args.redis_url, vm_hash=args.vm_hash,
        profile=args.profile, compression=args.compression,
    )  # fmt: skip


async def serve(node, verbose: bool) -> int:
    """Start the node, print its URL, run until Ctrl-C/SIGTERM or until the machine dies; stop it."""
    from aleph_runtime.host.services.redis_server import RedisServerError
    from aleph_runtime.host.supervisor import ConfigurationRejected, InitError

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    stopping = False
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            say(f"{signal.Signals(signum).name}: halting the program")
            stop_requested.set()
        elif stopping and node.machine is not None:
            say("still halting; killing the machine")
            asyncio.ensure_future(node.machine.kill())

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    tail = LogTail(node.log_path).start() if verbose else None
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
        except ConfigurationRejected as error:
            say(f"the program failed to start: {error.error}")
            if error.traceback:
                print(textwrap.indent(error.traceback.rstrip(), "  "), file=sys.stderr)
            if not verbose:
                say(f"the {what}'s log is {node.log_path}")
            return EXIT_PROGRAM
        except (InitError, RedisServerError, OSError, TimeoutError, RuntimeError) as error:
            say(f"could not start: {type(error).__name__}: {error}")
            if not verbose and log_tail(node.log_path) and "console:" not in str(error):
                say(f"last lines of the {what}'s log ({node.log_path}):")
                print(textwrap.indent(log_tail(node.log_path), "  "), file=sys.stderr)
            return EXIT_FAILED
        hash_url = f"{url}vm/{node.vm_hash}/"
        print(f"Program running at {url}  (also {hash_url}); Ctrl-C to stop", flush=True)
        say(f"events: POST an aleph message as JSON to {url}control/event")

        died = asyncio.create_task(node.wait())
        interrupted = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({died, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if died.done():
            interrupted.cancel()
            say(f"the {what} exited on its own (status {died.result()})")
            if not verbose and log_tail(node.log_path):
                print(textwrap.indent(log_tail(node.log_path), "  "), file=sys.stderr)
            status = EXIT_FAILED
        else:
            died.cancel()
    finally:
        stopping = True
        try:
            await node.stop()
        except Exception as error:  # noqa: BLE001 - reported; the rest of the cleanup goes on
            say(f"error while stopping: {type(error).__name__}: {error}")
            status = EXIT_FAILED
        if tail is not None:
            await tail.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if status == EXIT_OK:
        say("stopped")
    return status


def run(args: argparse.Namespace) -> int:
    from aleph_runtime.host.errors import NodeError, SetupError
    from aleph_runtime.host.node.local import LocalNode, check_port_free

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="aleph-runtime: %(name)s: %(message)s"
    )
    try:
        options = _options(args)
        say(f"program {options.program.describe()} ({options.program.why})")
        check_port_free(options.host, options.port)
        node = LocalNode(options, progress=say)
        node.prepare()
    except SetupError as error:
        say(f"error: {error}")
        return EXIT_FAILED
    except NodeError as error:
        say(f"error: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as error:  # a build that failed: its output was shown
        say(f"error while preparing: {type(error).__name__}: {error}")
        return EXIT_FAILED
    try:
        return asyncio.run(serve(node, args.verbose))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        node.cleanup()
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
