"""`aleph-runtime run --debug`: debugpy in the program's process, only when the local node asks.

The local node puts debugpy, read-only, at DEBUGPY_PATH (a bind in dev mode, a squashfs
drive in a VM: not /opt/packages, which stays the program's) and sets DEBUG_PORT_VARIABLE
(and DEBUG_WAIT_VARIABLE with --debug-wait) in the config's variables. A node on the
network sets neither: the init then does one dict lookup and nothing else.

An ASGI program runs in the init's interpreter: debugpy listens there, before the app is
imported (its module-level code can be stepped through with --debug-wait). An executable
gets the same variables and mount; it starts debugpy itself (README).
"""

from __future__ import annotations

import logging
import os
import sys

from aleph_runtime.guest.config import ConfigError

logger = logging.getLogger(__name__)
#: The config variables the local node sets with --debug / --debug-wait.
DEBUG_PORT_VARIABLE = "ALEPH_DEBUG_PORT"
DEBUG_WAIT_VARIABLE = "ALEPH_DEBUG_WAIT"
#: Where the local node mounts debugpy in the guest.
DEBUGPY_PATH = "/opt/aleph-debug"


class DebuggerError(ConfigError):
    """debugpy could not start: the configuration fails with this one sentence."""


def requested_port(variables: dict[str, str]) -> int | None:
    """The port --debug asked for, or None (the network's case)."""
    raw = variables.get(DEBUG_PORT_VARIABLE)
    if raw is None:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise DebuggerError(f"{DEBUG_PORT_VARIABLE}={raw!r} is not a TCP port")
    return int(raw)


def start_from_variables(variables: dict[str, str]) -> None:
    """Start debugpy as the config's variables ask (blocking: the init calls it off its loop)."""
    if DEBUG_PORT_VARIABLE not in variables:
        return
    if not os.path.isdir(DEBUGPY_PATH):
        # Only `aleph-runtime run --debug` mounts debugpy: a program on the network whose
        # own variables happen to use this name starts as it did before this module.
        logger.warning(
            "%s is set but no debugger is mounted at %s (only aleph-runtime run --debug mounts one): ignored",
            DEBUG_PORT_VARIABLE, DEBUGPY_PATH,
        )  # fmt: skip
        return
    port = requested_port(variables)
    if port is not None:
        wait = variables.get(DEBUG_WAIT_VARIABLE) == "1"
        logger.info("debugpy: listening on port %d%s", port, ", waiting for a client" * wait)
        start_debugger(port, wait)


def start_debugger(port: int, wait: bool) -> None:
    """Listen for a debugger on every address of the guest at `port`; with `wait`, return
    only once a client has attached."""
    # pydevd warns, twice, that the image's Python uses frozen modules (the standard
    # library's: a breakpoint in the program is not affected).
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if DEBUGPY_PATH not in sys.path:
        sys.path.insert(0, DEBUGPY_PATH)
    try:
        import debugpy
    except ImportError as error:
        raise DebuggerError(f"debugpy could not be loaded from {DEBUGPY_PATH} ({error})") from None
    # The adapter is a subprocess of this interpreter (the image's Python, as the init).
    debugpy.configure(python=sys.executable, subProcess=False)
    try:
        debugpy.listen(("0.0.0.0", port))
    except Exception as error:  # noqa: BLE001 - debugpy raises RuntimeError, OSError...
        raise DebuggerError(f"debugpy could not listen on port {port}: {error}") from None
    if wait:
        debugpy.wait_for_client()
