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
"""

from __future__ import annotations

import os

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
    ) -> Settings:
        """The settings from the environment and kernel command line; arguments win over variables."""
        return cls(
            uds=uds or environ.get("ALEPH_VSOCK_UDS") or None,
            root=root or environ.get("ALEPH_INIT_ROOT") or None,
            force_vsock=force_vsock,
            event_loop=environ.get("ALEPH_EVENT_LOOP", "uvloop"),
            debug=environ.get("ALEPH_LOG_LEVEL", "").upper() == "DEBUG"
            or "aleph.debug" in kernel_cmdline.split(),
            max_request_bytes=_number(environ, "ALEPH_MAX_REQUEST_BYTES", int, DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes=_number(environ, MAX_RESPONSE_VARIABLE, int, DEFAULT_MAX_RESPONSE_BYTES),
            lifespan_startup_timeout=_number(
                environ, "ALEPH_LIFESPAN_STARTUP_TIMEOUT", float, DEFAULT_LIFESPAN_STARTUP_TIMEOUT
            ),
            max_unpacked_bytes=_number(environ, "ALEPH_MAX_UNPACKED_BYTES", int, DEFAULT_MAX_UNPACKED_BYTES),
        )


def read_kernel_cmdline(path: str = "/proc/cmdline") -> str:
    """The kernel's command line, or "" where there is none to read (dev mode in a container)."""
    try:
        with open(path) as cmdline:
            return cmdline.read()
    except OSError:
        return ""


def _number(environ: Mapping[str, str], name: str, kind: type, default):
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, not {raw!r}")
    return value


def from_process(uds: str | None = None, root: str | None = None, force_vsock: bool = False) -> Settings:
    """The running process's settings: its environment and the kernel's command line."""
    return Settings.read(os.environ, read_kernel_cmdline(), uds=uds, root=root, force_vsock=force_vsock)
