"""Executable programs (`interface: executable`): any binary or script serving HTTP on
127.0.0.1:8080, supervised by the init and reached through a small HTTP/1.1 client.

The child runs in its own session (process group), with the program's environment; its
stdout and stderr are a pty (so it line-buffers as on the console it had before) that a
thread copies to the init's stdout (the console log), keeping the run's last 4 KiB. If
it exits it is restarted with backoff and its exit status is logged; its leftover group
members are killed first, so a shell script whose server outlived it cannot keep the
port. A program that exits before it ever accepted a connection (a missing interpreter,
a bad argument) makes requests answer 502 at once with its exit status and last output
lines, instead of each waiting for a server that will never come. At halt: SIGTERM to
the group, SIGKILL after the grace period.

Each call's scope is mapped by `request.request_from_scope()`, the mapping an ASGI app's
scope comes from too, so the program's server reads the same request target and headers
as an ASGI app would see. The HTTP client is a few asyncio stream calls (request with
Content-Length and `Connection: close`; response with Content-Length, chunked, or until
EOF): importing aiohttp would cost more than the whole init, and h11 (uvicorn's parser)
more than this module and half again as much CPU per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import termios
import threading
import time
import traceback

from aleph_runtime import protocol
from aleph_runtime.guest.config import ConfigError
from aleph_runtime.guest.request import Request, ScopeError, request_from_scope
from aleph_runtime.guest.settings import DEFAULT_MAX_RESPONSE_BYTES

logger = logging.getLogger(__name__)

#: Request headers not passed on: hop-by-hop, or rewritten by us (`request_head`).
_DROPPED_REQUEST_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"content-length",
        b"te",
        b"upgrade",
        b"trailer",
        b"expect",
    }
)
#: Response headers not passed back: the body is given whole, de-chunked.
_DROPPED_RESPONSE_HEADERS = frozenset({b"transfer-encoding", b"connection", b"keep-alive"})

LOADING_PAGE = (
    b"<!DOCTYPE html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
    b"<title>Starting</title></head><body><p>The program is starting; this page reloads by itself.</p>"
    b"</body></html>\n"
)


class HTTPProtocolError(ConnectionError):
    """The program's server answered something that is not HTTP/1.x."""


#: How much of a run's output is kept for the 502 answer: the end of it.
OUTPUT_TAIL_BYTES = 4096
#: How many of those last lines the 502 answer shows.
OUTPUT_TAIL_LINES = 20


class _OutputCopier:
    """The program's stdout+stderr: a pty (a pipe when no pty can be had) read by a thread
    that copies everything to the init's stdout and keeps the last OUTPUT_TAIL_BYTES. A
    thread, because the console can be slow (a serial port): a chatty program then waits
    on its own writes, as it did on the console, and the init's event loop never does."""

    def __init__(self) -> None:
        try:
            self.read_fd, self.child_fd = os.openpty()
            # No output processing: the program's "\n" reaches the log as "\n", not "\r\n".
            attributes = termios.tcgetattr(self.child_fd)
            attributes[1] &= ~termios.OPOST
            termios.tcsetattr(self.child_fd, termios.TCSANOW, attributes)
        except OSError:
            self.read_fd, self.child_fd = os.pipe()
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._copy, name="program-output", daemon=True)
        self._thread.start()

    def close_child_end(self) -> None:
        """Once the program holds its copy: EOF (EIO on a pty) comes when it and its
        children have all closed theirs."""
        with contextlib.suppress(OSError):
            os.close(self.child_fd)

    def _copy(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self.read_fd, 65536)
                except OSError:  # EIO: the pty's last writer is gone
                    break
                if not chunk:
                    break
                self._tail += chunk
                del self._tail[:-OUTPUT_TAIL_BYTES]
                view = memoryview(chunk)
                with contextlib.suppress(OSError):
                    while view:
                        view = view[os.write(1, view) :]
        finally:
            with contextlib.suppress(OSError):
                os.close(self.read_fd)

    async def finish(self, timeout: float = 1.0) -> None:
        """Wait (bounded: a daemonised grandchild may keep the pty open) for the output
        written before the program exited to be read."""
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)

    def last_lines(self, count: int = OUTPUT_TAIL_LINES) -> str:
        lines = bytes(self._tail).decode("utf-8", "replace").replace("\r\n", "\n").splitlines()
        return "\n".join(lines[-count:])


