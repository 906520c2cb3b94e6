"""The init's entry point: choose the transport and the loop, serve, then halt the machine.

Everything imported here runs before the ready signal, at every boot: the command line
is read by hand (argparse and what it pulls in cost milliseconds under emulation), and
whatever only one path needs is imported on that path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from aleph_runtime.guest import linux, stdio
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.init import Init, install_signal_handlers, reap_orphans_forever
from aleph_runtime.guest.log import setup_logging
from aleph_runtime.guest.settings import Settings, SettingsError
from aleph_runtime.guest.settings import from_process as settings_from_process
from aleph_runtime.guest.transport import transport_for

logger = logging.getLogger("aleph_runtime.init")


USAGE = """usage: init1 [-h] [--uds PATH] [--vsock] [--root DIR]

aleph-runtime guest init

options:
  -h, --help   show this help message and exit
  --uds PATH   dev mode: serve on this Unix socket instead of vsock (or ALEPH_VSOCK_UDS)
  --vsock      use vsock even when not PID 1
  --root DIR   dev mode: keep the program's files (/opt, /data, /tmp...) under this directory
"""


class Arguments:
    """The parsed command line. Not a dataclass: @dataclass compiles the methods it
    generates when the module is imported, tens of milliseconds per class under emulation."""

    __slots__ = ("root", "uds", "vsock")

    def __init__(self) -> None:
        self.uds: str | None = None
        self.vsock = False
        self.root: str | None = None


class _BadCommandLine(Exception):
    pass


def _parse_arguments(argv: list[str] | None, pid1: bool) -> tuple[Arguments, list[str]]:
    """The options (`--uds PATH`, `--uds=PATH`, `--vsock`, `--root DIR`), and (as PID 1) the
    words ignored. Read by hand: argparse costs milliseconds at every boot.

    As PID 1 the arguments are the kernel's: the boot arguments without `=` it did not
    take itself, e.g. a node's `nomodule` on a kernel without modules. PID 1 exiting
    panics the kernel: so PID 1 ignores them (and `--help`), and keeps its defaults when
    even the words it knows are malformed. Otherwise: usage and exit 2.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    arguments, ignored = Arguments(), []
    remaining = list(words)
    try:
        while remaining:
            word = remaining.pop(0)
            name, equals, value = word.partition("=")
            if word in ("-h", "--help") and not pid1:
                sys.stdout.write(USAGE)
                sys.exit(0)
            elif name in ("--uds", "--root"):
                if not equals:
                    if not remaining:
                        raise _BadCommandLine(f"argument {name}: expected one argument")
                    value = remaining.pop(0)
                setattr(arguments, name[2:], value)
            elif word == "--vsock":
                arguments.vsock = True
            elif pid1:
                ignored.append(word)
            else:
                raise _BadCommandLine(f"unrecognized arguments: {word}")
    except _BadCommandLine as error:
        if pid1:
            return Arguments(), words
        sys.stderr.write(USAGE.split("\n\n", 1)[0] + f"\ninit1: error: {error}\n")
        sys.exit(2)
    return arguments, ignored


def _new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """uvloop when present (about half the CPU per call), with the standard library's
    subprocesses (guest/event_loop.py says why); `asyncio` forces the stdlib's loop."""
    if name != "asyncio":
        try:
            from aleph_runtime.guest import event_loop
        except ImportError:
            pass
        else:
            return event_loop.new_event_loop()
    return asyncio.new_event_loop()


async def _serve(init: Init, reap: bool) -> None:
    install_signal_handlers(init)
    reaper = asyncio.get_running_loop().create_task(reap_orphans_forever()) if reap else None
    try:
        await init.serve()
    finally:
        if reaper is not None:
            reaper.cancel()
        init.transport.close()


def _read_settings(arguments: Arguments) -> Settings:
    try:
        return settings_from_process(uds=arguments.uds, root=arguments.root, force_vsock=arguments.vsock)
    except SettingsError as error:
        # PID 1 must come up whatever its environment holds: the defaults, said aloud.
        print(f"init1: {error}; using the defaults", file=sys.stderr)
        return Settings(uds=arguments.uds, root=arguments.root, force_vsock=arguments.vsock)


def main(argv: list[str] | None = None) -> None:
    pid1 = os.getpid() == 1
    arguments, ignored = _parse_arguments(argv, pid1)
    # Before anything can print: descriptors 0-2 filled, and the init's own one to log through.
    log_fd = stdio.setup()
    settings = _read_settings(arguments)
    setup_logging(settings.debug, log_fd)
    if ignored:
        logger.info("Ignoring arguments (the kernel's boot arguments it did not take): %s", " ".join(ignored))

    if not pid1 and not settings.uds and not settings.force_vsock:
        # An ordinary process talking vsock would reach whatever host this machine runs
        # under (a workstation can itself be a VM): dev mode must be asked for explicitly.
        logger.error("Not PID 1: give --uds PATH (or ALEPH_VSOCK_UDS) for dev mode, or --vsock to insist")
        sys.exit(2)
    transport = transport_for(settings.uds)
    # As PID 1 the init owns a system (a VM, or a test's private namespaces) and
    # configures it; as an ordinary process it keeps to a private directory.
    root = settings.root
    if root is None:
        if pid1:
            root = "/"
        else:
            import tempfile

            root = tempfile.mkdtemp(prefix="aleph-init-")
    init = Init(transport, Paths(Path(root)), system=pid1, settings=settings)
    if not pid1:
        try:
            linux.set_child_subreaper()
        except OSError as error:
            logger.warning("Could not become the program's subreaper: %s", error)
    logger.info("aleph-runtime init starting (PID %d, %s, root %s)", os.getpid(), transport.description, root)

    loop = _new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_log_loop_error)
    logger.info("Event loop: %s", type(loop).__module__.split(".")[0])
    status = 0
    try:
        loop.run_until_complete(_serve(init, reap=True))
    except BaseException:
        # Nothing may kill PID 1 silently: log, then go down cleanly below; a crash
        # must not look like a clean stop to whoever started us (dev mode, tests).
        logger.exception("The init's main loop failed")
        status = 1
    if pid1:
        _power_off()
    sys.exit(status)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """An error no task handled: log it on one line and keep serving."""
    error = context.get("exception")
    logger.error("Unhandled error in the event loop: %s", context.get("message"), exc_info=error)


def _power_off() -> None:
    """Sync and reboot: Firecracker and `qemu -no-reboot` exit; in a PID namespace it ends the namespace."""
    logging.shutdown()
    os.sync()
    try:
        linux.reboot(linux.RB_AUTOBOOT)
    except OSError as error:
        print(f"init1: reboot failed: {error}", file=sys.stderr)
