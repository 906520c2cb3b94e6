"""The init's logging: one line per event, prefixed with the uptime, on the console.

The uptime (CLOCK_BOOTTIME) lets a boot be read off the console next to the kernel's
own timestamps and init0's lines. INFO by default; DEBUG when the settings ask for it
(`ALEPH_LOG_LEVEL=DEBUG` or `aleph.debug` on the kernel command line). DEBUG calls on the hot path are
guarded by `logger.isEnabledFor` so they cost nothing when off.
"""

from __future__ import annotations

import logging
import sys
import time


class _UptimeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
        message = record.getMessage()
        if record.exc_info:
            # Keep one event per line: the traceback's lines are joined with " | ".
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return f"[{uptime:10.6f}] init1 {record.levelname}: {message}"


def setup_logging(debug: bool = False, fd: int | None = None) -> logging.Logger:
    """Log to `fd` (the init's own duplicate of stderr, see stdio.py), else to sys.stderr."""
    stream = sys.stderr
    if fd is not None:
        # Line-buffered, and never closing the descriptor: it is the init's for good.
        stream = open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_UptimeFormatter())
    logger = logging.getLogger("aleph_runtime")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return logger
