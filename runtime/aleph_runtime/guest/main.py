"""The init's entry point: choose the transport and the loop, serve, then halt the machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from aleph_runtime.guest import linux, stdio
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.init import Init, install_signal_handlers, reap_orphans_forever
from aleph_runtime.guest.log import setup_logging
from aleph_runtime.guest.settings import Settings, SettingsError
from aleph_runtime.guest.settings import from_process as settings_from_process
from aleph_runtime.guest.transport import transport_for

logger = logging.getLogger("aleph_runtime.init")


def _parse_arguments(argv: list[str] | None, pid1: bool) -> tuple[argparse.Namespace, list[str]]:
    """The options, and (as PID 1) the words ignored.

    As PID 1 the arguments are the kernel's: the boot arguments without `=` it did not
    take itself, e.g. a node's `nomodule` on a kernel without modules. argparse would
    exit on them, and PID 1 exiting panics the kernel: so PID 1 ignores them, and keeps
    its defaults when even the words it knows are malformed.
    """
    parser = argparse.ArgumentParser(prog="init1", description="aleph-runtime guest init", add_help=not pid1)
    parser.add_argument("--uds", help="dev mode: serve on this Unix socket instead of vsock (or ALEPH_VSOCK_UDS)")
    parser.add_argument("--vsock", action="store_true", help="use vsock even when not PID 1")
    parser.add_argument("--root", help="dev mode: keep the program's files (/opt, /data, /tmp...) under this directory")
    if not pid1:
        return parser.parse_args(argv), []
    words = list(sys.argv[1:] if argv is None else argv)
    parser.exit_on_error = False
    try:
        arguments, unknown = parser.parse_known_args(words)
    except (argparse.ArgumentError, SystemExit):
        return parser.parse_args([]), words
    return arguments, unknown


def _new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """uvloop when present (about half the CPU per call); `asyncio` forces the stdlib's."""
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
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


def _read_settings(arguments: argparse.Namespace) -> Settings:
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
        root = "/" if pid1 else tempfile.mkdtemp(prefix="aleph-init-")
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
