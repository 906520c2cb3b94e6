"""A private `redis-server` for the guest API's cache, on a Unix socket in the state directory.

A compute node keeps program caches in its own Redis; the local node starts one of its
own (no TCP port, so it never clashes with a system Redis) unless it is given a Redis
URL. The server is tied to the process that started it: it gets SIGTERM when its
parent dies (PR_SET_PDEATHSIG), so a killed `aleph-runtime` leaves no Redis behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from aleph_runtime.host.children import die_with_parent


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start."""


class RedisServer:
    """`redis-server` listening only on `<directory>/redis.sock`.

    `persistent=True` keeps the data in `<directory>/dump.rdb` across restarts (saved at
    shutdown and every minute when something changed), as a node's Redis keeps program
    caches across VM restarts; `False` keeps everything in memory.

        async with RedisServer(state_dir / "redis") as server:
            redis = redis.asyncio.from_url(server.url)
    """

    def __init__(
        self, directory: str | os.PathLike, persistent: bool = True, executable: str = "redis-server"
    ):
        self.directory = Path(directory)
        self.persistent = persistent
        self.executable = executable
        self.socket_path = self.directory / "redis.sock"
        self.log_path = self.directory / "redis.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The redis-py URL of this server (`unix:///.../redis.sock`)."""
        return f"unix://{self.socket_path}"

    def command(self) -> list[str]:
        binary = shutil.which(self.executable)
        if binary is None:
            raise RedisServerError(
                f"{self.executable} not found: install Debian's redis-server package (scripts/setup.sh does)"
            )
        return [
            binary,
            "--port", "0",  # no TCP at all
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--dbfilename", "dump.rdb",
            "--save", "60 1" if self.persistent else "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    async def start(self, timeout: float = 10) -> RedisServer:
        if self.process is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        # Paths of Unix sockets are limited to 107 bytes.
        if len(os.fsencode(self.socket_path)) > 107:
            raise RedisServerError(f"state directory path too long for a Unix socket: {self.socket_path}")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM),  # SIGTERM: Redis saves first
            # Its own session: a terminal's Ctrl-C must reach only the tool, which stops
            # Redis after the program has halted (its shutdown may still use the cache).
            start_new_session=True,
        )
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.process is not None
        while True:
            if self.process.returncode is not None:
                raise RedisServerError(
                    f"redis-server exited with status {self.process.returncode}; see {self.log_path}"
                )
            if self.socket_path.exists() and await self._ping():
                return
            if loop.time() > deadline:
                raise RedisServerError(
                    f"redis-server did not answer on {self.socket_path} within {timeout} s"
                )
            await asyncio.sleep(0.02)

    async def _ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)) == b"+PONG\r\n"
        except (TimeoutError, OSError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM (Redis saves then exits), SIGKILL after `timeout`; the socket file is removed."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def __aenter__(self) -> RedisServer:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
