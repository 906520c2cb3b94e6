"""Every knob of the init, read once at start into one frozen `Settings`.

`main()` builds it from the command line, the environment and /proc/cmdline before
anything else runs, and passes it down: no other module of the package reads the
environment, so a test (or dev mode) sets any knob by building its own `Settings`,
and the init's behaviour cannot change under it while it runs.

| variable                         | default        | meaning |
|----------------------------------|----------------|---------|
| `ALEPH_VSOCK_UDS`                | (vsock)        | dev mode: serve on this Unix socket (as `--uds`) |
| `ALEPH_INIT_ROOT`                | `/` as PID 1   | keep the program's files under this directory (as `--root`) |
| `ALEPH_EVENT_LOOP`               | `uvloop`       | `asyncio` forces the standard library's loop |
| `ALEPH_LOG_LEVEL`                | `INFO`         | `DEBUG` (or `aleph.debug` on the kernel command line) logs every call |
| `ALEPH_MAX_REQUEST_BYTES`        | 256 MiB        | a larger run request or configuration is refused |
| `ALEPH_MAX_RESPONSE_BYTES`       | 256 MiB        | a larger response body is an error answer; the program's stream is no longer read |
| `ALEPH_LIFESPAN_STARTUP_TIMEOUT` | 50 s           | how long an ASGI app's lifespan startup may take |
| `ALEPH_MAX_UNPACKED_BYTES`       | 4 GiB          | the most one archive (code, input data) may unpack to, or the free space less 1/16 when smaller |
| `ALEPH_ORPHAN_GRACE`             | 10 s           | how long an orphan's zombie waits before PID 1 reaps it (linux.OrphanReaper) |
"""

from __future__ import annotations

import math
import os
import sys

from aleph_runtime.guest.record import Record
from aleph_runtime.protocol import MAX_RESPONSE_VARIABLE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the signal
if TYPE_CHECKING:
    from collections.abc import Mapping

#: The supervisor sends calls of any size; this bounds what PID 1 buffers for one.
DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20
#: The same bound on what a program answers: an endless stream must not grow PID 1.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2**20
#: The supervisor waits 60 s for the config's answer; the import comes before the startup.
DEFAULT_LIFESPAN_STARTUP_TIMEOUT = 50.0
#: The root filesystem is a tmpfs in RAM: one archive may not fill it.
DEFAULT_MAX_UNPACKED_BYTES = 4 * 2**30
#: linux.ORPHAN_GRACE, without importing linux here.
DEFAULT_ORPHAN_GRACE = 10.0
#: The largest number a knob takes: C's ssize_t, which a byte count reaches in msgpack's
#: buffer size, read() and mmap (a larger one raises OverflowError there, at every call).
MAX_SETTING = 2**63 - 1
#: The characters of a number as people write one: int() and float() also take Unicode
#: digits ("١٢٣"), underscores, "nan" and "inf", none of which is a sane limit.
_INTEGER_CHARACTERS = frozenset("0123456789")
_DECIMAL_CHARACTERS = frozenset("0123456789.eE+-")


class SettingsError(ValueError):
    """A knob has a value the init cannot use; the message names it."""


