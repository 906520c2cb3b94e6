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


def setup_logging(debug: bool = False) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UptimeFormatter())
    logger = logging.getLogger("aleph_runtime")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return logger
