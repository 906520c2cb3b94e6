"""The init's entry point: read the command line and settings, listen on port 52 and
send the ready signal, then import the rest and serve (guest/serve.py).

Everything imported here runs before the ready signal, at every boot: the command line
is read by hand (argparse and what it pulls in cost milliseconds under emulation), the
settings are a plain class, and asyncio, uvloop and the init come after the signal
(guest/ready.py says why).
"""

from __future__ import annotations

import os
import sys

from aleph_runtime.guest import collector, ready, stdio
from aleph_runtime.guest.settings import Settings, SettingsError
from aleph_runtime.guest.settings import from_process as settings_from_process

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


def _read_settings(arguments: Arguments) -> Settings:
    try:
        return settings_from_process(uds=arguments.uds, root=arguments.root, force_vsock=arguments.vsock)
    except SettingsError as error:
        # PID 1 must come up whatever its environment holds: the defaults, said aloud.
        print(f"init1: {error}; using the defaults", file=sys.stderr)
        return Settings(uds=arguments.uds, root=arguments.root, force_vsock=arguments.vsock)


def main(argv: list[str] | None = None) -> None:
    paused = collector.pause()  # until the init's modules are in (guest/collector.py)
    pid1 = os.getpid() == 1
    arguments, ignored = _parse_arguments(argv, pid1)
    # Before anything can print: descriptors 0-2 filled, and the init's own one to log through.
    log_fd = stdio.setup()
    settings = _read_settings(arguments)
    if not pid1 and not settings.uds and not settings.force_vsock:
        # An ordinary process talking vsock would reach whatever host this machine runs
        # under (a workstation can itself be a VM): dev mode must be asked for explicitly.
        sys.stderr.write(
            "init1: not PID 1: give --uds PATH (or ALEPH_VSOCK_UDS) for dev mode, or --vsock to insist\n"
        )
        sys.exit(2)
    early = _signal_ready(settings.uds)

    from aleph_runtime.guest import serve

    collector.resume(paused)
    serve.run(settings, pid1=pid1, log_fd=log_fd, ignored=ignored, early=early)


def _signal_ready(uds: str | None) -> ready.Early:
    """Port 52 listening and the host told, or why not (then the loop tries again)."""
    early = ready.Early()
    try:
        early.listener = ready.listen(uds)
    except Exception as error:  # noqa: BLE001 - PID 1 carries on: the loop tries again and says why
        early.problem = f"could not listen before the imports ({error}); the loop will"
        return early
    try:
        ready.send(uds)
    except Exception as error:  # noqa: BLE001 - as above
        early.problem = f"could not send the ready signal before the imports ({error}); the loop will"
    else:
        early.sent = True
    return early