class ProgramResponseTooLarge(HTTPProtocolError):
    """The program's response outgrew the cap: the rest of it is not read."""

    def __init__(self, limit: int):
        super().__init__(protocol.response_too_large(limit))


#: The most status and header bytes read from the program (interim answers included):
#: real servers send a few KiB; an endless header block must not grow the init.
MAX_RESPONSE_HEAD_BYTES = 1 << 20
_READ_CHUNK = 1 << 20

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ExecutableProgram:
    #: How long a request waits for the program's server to accept connections.
    connect_timeout: float = 10.0
    #: Restart backoff: first delay, cap, and the run time after which it resets.
    restart_delay: float = 0.1
    restart_delay_max: float = 10.0
    restart_reset_after: float = 30.0

    def __init__(self, path: str, env: dict[str, str], port: int = 8080, cwd: str | None = None):
        self.path = path
        self.env = dict(env)
        self.port = port
        self.cwd = cwd if cwd is not None else (os.path.dirname(path) or None)
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.exit_statuses: list[int] = []
        self._supervisor: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._started_at = 0.0
        self._command = [path]
        self._output: _OutputCopier | None = None
        #: Whether the current run's server has accepted a connection yet.
        self._accepted_a_connection = False
        #: The last run that ended before its server accepted a connection: (exit status,
        #: its last output lines).
        self.failed_start: tuple[int, str] | None = None
        #: Set by the init when the program has /data: each answer then carries its zip.
        self.data_export = None
        self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES

    # --- the child ---

    async def start(self) -> None:
        """Make the entrypoint executable, start it, and keep it running."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            raise ConfigError(f"the entrypoint {self.path!r} does not exist") from None
        self._command = [self.path]
        if mode & 0o111 != 0o111:
            try:
                os.chmod(self.path, mode | 0o111)
            except OSError as error:
                # A read-only filesystem (squashfs code): run a script through its interpreter.
                if not mode & 0o100:
                    self._command = _interpreter_command(self.path)
                    if self._command is None:
                        raise ConfigError(
                            f"the entrypoint {self.path!r} is not executable and cannot be made so "
                            f"({error.strerror})"
                        ) from None
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="executable-supervisor")

    async def _spawn(self) -> None:
        from aleph_runtime.guest import stdio

        stdio.reserve()  # the child inherits 0, 1, 2: never a socket of ours
        output = _OutputCopier()
        try:
            try:
                self.process = await self._exec(self._command, output.child_fd)
            except OSError as error:
                if error.errno != errno.ENOEXEC:
                    raise
                # A script without a shebang line: run it with the shell, as a shell would.
                self.process = await self._exec(["/bin/sh", self.path], output.child_fd)
        finally:
            output.close_child_end()
        self._output = output
        self._accepted_a_connection = False
        self._started_at = time.monotonic()
        _register(self.process.pid)
        logger.info("started %s (pid %d)", self.path, self.process.pid)

    async def _exec(self, command: list[str], output_fd: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *command,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output_fd,
            stderr=output_fd,
            start_new_session=True,
        )

    async def _supervise(self) -> None:
        delay = self.restart_delay
        while True:
            process = self.process
            if process is None:
                return
            status = await process.wait()
            _unregister(process.pid)
            _kill_group(process.pid, signal.SIGKILL)
            self.exit_statuses.append(status)
            if self._output is not None:
                await self._output.finish()
                if not self._accepted_a_connection:
                    self.failed_start = (status, self._output.last_lines())
            if self._stopping.is_set():
                return
            ran_for = time.monotonic() - self._started_at
            if ran_for > self.restart_reset_after:
                delay = self.restart_delay
            logger.warning(
                "%s exited with %s after %.1f s; restarting in %.1f s",
                self.path,
                _describe(status),
                ran_for,
                delay,
            )
            next_delay = await self._respawn(delay)
            if next_delay is None:
                return
            delay = next_delay
            self.restarts += 1

    async def _respawn(self, delay: float) -> float | None:
        """Wait `delay` seconds, then start the program again, waiting longer each time it
        cannot be started; the next delay, or None once the program is being stopped."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return None
            delay = min(delay * 2, self.restart_delay_max)
            try:
                await self._spawn()
            except OSError as error:
                logger.error("cannot restart %s: %s", self.path, error)
                self.process = None
            else:
                return delay

    async def stop(self, grace: float = 5) -> None:
        """SIGTERM to the program's process group, SIGKILL after `grace` seconds."""
        self._stopping.set()
        process = self.process
        if process is not None and process.returncode is None:
            _kill_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                logger.warning("%s did not stop within %.1f s: killing it", self.path, grace)
                _kill_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(process.wait(), 1)
            logger.info("%s stopped with %s", self.path, _describe(process.returncode))
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._supervisor, 1)

    # --- the requests ---

    async def handle(self, scope: dict) -> bytes:
        """Proxy one supervisor scope to the program; the packed answer for the supervisor."""
        try:
            status, headers, body = await self.request(scope)
        except ProgramResponseTooLarge as error:
            logger.warning("Refused a response: %s", error)
            return protocol.error_answer(str(error), "")
        except ScopeError as error:
            logger.error("Refused a call: %s", error)
            return protocol.init_error_answer(str(error))
        except Exception as error:  # noqa: BLE001 - every failure is an answer, never a crash
            return protocol.error_answer(f"{type(error).__name__}: {error}", traceback.format_exc())
        output_data = None
        if self.data_export is not None:
            try:
                output_data = await self.data_export.acollect()
            except Exception:
                logger.exception("collecting /data failed")
        return protocol.run_answer(status, headers, body, output_data=output_data)

    async def request(self, scope: dict) -> tuple[int, list[list[bytes]], bytes]:
        """Proxy one scope; (status, headers, body). 503 with a loading page while the
        server does not accept connections within `connect_timeout`. ScopeError for a
        scope no supervisor sends."""
        if scope.get("type") != "http":
            raise ValueError(
                f"an executable program answers HTTP calls only, not {scope.get('type')!r} scopes"
            )
        request = request_from_scope(scope)
        method = request.method
        message = request_head(request, self.port) + request.body
        # A connection that a dying server's kernel had queued in its backlog is reset
        # without the server ever reading it: an idempotent request is sent again.
        attempts = 3 if method in _IDEMPOTENT_METHODS else 1
        for attempt in range(attempts):
            connection = await self._connect()
            if connection is None:
                if self.failed_start is not None and not self._running():
                    return self._failed_start_answer()
                return (
                    503,
                    [[b"content-type", b"text/html; charset=utf-8"], [b"retry-after", b"2"]],
                    LOADING_PAGE,
                )
            reader, writer = connection
            try:
                writer.write(message)
                await writer.drain()
                return await read_response(reader, head=method == "HEAD", max_bytes=self.max_response_bytes)
            except (ConnectionResetError, BrokenPipeError):
                # A reset, not a clean close: the server never read the request (a server
                # that crashes while handling it closes cleanly, and is not asked twice).
                if attempt + 1 >= attempts:
                    raise
                logger.warning("the program dropped a %s request without answering: sending it again", method)
                await asyncio.sleep(0.05)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        raise HTTPProtocolError("the program did not answer")

    def _running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _failed_start_answer(self) -> tuple[int, list[list[bytes]], bytes]:
        status, last_lines = self.failed_start or (0, "")
        text = f"502: the program exited with {_describe(status)} before serving (restarted with backoff)"
        text += f"; its last output:\n{last_lines}\n" if last_lines else "; it printed nothing\n"
        return 502, [[b"content-type", b"text/plain; charset=utf-8"]], text.encode()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the program's server; None when it does not accept one within
        `connect_timeout`, or at once when it is down after exiting before it served."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.01
        while True:
            for host in ("127.0.0.1", "::1"):
                try:
                    connection = await asyncio.open_connection(host, self.port, limit=1 << 20)
                except OSError:
                    continue
                self._accepted_a_connection = True
                self.failed_start = None
                return connection
            if self.failed_start is not None and not self._running():
                return None
            if time.monotonic() >= deadline:
                logger.warning("the program does not accept connections on port %d yet", self.port)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


