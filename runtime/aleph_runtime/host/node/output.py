"""What `aleph-runtime run` shows on stderr: its progress and access lines, and the machine's
log (a VM's console, the dev init's output) followed as it grows, through a filter that
keeps what an author wants: the program's own output and the init's warnings and errors.
Standard library only: cli.py imports it before --help.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] (?!init1 )")
_BOOT_SCRIPT_LINE = re.compile(r"^\d+\.\d+ (init0|initramfs): ")


def is_boot_noise(line: str) -> bool:
    """A line of the kernel's or the boot scripts' (init0, initramfs) on the console."""
    return bool(_KERNEL_LINE.match(line) or _BOOT_SCRIPT_LINE.match(line))


def say(message: str) -> None:
    print(f"aleph-runtime: {message}", file=sys.stderr, flush=True)


def say_access(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_INIT_LINE = re.compile(r"^\[\s*\d+\.\d+\] init1 (DEBUG|INFO|WARNING|ERROR|CRITICAL): (.*)$")


class OutputFilter:
    """What an author wants from the machine's log: the program's own output and the init's
    warnings and errors (one line each: a traceback the init logged is cut to its last
    line), without the kernel's, the boot scripts' or the init's progress lines."""

    def __init__(self, vm: bool):
        # A VM's console starts with firmware and kernel lines: nothing before the init's first.
        self.vm = vm
        self.booting = vm

    def new_boot(self) -> None:
        """A machine starts (again): its firmware and kernel lines are hidden too."""
        self.booting = self.vm

    def __call__(self, line: str) -> str | None:
        match = _INIT_LINE.match(line)
        if match is None:
            if self.booting or is_boot_noise(line):
                return None
            return line
        self.booting = False
        level, message = match.groups()
        if level in ("DEBUG", "INFO") or message.startswith("Configuration failed:"):
            return None  # a start that failed is reported by the node itself, with its traceback
        if " | Traceback" in message:
            head, _, rest = message.partition(" | Traceback")
            message = f"{head} ({rest.rsplit(' | ', 1)[-1].strip()})"
        return f"init {level.lower()}: {message}"


class LogTail:
    """Streams a growing log file (the VM console, the init's log) to stderr, through a
    line filter when one is given."""

    def __init__(self, path: Path, out=None, line_filter=None):
        self.path = path
        self.out = out or sys.stderr
        self.line_filter = line_filter
        self.offset = 0
        self._partial = b""
        self._task: asyncio.Task | None = None

    def start(self) -> LogTail:
        with contextlib.suppress(OSError):
            self.offset = self.path.stat().st_size  # what an earlier run left is not news
        self._task = asyncio.create_task(self._follow())
        return self

    def flush(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read(4 << 20)
        except FileNotFoundError:
            return
        self.offset += len(data)
        if self.line_filter is None:
            if data:
                self.out.write(data.decode(errors="replace"))
                self.out.flush()
            return
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        if len(self._partial) > 65536:  # a line without end: shown in pieces
            lines.append(self._partial)
            self._partial = b""
        shown = [
            kept
            for line in lines
            if line and (kept := self.line_filter(line.decode(errors="replace"))) is not None
        ]
        if shown:
            self.out.write("\n".join(shown) + "\n")
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
        self.flush(final=True)


class Terminal:
    """What the node shows on stderr: its progress and access lines, and the machine's log
    (followed once `follow` is called), each after what the machine said before it."""

    def __init__(self, output_filter: OutputFilter | None):
        self.output_filter = output_filter
        self.tail: LogTail | None = None

    def follow(self, log_path: Path) -> None:
        self.tail = LogTail(log_path, line_filter=self.output_filter).start()

    def flush(self) -> None:
        if self.tail is not None:
            self.tail.flush()

    def progress(self, message: str) -> None:
        self.flush()  # what the machine said first: a crash line follows its last words
        say(message)

    def access(self, line: str) -> None:
        self.flush()  # the program's output for that request first, as a terminal would show it
        say_access(line)

    def on_boot(self) -> None:
        if self.output_filter is not None:
            self.flush()  # the last machine's last words, still shown
            self.output_filter.new_boot()  # its firmware and kernel lines are hidden too

    async def stop(self) -> None:
        if self.tail is not None:
            await self.tail.stop()
            self.tail = None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
