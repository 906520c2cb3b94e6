"""The init once port 52 listens: logging, the event loop and the Init, serving until
`halt`, then the machine powered off. main() imports this after the ready signal."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from aleph_runtime.guest import linux
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.init import Init, install_signal_handlers, reap_orphans_forever
from aleph_runtime.guest.log import setup_logging
from aleph_runtime.guest.ready import Early
from aleph_runtime.guest.settings import Settings
from aleph_runtime.guest.transport import transport_for

logger = logging.getLogger("aleph_runtime.init")


def run(settings: Settings, *, pid1: bool, log_fd: int, ignored: list[str], early: Early) -> None:
    setup_logging(settings.debug, log_fd)
    if ignored:
        logger.info("Ignoring arguments (the kernel's boot arguments it did not take): %s", " ".join(ignored))
    if early.problem:
        logger.warning("Port 52: %s", early.problem)
    transport = transport_for(settings.uds, listener=early.listener)
    transport.ready_sent = early.sent
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
    if early.sent:
        logger.info("Ready signal sent before the imports")

    loop = _new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_log_loop_error)
    logger.info("Event loop: %s", "asyncio" if type(loop).__module__.startswith("asyncio") else "uvloop")
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
    grace = init.settings.orphan_grace
    reaper = asyncio.get_running_loop().create_task(reap_orphans_forever(grace=grace)) if reap else None
    try:
        await init.serve()
    finally:
        if reaper is not None:
            reaper.cancel()
        init.transport.close()


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
