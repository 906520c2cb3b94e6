"""PID 1 of a program VM: configure, start the program, serve the supervisor, halt.

The init's life, one state at a time (`InitState`): it listens on port 52, sends the
ready signal, takes ONE configuration, then serves calls concurrently until `halt` (or
SIGTERM/SIGINT), and finally syncs, unmounts and reboots (in a VM) or exits (dev
mode). Nothing that arrives on a connection may kill it: every handler maps its
failure to an answer, and anything that escapes is logged.

`Init.handle_connection` dispatches each connection by its first byte; a call or a
debug command the host gives up on is cancelled (guest/call_watch.py), and debug
commands are read and run by guest/debug_command.py.

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
import threading
import time
import traceback
import typing
from pathlib import Path

from aleph_runtime import __version__, protocol
from aleph_runtime.guest import debug_command, linux, stdio
from aleph_runtime.guest.call_watch import CallWatches
from aleph_runtime.guest.code import Paths, executable_path, load_asgi_app, unpack_code
from aleph_runtime.guest.config import Config, ConfigError, Interface, parse_config
from aleph_runtime.guest.settings import Settings

logger = logging.getLogger("aleph_runtime.init")

#: The packed answer may exceed the body's cap by its headers and /data's zip; beyond
#: this slack it is refused too (an event's answer, which has no body cap, included).
ANSWER_SLACK_BYTES = 16 * 2**20
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


class Program(typing.Protocol):
    """What the init needs of a running program: `asgi.AsgiProgram` or `executable.ExecutableProgram`."""

    async def handle(self, scope: dict) -> bytes:
        """One call's packed answer (`protocol.run_answer`, `event_answer` or `error_answer`)."""

    async def stop(self, grace: float) -> None:
        """Stop within about `grace` seconds; never raise."""