class Settings(Record):
    """Frozen. A Record, not a dataclass (guest/record.py says why); it is built before
    the ready signal (guest/ready.py)."""

    __slots__ = (
        "debug",
        "event_loop",
        "force_vsock",
        "lifespan_startup_timeout",
        "max_request_bytes",
        "max_response_bytes",
        "max_unpacked_bytes",
        "orphan_grace",
        "root",
        "uds",
    )  # fmt: skip

    def __init__(
        self,
        *,
        uds: str | None = None,
        root: str | None = None,
        force_vsock: bool = False,
        event_loop: str = "uvloop",
        debug: bool = False,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        lifespan_startup_timeout: float = DEFAULT_LIFESPAN_STARTUP_TIMEOUT,
        max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
        orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    ):
        self._fill(locals())

    #: Dev mode's Unix socket base path; None serves on vsock.
    uds: str | None
    #: Where the program's files live; None: `/` as PID 1, else a fresh private directory.
    root: str | None
    #: Serve on vsock even when not PID 1 (`--vsock`).
    force_vsock: bool
    event_loop: str
    debug: bool
    max_request_bytes: int
    max_response_bytes: int
    lifespan_startup_timeout: float
    max_unpacked_bytes: int
    orphan_grace: float

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are read once, at start: {name} cannot change")

    @classmethod
    def read(
        cls,
        environ: Mapping[str, str],
        kernel_cmdline: str = "",
        *,
        uds: str | None = None,
        root: str | None = None,
        force_vsock: bool = False,
        problems: list[str] | None = None,
    ) -> Settings:
        """The settings from the environment and kernel command line; arguments win over variables.

        A knob whose value is unusable raises SettingsError, or, given a `problems` list,
        takes its default and adds a sentence saying so to the list.
        """

        def number(name: str, kind: type, default):
            return _number_or_default(environ, name, kind, default, problems)

        return cls(
            uds=uds or environ.get("ALEPH_VSOCK_UDS") or None,
            root=root or environ.get("ALEPH_INIT_ROOT") or None,
            force_vsock=force_vsock,
            event_loop=environ.get("ALEPH_EVENT_LOOP", "uvloop"),
            debug=environ.get("ALEPH_LOG_LEVEL", "").upper() == "DEBUG"
            or "aleph.debug" in kernel_cmdline.split(),
            max_request_bytes=number("ALEPH_MAX_REQUEST_BYTES", int, DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes=number(MAX_RESPONSE_VARIABLE, int, DEFAULT_MAX_RESPONSE_BYTES),
            lifespan_startup_timeout=number(
                "ALEPH_LIFESPAN_STARTUP_TIMEOUT", float, DEFAULT_LIFESPAN_STARTUP_TIMEOUT
            ),
            max_unpacked_bytes=number("ALEPH_MAX_UNPACKED_BYTES", int, DEFAULT_MAX_UNPACKED_BYTES),
            orphan_grace=number("ALEPH_ORPHAN_GRACE", float, DEFAULT_ORPHAN_GRACE),
        )


def read_kernel_cmdline(path: str = "/proc/cmdline") -> str:
    """The kernel's command line, or "" where there is none to read (dev mode in a container)."""
    try:
        with open(path) as cmdline:
            return cmdline.read()
    except OSError:
        return ""


def _number_or_default(
    environ: Mapping[str, str], name: str, kind: type, default, problems: list[str] | None
):
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return _number(name, raw, kind)
    except SettingsError as error:
        if problems is None:
            raise
        problems.append(f"{error}: using its default, {default}")
        return default


def _number(name: str, raw: str, kind: type):
    """A positive, finite ASCII number no larger than MAX_SETTING, else SettingsError."""
    text = raw.strip(" \t\n")
    try:
        if not text or not (_INTEGER_CHARACTERS if kind is int else _DECIMAL_CHARACTERS).issuperset(text):
            raise ValueError
        value = kind(text)
    except ValueError:
        whole = "a whole " if kind is int else "a "
        raise SettingsError(f"{name} must be {whole}number in ASCII digits, not {raw[:40]!r}") from None
    if not math.isfinite(value) or value > MAX_SETTING:
        raise SettingsError(f"{name} must be at most {MAX_SETTING}, not {raw[:40]!r}")
    if value <= 0:
        raise SettingsError(f"{name} must be positive, not {raw[:40]!r}")
    return value


def from_process(uds: str | None = None, root: str | None = None, force_vsock: bool = False) -> Settings:
    """The running process's settings: its environment and the kernel's command line.

    PID 1 must come up whatever its environment holds: an unusable knob takes its
    default, said on stderr (the console), and the other knobs keep their values.
    """
    problems: list[str] = []
    settings = Settings.read(
        os.environ, read_kernel_cmdline(), uds=uds, root=root, force_vsock=force_vsock, problems=problems
    )
    for problem in problems:
        print(f"init1: {problem}", file=sys.stderr)
    return settings
