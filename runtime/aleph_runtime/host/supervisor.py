"""A host-side client that talks to an init exactly as the aleph-vm supervisor does.

It speaks Firecracker's hybrid vsock: the VM's vsock device is a Unix socket `<uds>` on
the host (connect, write `CONNECT <port>\\n`, read `OK <n>\\n`), and a guest connecting
to the host's port P reaches the Unix socket `<uds>_P`. Firecracker, our QEMU vsock
backend and the init's dev mode all present that layout, so this one client drives
all three. The tests, the benchmarks and the CLI use it; every exchange mirrors the
supervisor's own code byte for byte (same writes, same reads, same timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from aleph_runtime import protocol
from aleph_runtime.host.unix import close_unix_server


class InitError(RuntimeError):
    """The init answered with an error, or not as the protocol says."""


class ConfigurationRejected(InitError):
    def __init__(self, error: str, traceback: str):
        super().__init__(error)
        self.error = error
        self.traceback = traceback


@dataclass
class HaltResult:
    stopped: bool
    """The init answered `STOP`: the program was stopped."""
    shut_down: bool
    """The init answered `STOPZ`: volumes are synced and unmounted, the VM is going down."""
    lines: list[bytes] = field(default_factory=list)


class ReadySignal:
    """Listens on `<uds>_52` for the init's ready signal, as the supervisor does before boot.

    Create it (and `await start()`) BEFORE the VM or dev init starts, or the signal is lost.
    """

    def __init__(self, uds_path: str | os.PathLike):
        self.path = f"{uds_path}_{protocol.INIT_PORT}"
        self._received: asyncio.Future[bytes] | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> ReadySignal:
        self._received = asyncio.get_running_loop().create_future()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.path)
        return self

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(protocol.MAX_SINGLE_READ)
        finally:
            writer.close()
        if self._received is not None and not self._received.done():
            self._received.set_result(data)

    async def wait(self, timeout: float = 30) -> dict:
        """The signal's content; `{"version": "1.0.0"}` for an empty one, as the supervisor reads it."""
        if self._received is None:
            raise RuntimeError("ReadySignal.start() must be awaited before wait()")
        try:
            data = await asyncio.wait_for(asyncio.shield(self._received), timeout)
        finally:
            await self.close()
        if not data:
            return {"version": "1.0.0"}
        signal = protocol.unpack(data)
        if not isinstance(signal, dict):
            raise InitError(f"ready signal is not a map: {signal!r}")
        return signal

    async def close(self) -> None:
        await close_unix_server(self._server, self.path)
        self._server = None


class SupervisorClient:
    """The supervisor's side of port 52: configure, run, command, halt."""

    def __init__(self, uds_path: str | os.PathLike):
        self.uds_path = str(uds_path)

    def ready_signal(self) -> ReadySignal:
        return ReadySignal(self.uds_path)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # A large limit so readline() never trips on the 64 KiB default; reads of
        # answers use read(), which the limit does not bound.
        return await asyncio.open_unix_connection(path=self.uds_path, limit=2**20)

    async def configure(self, config: dict, timeout: float = 60) -> dict:
        """Send a config; raise ConfigurationRejected on `success: false`, as the supervisor
        aborts, and InitError when the init does not listen, or resets or closes the
        connection unanswered."""
        try:
            reader, writer = await self._open()
        except (ConnectionError, FileNotFoundError) as error:
            raise InitError(f"the init does not take its configuration ({error})") from error
        try:
            writer.write(protocol.connect_line(protocol.INIT_PORT) + protocol.frame_config(config))
            await writer.drain()
            await asyncio.wait_for(reader.readline(), timeout=timeout)
            raw = await asyncio.wait_for(reader.read(protocol.MAX_SINGLE_READ), timeout=timeout)
        except ConnectionError as error:
            # A Unix socket closed with unread bytes resets its peer: the init ended, or
            # dropped the connection, before it had read the configuration.
            raise InitError(f"the init reset the config connection before answering ({error})") from error
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if not raw:
            raise InitError("the init closed the config connection without answering")
        answer = protocol.unpack(raw)
        if not isinstance(answer, dict) or "success" not in answer:
            raise InitError(f"config answer is not {{success: ...}}: {answer!r}")
        if answer["success"] is False:
            raise ConfigurationRejected(answer.get("error", ""), answer.get("traceback", ""))
        return answer

    async def _exchange(self, request: bytes, timeout: float) -> bytes:
        """Write a request with no framing, skip the OK line, read until EOF: a call or a command."""
        reader, writer = await self._open()
        try:
            writer.write(protocol.connect_line(protocol.INIT_PORT) + request)
            await writer.drain()

            async def communicate() -> bytes:
                await reader.readline()
                return await reader.read()

            return await asyncio.wait_for(communicate(), timeout=timeout)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def run_raw(self, scope: dict, timeout: float = 60) -> bytes:
        """One call, exactly as the supervisor makes it; the raw answer (b"" when the init said nothing)."""
        return await self._exchange(protocol.run_request(scope), timeout)

    async def run(self, scope: dict, timeout: float = 60) -> dict:
        """One call, its answer unpacked (`headers`/`body`/... or `error`/`traceback`)."""
        raw = await self.run_raw(scope, timeout=timeout)
        if not raw:
            raise InitError("empty answer from the init (the supervisor would answer 502 and stop the VM)")
        answer = protocol.unpack(raw)
        if not isinstance(answer, dict):
            raise InitError(f"run answer is not a map: {answer!r}")
        return answer

    async def http(
        self,
        method: str,
        path: str,
        query_string: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        timeout: float = 60,
    ) -> dict:
        return await self.run(protocol.http_scope(method, path, query_string, headers, body), timeout=timeout)

    async def event(self, message: dict, timeout: float = 60) -> object:
        """Send an event; return what the supervisor returns, `result["body"]`."""
        answer = await self.run(protocol.event_scope(message), timeout=timeout)
        if "traceback" in answer:
            raise InitError(answer.get("error", "event failed"))
        return answer["body"]

    async def command(self, command_line: str, timeout: float = 30) -> bytes:
        """A `!command` debug call; its combined output."""
        return await self._exchange(protocol.COMMAND_PREFIX + command_line.encode(), timeout)

    async def halt(self, timeout: float = 5) -> HaltResult:
        """Halt as the supervisor does: `halt`, then the OK, STOP and STOPZ lines, 5 s in all."""
        lines: list[bytes] = []

        async def exchange() -> None:
            reader, writer = await self._open()
            try:
                writer.write(protocol.connect_line(protocol.INIT_PORT) + protocol.HALT)
                await writer.drain()
                await reader.readline()  # OK <n>
                for _ in range(2):
                    line = await reader.readline()
                    if not line:
                        break
                    lines.append(line)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, BrokenPipeError):
                    await writer.wait_closed()

        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, FileNotFoundError):
            await asyncio.wait_for(exchange(), timeout=timeout)
        return HaltResult(
            stopped=protocol.STOP_LINE in lines,
            shut_down=protocol.STOPZ_LINE in lines,
            lines=lines,
        )


async def wait_for_path(path: str | os.PathLike, timeout: float = 30) -> None:
    """Wait until a socket path exists (a dev-mode init binds its listening socket)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not Path(path).exists():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        await asyncio.sleep(0.01)