class Init:
    def __init__(self, transport, paths: Paths, system: bool, settings: Settings | None = None):
        self.transport = transport
        self.paths = paths
        self.system = system
        self.settings = settings or Settings()
        self.state = InitState.WAITING_CONFIG
        self.config: Config | None = None
        self.program: Program | None = None
        self.failure = ""
        self.failure_detail = ""
        self.mounted_volumes: list = []
        self.bridge = None
        self.halted = asyncio.Event()
        self._halt_task: asyncio.Task | None = None
        #: The calls in progress, each with its watch (guest/call_watch.py).
        self.watches = CallWatches(getattr(transport, "half_close_passes", True))

    # --- the connection loop ---

    async def serve(self) -> None:
        watcher = asyncio.get_running_loop().create_task(self.watches.watch_lasting_calls())
        try:
            await self.transport.start_server(self.handle_connection)
            logger.info("Listening on %s", self.transport.description)
            if not self.transport.ready_sent:  # guest/ready.py could not send it before the imports
                await self.transport.send_ready(protocol.ready_signal(__version__))
                logger.info("Ready signal sent")
            await self.halted.wait()
        finally:
            watcher.cancel()

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
                await self._answer_command(reader, writer, first)
        except protocol.ProtocolError as error:
            logger.warning("Refused a request: %s", error)
            await self._send(writer, protocol.init_error_answer(f"ProtocolError: {error}"))
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            logger.warning("Connection lost: %s", error)
        except Exception:
            logger.exception("Unexpected error while handling a connection")
        finally:
            writer.close()
            # The program may have closed 0, 1 or 2 during the call: refill them before
            # anything of ours (the next accepted connection) can land there.
            stdio.reserve()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()

    # --- configuration ---

    async def _answer_config(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        try:
            payload = await protocol.read_config(reader, first, self.settings.max_request_bytes)
        except protocol.RequestTooLarge as error:
            await self._send(writer, protocol.config_failure(str(error)))
            return
        except asyncio.IncompleteReadError as error:
            # A peer that half-closed still reads: tell it, and wait for a whole one.
            await self._send(
                writer,
                protocol.config_failure(
                    f"the connection ended after {len(error.partial)} bytes of the configuration"
                ),
            )
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
            except protocol.UNPACK_ERRORS as error:
                raise ConfigError(f"the configuration is not valid msgpack: {error}") from None
            config = parse_config(data)
            self.config = config
            await self._apply(config)
        except Exception as error:  # noqa: BLE001 - any failure is the config's answer; PID 1 goes on
            detail = getattr(error, "detail", "") or traceback.format_exc()
            message = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
            logger.error("Configuration failed: %s", message)
            self.failure = message
            self.failure_detail = detail
            if self.state is not InitState.HALTING:
                self.state = InitState.FAILED
            return protocol.config_failure(message, detail)
        self.state = InitState.SERVING
        logger.info(
            "Program started (%s, %s) in %.0f ms",
            config.interface.value,
            config.encoding.value,
            (time.monotonic() - started) * 1000,
        )
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
            # The guest API signs only messages whose address is the VM's item hash
            # (hex), and the SDK writes this variable into every message it posts.
            "ALEPH_ADDRESS_TO_USE": config.vm_hash,
        }

    async def _apply(self, config: Config) -> None:
        os.environ.update(self._environment(config))
        if self.system:
            await self._apply_system(config)
        elif config.volumes and self.paths.root != Path("/"):
            # With root "/" (dev mode in private namespaces) the host has put them in place.
            logger.warning(
                "Dev mode: volumes are not mounted; their content is expected under %s", self.paths.root
            )
        await self._start_guest_api_bridge()
        # Unpacking and key setup can take minutes (150,000 entries, host keys): they run
        # off the loop, which keeps answering, `halt` above all.
        if config.input_data:
            from aleph_runtime.guest.data import unpack_input_data

            await _off_loop(
                unpack_input_data, config.input_data, str(self.paths.data), self.settings.max_unpacked_bytes
            )
            self._stop_if_halting()
        if self.system and config.authorized_keys:
            from aleph_runtime.guest.ssh import setup_ssh

            await _off_loop(setup_ssh, config.authorized_keys, str(self.paths.root))
            self._stop_if_halting()

        code_directory = await _off_loop(unpack_code, config, self.paths, self.settings.max_unpacked_bytes)
        self._stop_if_halting()
        if config.interface is Interface.ASGI:
            self.program = await self._start_asgi(config, code_directory)
        else:
            self.program = await self._start_executable(config)
        if self.state is InitState.HALTING:
            # The halt found no program to stop: stop it here, bounded as at halt.
            await self.program.stop(STOP_GRACE)
            self._stop_if_halting()

    def _stop_if_halting(self) -> None:
        if self.state is InitState.HALTING:
            raise ConfigError("the init was halted while the configuration was applied")

    async def _apply_system(self, config: Config) -> None:
        from aleph_runtime.guest import network, volumes

        for problem in linux.add_dev_links(str(self.paths.inside("/dev"))):
            logger.warning("%s", problem)
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

    async def _start_asgi(self, config: Config, code_directory: Path) -> Program:
        from aleph_runtime.guest.asgi import AsgiProgram, Lifespan, LifespanFailure

        if "ALEPH_DEBUG_PORT" in config.variables:  # set by run --debug only (guest/debugger.py)
            from aleph_runtime.guest import debugger

            await _off_loop(debugger.start_from_variables, config.variables)
        app = load_asgi_app(config, self.paths, code_directory)
        lifespan = Lifespan(app)
        try:
            await lifespan.startup(self.settings.lifespan_startup_timeout)
        except LifespanFailure as error:
            raise ConfigError(str(error)) from None
        return AsgiProgram(app, lifespan, self._data_export(), self.settings.max_response_bytes)

    def _data_export(self):
        """/data is exported after every call whenever it is not empty, as today, even when
        the program created it itself; an empty or missing /data costs a few µs."""
        from aleph_runtime.guest.data import DataExport

        return DataExport(str(self.paths.data))

    async def _start_executable(self, config: Config):
        from aleph_runtime.guest.executable import ExecutableProgram

        path = executable_path(config, self.paths)
        if not path.is_file():
            raise ConfigError(f"the entrypoint {config.entrypoint!r} is not a file of the code")
        program = ExecutableProgram(str(path), env=dict(os.environ), cwd=str(self.paths.code))
        program.data_export = self._data_export()
        program.max_response_bytes = self.settings.max_response_bytes
        await program.start()
        return program

    # --- calls ---

    async def _answer_run(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        try:
            request = await protocol.read_run_request(reader, first, self.settings.max_request_bytes)
        except protocol.ProtocolError as error:
            logger.warning("Refused a call: %s", error)
            await self._send(writer, protocol.init_error_answer(str(error)))
            if isinstance(error, protocol.RequestTooLarge):
                await self._discard_rest(reader, writer)
            return
        del first  # only the decoded request is needed from here on
        await self._answer_watched(reader, writer, self.run(request))

    async def _answer_watched(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, work) -> None:
        """Send what the coroutine `work` returns, unless the host closed the connection
        first: then `work` is cancelled (guest/call_watch.py)."""
        answer = await self.watches.answer_of(reader, writer, work)
        if answer is not None:
            await self._send(writer, answer)

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
            if self.state is InitState.FAILED:
                # The program's own failure: the supervisor shows the traceback as the 500's
                # body, so the start error's own traceback.
                return protocol.error_answer(
                    f"the program failed to start: {self.failure}", self.failure_detail
                )
            return protocol.init_error_answer(f"the init is not serving (state {self.state.name})")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Call %s %s", scope.get("method"), scope.get("path"))
        answer = await self.program.handle(scope)
        if len(answer) > self.settings.max_response_bytes + ANSWER_SLACK_BYTES:
            logger.warning("Refused an answer of %d bytes", len(answer))
            return protocol.error_answer(protocol.response_too_large(self.settings.max_response_bytes), "")
        return answer

    async def _answer_command(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        try:
            command = await debug_command.read_command(reader, writer, first, self.watches.half_close_passes)
        except debug_command.CommandRefused as error:
            logger.warning("Refused a debug command: %s", error)
            await self._send(writer, debug_command.refusal(error))
            return
        if command is None:
            logger.info("The host left before its debug command was whole: nothing run")
            return
        await self._answer_watched(
            reader, writer, debug_command.command_output(command, self.settings.max_response_bytes)
        )

    # --- halt ---

    async def _answer_halt(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
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


async def _off_loop(function, *arguments):
    """`function(*arguments)` in a daemon thread; the loop goes on meanwhile.

    Not the loop's executor: its threads are joined at exit, so a halt during a long
    extraction would wait for it; a daemon thread ends with the init.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = function(*arguments), None
        except BaseException as exception:  # noqa: BLE001 - handed to the awaiting task
            # SystemExit and the like would end the init: the step failed, nothing more.
            result, error = (
                None,
                exception
                if isinstance(exception, Exception)
                else RuntimeError(f"{type(exception).__name__}: {exception}"),
            )
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"init-{getattr(function, '__name__', 'step')}", daemon=True).start()
    return await future


def install_signal_handlers(init: Init) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, init.request_halt, signal.Signals(signum).name)


async def reap_orphans_forever(interval: float = 1.0, grace: float = linux.ORPHAN_GRACE) -> None:
    """PID 1 adopts every orphan; reap those nobody else waits for (`linux.OrphanReaper`:
    the program's own children are left to the program)."""
    reaper = linux.OrphanReaper(grace)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        reaper.sweep(loop.time())