def request_head(request: Request, port: int) -> bytes:
    """The request line and header block for `request`, framed for one call on its own
    connection: the request's own hop-by-hop headers give way to a Content-Length and
    `Connection: close`, and a request without Host gets the program's address."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.target)]
    has_host = False
    for name, value in request.headers:
        if name in _DROPPED_REQUEST_HEADERS:
            continue
        has_host |= name == b"host"
        lines.append(name + b": " + value)
    if not has_host:
        lines.append(b"host: 127.0.0.1:%d" % port)
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: %d" % len(request.body))
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_response(
    reader: asyncio.StreamReader, head: bool = False, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> tuple[int, list[list[bytes]], bytes]:
    """An HTTP/1.x response: status, header pairs (names as sent), the whole body.

    A body larger than `max_bytes` raises ProgramResponseTooLarge as soon as that is known (a
    Content-Length over it is refused before a byte of the body is read)."""
    head_bytes = 0

    async def head_line() -> bytes:
        nonlocal head_bytes
        line = await reader.readline()
        head_bytes += len(line)
        if head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise HTTPProtocolError(
                f"the program's response head is larger than {MAX_RESPONSE_HEAD_BYTES} bytes"
            )
        return line

    while True:
        line = await head_line()
        if not line:
            raise HTTPProtocolError("the program closed the connection without answering")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HTTPProtocolError(f"the program answered something that is not HTTP: {line[:100]!r}")
        status = int(parts[1])
        headers: list[list[bytes]] = []
        while True:
            line = await head_line()
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.partition(b":")
            if sep:
                headers.append([name.strip(), value.strip()])
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        break

    fields = {name.lower(): value for name, value in headers}
    kept = [pair for pair in headers if pair[0].lower() not in _DROPPED_RESPONSE_HEADERS]
    if head or status in (204, 304) or 100 <= status < 200:
        return status, kept, b""
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        # The body is given de-chunked: a Content-Length sent alongside (RFC 9112 says to
        # ignore it) would not be its length.
        kept = [pair for pair in kept if pair[0].lower() != b"content-length"]
        return status, kept, await _read_chunked(reader, max_bytes)
    length = fields.get(b"content-length")
    if length is not None and length.strip().isdigit():
        if int(length) > max_bytes:
            raise ProgramResponseTooLarge(max_bytes)
        try:
            return status, kept, await reader.readexactly(int(length))
        except asyncio.IncompleteReadError as error:
            raise HTTPProtocolError(
                f"the program closed the connection after {len(error.partial)} of {int(length)} body bytes"
            ) from None
    return status, kept, await _read_until_eof(reader, max_bytes)


async def _read_until_eof(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    body = bytearray()
    while chunk := await reader.read(_READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise ProgramResponseTooLarge(max_bytes)
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readline()
        if not line:
            raise HTTPProtocolError("the program closed the connection in the middle of a chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HTTPProtocolError(f"bad chunk size {size_text[:40]!r}") from None
        if size == 0:
            trailer_bytes = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                trailer_bytes += len(line)  # trailers, dropped
                if trailer_bytes > MAX_RESPONSE_HEAD_BYTES:
                    raise HTTPProtocolError(
                        f"the program's trailers are larger than {MAX_RESPONSE_HEAD_BYTES} bytes"
                    )
            return bytes(body)
        if len(body) + size > max_bytes:
            raise ProgramResponseTooLarge(max_bytes)
        try:
            body += await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise HTTPProtocolError("the program closed the connection in the middle of a chunk") from None
        await reader.readline()


def _interpreter_command(path: str) -> list[str] | None:
    """How to run a script that lacks its execute bit: its shebang's interpreter (with the
    optional argument), or the shell when it has none; None for a binary."""
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        interpreter, _, argument = line.partition(" ")
        return [interpreter, *([argument.strip()] if argument.strip() else []), path]
    if head.startswith(b"\x7fELF") or b"\0" in head:
        return None
    return ["/bin/sh", path]


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _describe(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def _register(pid: int) -> None:
    # PID 1's zombie reaper (linux.OrphanReaper) must leave this child to the loop's watcher.
    from aleph_runtime.guest import linux

    linux.MANAGED_CHILDREN.add(pid)


def _unregister(pid: int) -> None:
    from aleph_runtime.guest import linux

    linux.MANAGED_CHILDREN.discard(pid)
