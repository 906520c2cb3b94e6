"""PID 1 of a program VM: configure, start the program, serve the supervisor, halt.

The init's life, one state at a time (`InitState`): it listens on port 52, sends the
ready signal, takes ONE configuration, then serves calls concurrently until `halt` (or
SIGTERM/SIGINT), and finally syncs, unmounts and reboots (in a VM) or exits (dev
mode). Nothing that arrives on a connection may kill it: every handler maps its
failure to an answer, and anything that escapes is logged.

System duties (hostname, volumes, network, SSH, reboot) run only when the init owns a
system: PID 1, in a VM or in a test's private namespaces. As an ordinary process (dev
mode) it touches no system file: its files live under a private root directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
import traceback
from pathlib import Path

from aleph_runtime import __version__, protocol
from aleph_runtime.guest.config import Config, ConfigError, Interface, parse_config
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.settings import Settings

logger = logging.getLogger("aleph_runtime.init")

#: How long the program gets to stop at halt (lifespan shutdown, or SIGTERM before
#: SIGKILL): the supervisor gives the whole halt 5 s, and the volumes come after it.
STOP_GRACE = 2.5


class InitState(enum.Enum):
    WAITING_CONFIG = enum.auto()
    """Listening; no configuration received yet. Calls are answered with an error."""
    CONFIGURING = enum.auto()
    """A configuration is being applied; a second one is refused."""
    SERVING = enum.auto()
    """The program runs; calls are served concurrently."""
    FAILED = enum.auto()
    """The configuration failed; calls get that error, halt still works."""
    HALTING = enum.auto()
    """Stopping the program and unmounting; new calls are refused."""


class AsgiProgram:
    def __init__(self, app, lifespan, data_export):
        self.app = app
        self.lifespan = lifespan
        self.data_export = data_export

    async def handle(self, scope: dict) -> bytes:
        from aleph_runtime.guest.asgi import run_cycle

        return await run_cycle(self.app, scope, self.lifespan.app_state, self.data_export.acollect)

    async def stop(self, grace: float) -> None:
        await self.lifespan.shutdown(grace)


class Init:
    def __init__(self, transport, paths: Paths, system: bool, settings: Settings | None = None):
        self.transport = transport
        self.paths = paths
        self.system = system
        self.settings = settings or Settings()
        self.state = InitState.WAITING_CONFIG
        self.config: Config | None = None
        self.program = None
        self.failure = ""
        self.mounted_volumes: list = []
        self.bridge = None
        self.halted = asyncio.Event()
        self._halt_task: asyncio.Task | None = None

    # --- the connection loop ---

    async def serve(self) -> None:
        await self.transport.start_server(self.handle_connection)
        logger.info("Listening on %s", self.transport.description)
        await self.transport.send_ready(protocol.ready_signal(__version__))
        logger.info("Ready signal sent")
        await self.halted.wait()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(protocol.READ_CHUNK)
            if not first:
                return
            kind = protocol.classify_request(first[0])
            if kind is protocol.RequestKind.RUN:
                await self._answer_run(reader, writer, first)
            elif kind is protocol.RequestKind.CONFIG:
                await self._answer_config(reader, writer, first)
            elif kind is protocol.RequestKind.HALT:
                await self._answer_halt(reader, writer, first)
            else:
                await self._answer_command(writer, first)
        except protocol.ProtocolError as error:
            logger.warning("Refused a request: %s", error)
            await self._send(writer, protocol.init_error_answer(f"ProtocolError: {error}"))
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            logger.warning("Connection lost: %s", error)
        except Exception:
            logger.exception("Unexpected error while handling a connection")
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()

    # --- configuration ---

    async def _answer_config(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        try:
            payload = await protocol.read_config(reader, first, self.settings.max_request_bytes)
        except protocol.RequestTooLarge as error:
            await self._send(writer, protocol.config_failure(str(error)))
            return
        await self._send(writer, await self.configure(payload))

    async def configure(self, payload: bytes) -> bytes:
        if self.state is not InitState.WAITING_CONFIG:
            return protocol.config_failure(f"the init is already configured (state {self.state.name})")
        self.state = InitState.CONFIGURING
        started = time.monotonic()
        try:
            try:
                data = protocol.unpack(payload)
            except Exception as error:
                raise ConfigError(f"the configuration is not valid msgpack: {error}") from None
            config = parse_config(data)
            self.config = config
            await self._apply(config)
        except Exception as error:
            detail = getattr(error, "detail", "") or traceback.format_exc()
            message = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
            logger.error("Configuration failed: %s", message)
            self.failure = message
            self.state = InitState.FAILED
            return protocol.config_failure(message, detail)
        self.state = InitState.SERVING
        logger.info("Program started (%s, %s) in %.0f ms", config.interface.value, config.encoding.value,
                    (time.monotonic() - started) * 1000)
        return protocol.config_success()

    def _environment(self, config: Config) -> dict[str, str]:
        socket_path = str(self.paths.guest_api_socket)
        return {
            **config.variables,
            "ALEPH_INIT_VERSION": protocol.PROTOCOL_VERSION,
            "ALEPH_API_HOST": "http://localhost",
            "ALEPH_API_UNIX_SOCKET": socket_path,
            "ALEPH_REMOTE_CRYPTO_HOST": "http://localhost",
            "ALEPH_REMOTE_CRYPTO_UNIX_SOCKET": socket_path,
            "ALEPH_ADDRESS_TO_USE": config.hostname,
        }

    async def _apply(self, config: Config) -> None:
        os.environ.update(self._environment(config))
        if self.system:
            await self._apply_system(config)
        elif config.volumes and self.paths.root != Path("/"):
            # With root "/" (dev mode in private namespaces) the host has put them in place.
            logger.warning("Dev mode: volumes are not mounted; their content is expected under %s", self.paths.root)
        await self._start_guest_api_bridge()
        if config.input_data:
            from aleph_runtime.guest.data import unpack_input_data

            unpack_input_data(config.input_data, str(self.paths.data), self.settings.max_unpacked_bytes)
        if self.system and config.authorized_keys:
            from aleph_runtime.guest.ssh import setup_ssh

            setup_ssh(config.authorized_keys, str(self.paths.root))

        from aleph_runtime.guest.code import unpack_code

        code_directory = unpack_code(config, self.paths, self.settings.max_unpacked_bytes)
        if config.interface is Interface.ASGI:
            self.program = await self._start_asgi(config, code_directory)
        else:
            self.program = await self._start_executable(config)

    async def _apply_system(self, config: Config) -> None:
        from aleph_runtime.guest import linux, network, volumes

        try:
            linux.sethostname(config.hostname)
        except OSError as error:
            logger.warning("Could not set the hostname: %s", error)
        self.mounted_volumes = volumes.mount_volumes(config.volumes, dev_dir=str(self.paths.inside("/dev")))
        network.configure_network(config.network, resolv_conf=str(self.paths.inside("/etc/resolv.conf")))

    async def _start_guest_api_bridge(self) -> None:
        from aleph_runtime.guest.guest_api_bridge import start_guest_api_bridge

        path = self.paths.guest_api_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        self.bridge = await start_guest_api_bridge(self.transport.open_host_connection, str(path))

    async def _start_asgi(self, config: Config, code_directory: Path) -> AsgiProgram:
        from aleph_runtime.guest.asgi import Lifespan
        from aleph_runtime.guest.code import load_asgi_app

        app = load_asgi_app(config, self.paths, code_directory)
        lifespan = Lifespan(app)
        try:
            await lifespan.startup(self.settings.lifespan_startup_timeout)
        except RuntimeError as error:
            raise ConfigError(str(error)) from None
        return AsgiProgram(app, lifespan, self._data_export())

    def _data_export(self):
        """/data is exported after every call whenever it is not empty, as today, even when
        the program created it itself; an empty or missing /data costs a few µs."""
        from aleph_runtime.guest.data import DataExport

        return DataExport(str(self.paths.data))

    async def _start_executable(self, config: Config):
        from aleph_runtime.guest.code import executable_path
        from aleph_runtime.guest.executable import ExecutableProgram

        path = executable_path(config, self.paths)
        if not path.is_file():
            raise ConfigError(f"the entrypoint {config.entrypoint!r} is not a file of the code")
        program = ExecutableProgram(str(path), env=dict(os.environ), cwd=str(self.paths.code))
        program.data_export = self._data_export()
        await program.start()
        return program

    # --- calls ---

    async def _answer_run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        try:
            request = await protocol.read_run_request(reader, first, self.settings.max_request_bytes)
        except protocol.ProtocolError as error:
            logger.warning("Refused a call: %s", error)
            await self._send(writer, protocol.init_error_answer(str(error)))
            if isinstance(error, protocol.RequestTooLarge):
                await self._discard_rest(reader, writer)
            return
        await self._send(writer, await self.run(request))

    async def _discard_rest(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Let the host finish writing a refused request, so it reads our answer, not a reset.

        The supervisor drains its whole write before it reads, and never half-closes:
        we end our side (EOF tells it the answer is complete) and swallow its bytes.
        """
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(60):
                while await reader.read(protocol.READ_CHUNK):
                    pass

    async def run(self, request: object) -> bytes:
        scope = request.get("scope") if isinstance(request, dict) else None
        if not isinstance(scope, dict):
            return protocol.init_error_answer("malformed run request: expected a map with a 'scope' map")
        if self.state is not InitState.SERVING:
            reason = f"the program failed to start: {self.failure}" if self.state is InitState.FAILED else (
                f"the init is not serving (state {self.state.name})")
            return protocol.init_error_answer(reason)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Call %s %s", scope.get("method"), scope.get("path"))
        return await self.program.handle(scope)

    async def _answer_command(self, writer: asyncio.StreamWriter, first: bytes) -> None:
        command = first[1:].decode("utf-8", "replace")
        logger.info("Debug command: %s", command)
        from aleph_runtime.guest import linux

        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        linux.MANAGED_CHILDREN.add(process.pid)  # its status is the loop's watcher's, not the reaper's
        try:
            output, _ = await process.communicate()
        finally:
            linux.MANAGED_CHILDREN.discard(process.pid)
        if process.returncode:
            # Today's runtime prefixes a failing command's output with the error.
            output = f"Command '{command}' returned non-zero exit status {process.returncode}.\n".encode() + output
        await self._send(writer, output)

    # --- halt ---

    async def _answer_halt(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        await protocol.read_halt(reader, first)
        logger.info("Halt requested by the host")
        await self.halt(writer)

    def request_halt(self, reason: str) -> None:
        """Halt without a host connection (SIGTERM, SIGINT)."""
        logger.info("Halt requested by %s", reason)
        if self._halt_task is None:
            self._halt_task = asyncio.get_running_loop().create_task(self.halt(None))

    async def halt(self, writer: asyncio.StreamWriter | None) -> None:
        if self.state is InitState.HALTING:
            if writer is not None:
                # A second halt while halting: answer when the first one is done.
                await self.halted.wait()
                await self._send(writer, protocol.STOP_LINE + protocol.STOPZ_LINE)
            return
        self.state = InitState.HALTING
        try:
            if self.program is not None:
                await self.program.stop(grace=STOP_GRACE)
        except Exception:
            logger.exception("Error while stopping the program")
        if writer is not None:
            await self._send(writer, protocol.STOP_LINE)
        try:
            if self.bridge is not None:
                self.bridge.close()
                self.paths.guest_api_socket.unlink(missing_ok=True)
            if self.mounted_volumes:
                from aleph_runtime.guest.volumes import unmount_volumes

                unmount_volumes(self.mounted_volumes)
            os.sync()
        except Exception:
            logger.exception("Error while unmounting the volumes")
        if writer is not None:
            await self._send(writer, protocol.STOPZ_LINE)
        logger.info("Halted")
        self.halted.set()


def install_signal_handlers(init: Init) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, init.request_halt, signal.Signals(signum).name)


async def reap_orphans_forever(interval: float = 1.0) -> None:
    """PID 1 adopts every orphan; reap those nobody else waits for.

    Peek with WNOWAIT first: a child the event loop's own watcher waits for (a debug
    command, the executable program) must be left for it, or its exit status is lost.
    """
    from aleph_runtime.guest import linux

    while True:
        await asyncio.sleep(interval)
        linux.reap_children()
