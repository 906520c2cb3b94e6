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
import select
import signal
import threading
import time
import traceback
import typing
from pathlib import Path

from aleph_runtime import __version__, protocol
from aleph_runtime.guest import linux, stdio
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
        #: The calls in progress, each with its watch (see _watch_lasting_calls).
        self._calls: set[_CallWatch] = set()

    # --- the connection loop ---

    async def serve(self) -> None:
        watcher = asyncio.get_running_loop().create_task(self._watch_lasting_calls())
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
        """Send what the coroutine `work` returns, watching the connection meanwhile: when
        the host closes it (its `seconds` passed, its client went away), the work is
        cancelled, which drops a call's body and response buffers and closes an
        executable's connection to the program."""
        handler = asyncio.current_task()
        watch = _CallWatch(reader, writer, handler, getattr(self.transport, "half_close_passes", True))
        self._calls.add(watch)
        try:
            answer = await work
        except asyncio.CancelledError:
            if not watch.host_gone:
                raise
            handler.uncancel()
            logger.info("The host closed a call's connection before the answer: the call is cancelled")
            return
        finally:
            self._calls.discard(watch)
            watch.stop()
        await self._send(writer, answer)

    async def _watch_lasting_calls(self) -> None:
        """Start watching each call that has run for WATCH_AFTER to 2 x WATCH_AFTER
        seconds: most calls answer sooner, and for them the watch costs a set insertion
        instead of a task or a timer."""
        while True:
            await asyncio.sleep(WATCH_AFTER)
            for watch in list(self._calls):
                if watch.aged:
                    watch.start()
                else:
                    watch.aged = True

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
        await self._answer_watched(reader, writer, self._command_output(first[1:].decode("utf-8", "replace")))

    async def _command_output(self, command: str) -> bytes:
        """A debug command's combined output, bounded like a response; killed (with its
        process group) when it outgrows it, or when the host gives up on it."""
        logger.info("Debug command: %s", command)
        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        linux.MANAGED_CHILDREN.add(process.pid)  # its status is the loop's watcher's, not the reaper's
        limit = self.settings.max_response_bytes
        output = bytearray()
        try:
            while chunk := await process.stdout.read(protocol.READ_CHUNK):
                output += chunk
                if len(output) > limit:
                    del output[limit:]
                    output += f"\n[output cut: {protocol.response_too_large(limit)}]\n".encode()
                    _kill_group(process.pid)
                    # Its pipe stops being read here, maybe paused by flow control with
                    # the EOF unseen, and asyncio's wait() also waits for the pipes to
                    # close: close them, or wait() can hang on a full buffer.
                    process._transport.close()
                    break
            await process.wait()
        except asyncio.CancelledError:
            _kill_group(process.pid)
            raise
        finally:
            linux.MANAGED_CHILDREN.discard(process.pid)
        if process.returncode:
            # Today's runtime prefixes a failing command's output with the error.
            output[0:0] = (
                f"Command '{command}' returned non-zero exit status {process.returncode}.\n".encode()
            )
        return bytes(output)

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


#: A call is watched for its host's going away once it has run this long (up to twice).
WATCH_AFTER = 0.25


class _CallWatch:
    """Cancels a call's task when the host has closed the call's connection."""

    __slots__ = ("aged", "call", "half_close_passes", "host_gone", "reader", "task", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        call: asyncio.Task,
        half_close_passes: bool,
    ):
        self.reader = reader
        self.writer = writer
        self.call = call
        self.half_close_passes = half_close_passes
        self.aged = False
        self.task: asyncio.Task | None = None
        self.host_gone = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            await _host_gone(self.reader, self.writer, self.half_close_passes)
        except Exception:
            # A bug of ours must not cost the call its answer.
            logger.exception("Watching a call's connection failed")
            return
        self.host_gone = True
        self.call.cancel()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _host_gone(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close_passes: bool
) -> None:
    """Return when the host has closed the connection; bytes it sends meanwhile are dropped.

    The supervisor never half-closes a call, but where a half-close can arrive (a Unix
    socket, in dev mode) a client that shuts down only its writing side still reads
    the answer: there EOF is not enough, the peer must have hung up (POLLHUP), which a
    half-closed connection shows only once it is closed.
    """
    try:
        while await reader.read(protocol.READ_CHUNK):
            pass
    except OSError:
        return  # reset: gone
    if not half_close_passes:
        return
    while not _peer_hung_up(writer):
        await asyncio.sleep(HALF_CLOSED_POLL_INTERVAL)


#: How often a half-closed call's connection is checked for the host's full close.
HALF_CLOSED_POLL_INTERVAL = 1.0


def _peer_hung_up(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or writer.is_closing():
        return True
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
    except (OSError, ValueError):
        return True  # no descriptor left: closed
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, events in poller.poll(0))
