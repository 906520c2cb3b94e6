"""A pytest plugin: the `aleph_program` fixture, a program started as `aleph-runtime run`
starts it, for the test session or module, and stopped cleanly after.

Registered as the `aleph_runtime` pytest11 entry point: every pytest of a virtualenv where
aleph-runtime is installed has it (`-p no:aleph_runtime` turns it off). Importing it loads
the standard library only; the node's code runs in the `aleph-runtime run` subprocess.

    # my_app/test_app.py: without a marker the program is the test file's directory
    def test_index(aleph_program):
        assert aleph_program.client.get("/").status_code == 200
        assert aleph_program.event({"hello": "world"})["handled"] is True

    # options, for the whole module (paths relative to the test file's directory)
    pytestmark = pytest.mark.aleph_program(
        "../my_app", mode="dev", env={"KEY": "value"}, volumes=["mount=/data,persistent=data"],
        watch=True, args=["--seconds", "5"],
    )

    # another scope: the factory (session-scoped, paths relative to the rootdir) in a fixture
    @pytest.fixture(scope="session")
    def app(aleph_program_factory):
        return aleph_program_factory("my_app", mode="vm")

`aleph_program` is module-scoped: one program per test module, configured by the module's
`aleph_program` marker. The mode is the marker's, else `--aleph-mode` (dev by default: a
container of the runtime image, started in about half a second once the image is built;
`vm` boots the runtime image in QEMU). Each program gets its own state directory (key,
Redis data, persistent volumes) under pytest's temporary directory, and a free port, kept
across `restart()`.

What a started program offers (`AlephProgram`): `url`, `client` (an httpx.Client bound to
the URL), `event(content)` (an aleph message POSTed to /control/event, the answer's JSON),
`output` (the command's stdout and stderr so far), `wait_for_output(pattern)`,
`restarted()` (with `watch`, wait until an edit restarted it), `restart()` and `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

MODES = ("dev", "vm")
#: How long a start may take before the fixture gives up: dev mode starts in a second, but
#: its first run may build the runtime image (minutes); a VM boots under TCG, and its first
#: run may build the image and the kernel (tens of minutes).
START_TIMEOUT = {"dev": 1800.0, "vm": 3600.0}
#: How long a stop (SIGINT: the supervisor's halt) may take before the command is killed.
STOP_TIMEOUT = 60.0
#: The command's output lines kept (the oldest are dropped).
MAX_OUTPUT_LINES = 20_000
MAX_LINE_BYTES = 64 << 10
_URL_LINE = re.compile(r"Program running at (http://\S+/)")
_PORT = re.compile(r":(\d+)/$")


class AlephProgramError(pytest.fail.Exception):
    """The program could not be started or stopped: one sentence naming the cause, shown
    without a traceback (a pytest failure)."""

    def __init__(self, message: str):
        super().__init__(message, pytrace=False)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc's children lists (the dev init runs in a
    session of its own, out of reach of a process-group kill)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    pending.append(child)
    return found


class AlephProgram:
    """One `aleph-runtime run PATH` subprocess: started with `start()`, stopped with `stop()`."""

    def __init__(self, path: Path, state_dir: Path, mode: str = "dev", *, runtime: str | None = None,
                 profile: str | None = None, env: dict[str, str] | None = None, volumes=(),
                 watch: bool = False, args=(), port: int = 0, cwd: Path | None = None,
                 start_timeout: float | None = None):  # fmt: skip
        if mode not in MODES:
            raise AlephProgramError(f"aleph_program: unknown mode {mode!r}, dev or vm")
        self.path = path
        self.state_dir = state_dir
        self.mode = mode
        self.options: list[str] = []
        if runtime is not None:
            self.options += ["--runtime", runtime]
        if profile is not None:
            self.options += ["--profile", profile]
        for key, value in (env or {}).items():
            self.options += ["--env", f"{key}={value}"]
        for volume in volumes:
            self.options += ["--volume", str(volume)]
        if watch:
            self.options.append("--watch")
        self.options += [str(arg) for arg in args]
        self.port = port
        self.cwd = cwd
        self.start_timeout = START_TIMEOUT[mode] if start_timeout is None else start_timeout
        self.url: str | None = None
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._lines: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        self._lines_seen = 0  # lines ever received, dropped ones included
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._client = None

    # --- the command ---

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "aleph_runtime.host.node.cli", "run", str(self.path), "--mode", self.mode,
            "--port", str(self.port), "--state-dir", str(self.state_dir), *self.options,
        ]  # fmt: skip

    def start(self) -> AlephProgram:
        """Start the command and wait for its URL; AlephProgramError (with the command's own
        error) when it exits first or does not print it in time."""
        if self.process is not None and self.process.poll() is None:
            return self
        self._check_program()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.url = None
        self.returncode = None
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=self.cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True, name=f"aleph_program {name}")
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + self.start_timeout
        with self._changed:
            while self.url is None:
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    self.returncode = self.process.returncode
                    raise AlephProgramError(f"{self.path}: {self._why_it_ended()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    raise AlephProgramError(
                        f"{self.path}: no URL after {self.start_timeout:g} s; last output:\n{self._tail()}"
                    )
                self._changed.wait(min(left, 0.5))
        if self.port == 0:  # the same port after a restart: the URL and client stay valid
            self.port = int(_PORT.search(self.url).group(1))
        return self

    def _check_program(self) -> None:
        """A PATH that is not a program is said in one sentence, before anything starts."""
        from aleph_runtime.host.errors import NodeError
        from aleph_runtime.host.node.inference import infer_program

        if not self.path.exists():
            raise AlephProgramError(f"aleph_program: {self.path} does not exist")
        try:
            infer_program(self.path)
        except NodeError as error:
            raise AlephProgramError(f"aleph_program: {self.path} is not a program: {error}") from None

    def _read(self, stream) -> None:
        for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):  # a longer line comes in pieces
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._changed:
                self._lines.append(line)
                self._lines_seen += 1
                if self.url is None:
                    match = _URL_LINE.search(line)
                    if match:
                        self.url = match.group(1)
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._changed.notify_all()

    def _why_it_ended(self) -> str:
        """The command's own error line ("aleph-runtime: error: ..."), else its last lines."""
        errors = [line for line in self._lines if line.startswith("aleph-runtime: error: ")]
        if errors:
            return errors[-1].removeprefix("aleph-runtime: error: ")
        failed = [line for line in self._lines if "failed to start" in line or "could not start" in line]
        reason = failed[-1].removeprefix("aleph-runtime: ") if failed else "the command exited"
        return f"{reason} (exit status {self.returncode}); last output:\n{self._tail()}"

    def _tail(self, count: int = 30) -> str:
        return "\n".join(list(self._lines)[-count:])

    # --- what a test uses ---

    @property
    def client(self):
        """An httpx.Client whose base URL is the program's (made on first use)."""
        if self.url is None:
            raise AlephProgramError(f"{self.path}: the program is not running")
        if self._client is None:
            try:
                import httpx
            except ImportError:
                raise AlephProgramError("aleph_program.client needs httpx (pip install httpx)") from None
            self._client = httpx.Client(base_url=self.url, timeout=60)
        return self._client

    def event(self, content=None, *, message: dict | None = None, type: str = "POST", channel: str = "TEST",
              timeout: float = 60):  # fmt: skip
        """POST an aleph message to /control/event, as a node delivers one the program
        subscribes to (`message`, or one built around `content` as `aleph-runtime event`
        builds it); the program's answer, decoded from JSON. A status other than 200 fails."""
        from aleph_runtime.host.node.cli import aleph_message

        if message is None:
            message = aleph_message({} if content is None else content, type, channel)
        response = self.client.post("control/event", json=message, timeout=timeout)
        if response.status_code != 200:
            raise AssertionError(f"/control/event answered {response.status_code}: {response.text[:2000]}")
        return response.json()

    @property
    def lines(self) -> list[str]:
        """The command's output lines so far (stdout and stderr, as they arrived)."""
        with self._changed:
            return list(self._lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = 30, *, after: int = 0) -> re.Match:
        """The first output line from the `after`th on (counting every line received)
        matching the regular expression `pattern`; waits up to `timeout` seconds for it."""
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                first_kept = self._lines_seen - len(self._lines)
                for line in list(self._lines)[max(after - first_kept, 0) :]:
                    match = wanted.search(line)
                    if match:
                        return match
                after = self._lines_seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no output line matched {pattern!r} in {timeout:g} s:\n{self._tail()}"
                    )
                ended = self.process is None or self.process.poll() is not None
                if ended and not any(reader.is_alive() for reader in self._readers):
                    raise AssertionError(f"the command ended without a line matching {pattern!r}")
                self._changed.wait(min(left, 0.5))

    def mark(self) -> int:
        """A position in the output, for `wait_for_output(after=...)`: what comes next."""
        with self._changed:
            return self._lines_seen

    def restarted(self, timeout: float = 60, *, after: int | None = None) -> float:
        """With `watch`: wait until the command restarted the program after an edit (made
        after `after`, a `mark()`); the seconds the restart took."""
        match = self.wait_for_output(r"restarted in (\d+\.\d+) s", timeout, after=after or 0)
        return float(match.group(1))

    def restart(self) -> AlephProgram:
        """Stop the command and start it again (same port, state directory and options):
        the program starts fresh, its persistent volumes, cache and key kept."""
        self.stop()
        return self.start()

    def stop(self) -> int | None:
        """SIGINT, as Ctrl-C: the supervisor's halt, the machine and Redis stopped; the
        command is killed (with what it started) after STOP_TIMEOUT. Its exit status."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
        for reader in self._readers:
            reader.join(5)
        self.returncode = self.process.returncode
        self.process = None
        self.url = None
        return self.returncode

    def _kill(self) -> None:
        assert self.process is not None
        for pid in (*descendants(self.process.pid), self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> AlephProgram:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the pytest plugin ---


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--aleph-mode", choices=MODES, default=None,
        help="aleph_program: the mode of programs whose marker or factory call names none (dev by default)",
    )  # fmt: skip


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "aleph_program(path=None, *, mode=None, runtime=None, profile=None, env=None, volumes=(), "
        "watch=False, args=()): the program the module's `aleph_program` fixture starts "
        "(path relative to the test file; default: its directory)",
    )


def _start(config, tmp_path_factory, started: list[AlephProgram], path, base: Path, mode=None,
           **options) -> AlephProgram:  # fmt: skip
    mode = mode or config.getoption("aleph_mode") or "dev"
    program_path = (base / path).resolve() if path is not None else base
    state_dir = tmp_path_factory.mktemp("aleph-state")
    program = AlephProgram(program_path, state_dir, mode, cwd=base, **options)
    started.append(program)
    return program.start()


@pytest.fixture(scope="session")
def aleph_program_factory(request, tmp_path_factory):
    """`aleph_program_factory(path, mode=None, runtime=None, profile=None, env=None,
    volumes=(), watch=False, args=(), port=0)`: a started AlephProgram (a relative path is
    the rootdir's); every one still running is stopped at the end of the session."""
    started: list[AlephProgram] = []
    base = Path(request.config.rootpath)

    def factory(path, **options) -> AlephProgram:
        return _start(request.config, tmp_path_factory, started, path, base, **options)

    yield factory
    for program in started:
        program.stop()


@pytest.fixture(scope="module")
def aleph_program(request, tmp_path_factory):
    """The program the module's `aleph_program` marker names (default: the test file's
    directory), started once for the module and stopped after its last test."""
    marker = request.node.get_closest_marker("aleph_program")
    args, kwargs = (marker.args, marker.kwargs) if marker is not None else ((), {})
    path = args[0] if args else kwargs.pop("path", None)
    started: list[AlephProgram] = []
    program = _start(request.config, tmp_path_factory, started, path, Path(request.path).parent, **kwargs)
    yield program
    program.stop()
