"""The host <-> init wire format, as the aleph-vm supervisor speaks it.

Shared by the guest (the init) and the host (our supervisor client, CLI and tests), so
both sides agree on every byte. docs/protocol.md describes it section by section,
naming the aleph-vm code each part follows.

The init sends its ready signal with this module before the rest of its imports
(guest/ready.py says why): so importing it costs enum and nothing else. msgpack (which
imports datetime, for its Timestamp) and base64 (which imports re) load on first use,
after the signal: they were most of the instructions run before it. The ready signal,
a two-entry map, is encoded by hand for the same reason; the readers below take
asyncio's streams without importing asyncio.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the signal
if TYPE_CHECKING:
    import asyncio

    import msgpack as _msgpack_module

_msgpack = None
#: What msgpack raises on bytes that are not one complete msgpack object, or whose map
#: has a key Python cannot hash (an array or a map: TypeError). Set with _msgpack.
_unpack_errors: tuple[type[Exception], ...] = ()


def _codec():
    """msgpack, imported on first use."""
    global _msgpack, _unpack_errors
    if _msgpack is None:
        import msgpack

        _unpack_errors = (ValueError, TypeError, msgpack.UnpackException)
        _msgpack = msgpack
    return _msgpack


#: The version announced in the ready signal. It selects the V2 config format on the
#: supervisor's side; the supervisor ignores extra keys in the ready map.
PROTOCOL_VERSION = "2.0.0"

#: The vsock port the init listens on, and the one the ready signal goes to.
INIT_PORT = 52
#: The host port of the guest API (cache, signing, aleph API proxy).
GUEST_API_PORT = 53
#: Where a program reaches the guest API inside the VM (the init bridges it to
#: GUEST_API_PORT); programs and the SDK write this path literally.
GUEST_API_SOCKET = "/tmp/socat-socket"
#: Firecracker's fixed CIDs: the guest is 3, the host is VMADDR_CID_HOST.
GUEST_CID = 3
HOST_CID = 2

#: The supervisor reads the config answer (and the ready signal) in ONE read of this size.
MAX_SINGLE_READ = 1_000_000

HALT = b"halt"
STOP_LINE = b"STOP\n"
STOPZ_LINE = b"STOPZ\n"
COMMAND_PREFIX = b"!"
#: A debug command has no length and its host does not half-close: it has arrived whole
#: once no byte came for this long (docs/protocol.md, section 7, says why).
COMMAND_QUIET_SECONDS = 0.25
#: The longest wait for a whole debug command, however its bytes trickle in.
COMMAND_READ_SECONDS = 10.0
#: The longest debug command: `sh -c` takes it as one argument, and Linux refuses an
#: argument longer than MAX_ARG_STRLEN (32 pages of 4 KiB, its NUL included).
MAX_COMMAND_BYTES = 32 * 4096 - 1

#: The longest "CONNECT <port>\n" or "OK <port>\n" line we accept; anything longer is garbage.
MAX_CONTROL_LINE = 64


#: How much the init reads from a connection at a time.
READ_CHUNK = 1 << 20
#: The most digits a config's length line may have (a terabyte: far beyond any limit).
MAX_LENGTH_DIGITS = 12
#: How many bytes may come before the length line's newline before it is refused.
MAX_LENGTH_LINE = 20


def __getattr__(name: str) -> object:
    # UNPACK_ERRORS names msgpack's exception class: msgpack loads when it is first asked for.
    if name == "UNPACK_ERRORS":
        _codec()
        return _unpack_errors
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProtocolError(ValueError):
    """The peer sent bytes that are not the protocol."""


class RequestTooLarge(ProtocolError):
    """A config or run request larger than the receiver's limit."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"the {what} is larger than {limit} bytes")
        self.limit = limit


class Interface(enum.StrEnum):
    """How the init runs the program (aleph-message's `interface`)."""

    ASGI = "asgi"
    EXECUTABLE = "executable"

    @classmethod
    def named(cls, name: str) -> Interface | None:
        """The interface a name stands for: aleph-message calls the executable one "binary"."""
        return INTERFACE_NAMES.get(name)


class Encoding(enum.StrEnum):
    """How the program's code is sent (aleph-message's `encoding`; tar is ours)."""

    PLAIN = "plain"
    ZIP = "zip"
    SQUASHFS = "squashfs"
    TAR = "tar"

    @classmethod
    def named(cls, name: str) -> Encoding | None:
        """The encoding a name stands for, tar's compressed spellings included; any case."""
        return ENCODING_NAMES.get(name.lower())


#: The message's "binary" interface reaches the init as "executable"; both are accepted.
INTERFACE_NAMES = {"asgi": Interface.ASGI, "executable": Interface.EXECUTABLE, "binary": Interface.EXECUTABLE}
#: Names accepted for each encoding. aleph-message knows plain/zip/squashfs; tar is ours.
ENCODING_NAMES = {
    "plain": Encoding.PLAIN,
    "zip": Encoding.ZIP,
    "squashfs": Encoding.SQUASHFS,
    "tar": Encoding.TAR,
    "tar.gz": Encoding.TAR,
    "tar.gzip": Encoding.TAR,
    "tgz": Encoding.TAR,
    "tar.bz2": Encoding.TAR,
    "tar.xz": Encoding.TAR,
}


def interface_for(entrypoint: str) -> Interface:
    """The supervisor's rule: only Python ASGI entrypoints contain a colon."""
    return Interface.ASGI if ":" in entrypoint else Interface.EXECUTABLE


def hostname(vm_hash: str) -> str:
    """The VM's hostname, and the label a node serves it under: base32 of the binary
    hash, lower case, unpadded (a hex hash is too long for a DNS label)."""
    import base64

    return base64.b32encode(bytes.fromhex(vm_hash)).decode().rstrip("=").lower()


def pack(obj: object) -> bytes:
    """msgpack as the supervisor writes it: str as str, bytes as bin."""
    return (_msgpack or _codec()).packb(obj, use_bin_type=True)


def unpack(data: bytes) -> object:
    """msgpack as the supervisor reads it: str decoded, bin kept as bytes."""
    return (_msgpack or _codec()).unpackb(data, raw=False, strict_map_key=False)


def new_unpacker(max_buffer_size: int = 0) -> _msgpack_module.Unpacker:
    """A streaming unpacker for run requests, which arrive with no length prefix."""
    return _codec().Unpacker(raw=False, strict_map_key=False, max_buffer_size=max_buffer_size)


def _pack_short_str(text: str) -> bytes:
    """msgpack's encoding of a str shorter than 64 KiB (fixstr, str8 or str16)."""
    data = text.encode()
    if len(data) < 32:
        return bytes((0xA0 | len(data),)) + data
    if len(data) < 256:
        return bytes((0xD9, len(data))) + data
    if len(data) < 65536:
        return bytes((0xDA,)) + len(data).to_bytes(2, "big") + data
    raise ValueError("a string of 64 KiB or more has no place in the ready signal")


# --- the hybrid-vsock control lines (Firecracker's host-side Unix socket) ---


def connect_line(port: int) -> bytes:
    return b"CONNECT %d\n" % port


def ok_line(port: int) -> bytes:
    return b"OK %d\n" % port


def _parse_port_line(line: bytes, keyword: bytes) -> int:
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 2 or parts[0] != keyword or not parts[1].isdigit():
        raise ProtocolError(f"expected {keyword.decode()} <port>, got {line[:MAX_CONTROL_LINE]!r}")
    return int(parts[1])


def parse_connect_line(line: bytes) -> int:
    return _parse_port_line(line, b"CONNECT")


def parse_ok_line(line: bytes) -> int:
    return _parse_port_line(line, b"OK")


# --- what the host sends on port 52 ---


class RequestKind(enum.Enum):
    """What a connection to port 52 carries, told from its first byte."""

    CONFIG = "config"
    """`<decimal length>\\n` then msgpack(config): the first connection after boot."""
    RUN = "run"
    """msgpack({"scope": ...}) with no length prefix and no half-close."""
    HALT = "halt"
    """The four bytes `halt`."""
    COMMAND = "command"
    """`!<command line>`: a debug shell command."""


def classify_request(first_byte: int) -> RequestKind:
    """Tell a request's kind from its first byte, whatever order requests come in.

    A msgpack map starts with 0x80-0x8f (fixmap), 0xde or 0xdf; a config starts with
    an ASCII digit; halt with `h`; a command with `!`.
    """
    if 0x30 <= first_byte <= 0x39:
        return RequestKind.CONFIG
    if 0x80 <= first_byte <= 0x8F or first_byte in (0xDE, 0xDF):
        return RequestKind.RUN
    if first_byte == HALT[0]:
        return RequestKind.HALT
    if first_byte == COMMAND_PREFIX[0]:
        return RequestKind.COMMAND
    raise ProtocolError(f"unknown request starting with byte 0x{first_byte:02x}")


def frame_config(config: dict) -> bytes:
    """A config as the supervisor sends it: decimal length, newline, msgpack."""
    payload = pack(config)
    return b"%d\n" % len(payload) + payload


async def read_config(reader: asyncio.StreamReader, first: bytes, max_bytes: int) -> bytes:
    """The msgpack payload of a framed config whose first bytes are `first`.

    Raises RequestTooLarge (before reading the payload) when the length line announces
    more than `max_bytes`, ProtocolError for a length line that is not one, and
    asyncio.IncompleteReadError when the connection ends early.
    """
    buffer = bytearray(first)
    newline = buffer.find(b"\n")
    while newline < 0:
        if len(buffer) > MAX_LENGTH_LINE:
            raise ProtocolError(f"config length line too long: {bytes(buffer[:MAX_LENGTH_LINE])!r}")
        more = await reader.read(READ_CHUNK)
        if not more:
            import asyncio  # loaded already: a reader is asyncio's

            raise asyncio.IncompleteReadError(bytes(buffer), None)
        buffer += more
        newline = buffer.find(b"\n")
    length_text = bytes(buffer[:newline])
    if not length_text.isdigit() or len(length_text) > MAX_LENGTH_DIGITS:
        raise ProtocolError(f"config length line is not a number: {length_text[:MAX_LENGTH_LINE]!r}")
    length = int(length_text)
    if length > max_bytes:
        raise RequestTooLarge("configuration", max_bytes)
    payload = buffer[newline + 1 :]
    if len(payload) < length:
        payload += await reader.readexactly(length - len(payload))
    return bytes(payload[:length])


def run_request(scope: dict) -> bytes:
    return pack({"scope": scope})


async def read_run_request(reader: asyncio.StreamReader, first: bytes, max_bytes: int) -> object:
    """The decoded run request whose first bytes are `first`.

    The supervisor sends it with no length prefix and never half-closes: the request
    ends where its msgpack object does. Most arrive in one read and are decoded at
    once; bigger ones are streamed into an unpacker bounded by `max_bytes`. Raises
    RequestTooLarge beyond it, ProtocolError for bytes that are not msgpack or a
    connection that ends first.
    """
    msgpack = _msgpack or _codec()
    unpack_errors = _unpack_errors
    try:
        return unpack(first)
    except unpack_errors:
        pass  # incomplete (or broken: the unpacker below says which)
    unpacker = new_unpacker(max_buffer_size=max_bytes)
    chunk = first
    while True:
        try:
            unpacker.feed(chunk)
            return unpacker.unpack()
        except msgpack.OutOfData:
            pass
        except msgpack.BufferFull:
            raise RequestTooLarge("request", max_bytes) from None
        except unpack_errors as error:  # FormatError, StackError, an unhashable map key...
            raise ProtocolError(f"malformed run request: {type(error).__name__}: {error}") from None
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            raise ProtocolError("the connection closed before a complete run request arrived")


def http_scope(
    method: str,
    path: str,
    query_string: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> dict:
    """A scope exactly as the supervisor builds it: not a full ASGI scope, body inside."""
    return {
        "type": "http",
        "path": path,
        "method": method,
        "query_string": query_string,
        "headers": [(name.lower(), value) for name, value in (headers or [])],
        "body": body,
    }


def event_scope(message: dict) -> dict:
    """An aleph message delivered to the program, as the supervisor's reactor sends it."""
    return {"type": "aleph.message", "body": message}


async def read_halt(reader: asyncio.StreamReader, first: bytes) -> None:
    """Read the rest of `halt` after its first bytes; ProtocolError for anything else."""
    received = bytearray(first)
    while len(received) < len(HALT) and HALT.startswith(bytes(received)):
        more = await reader.read(len(HALT) - len(received))
        if not more:
            break
        received += more
    if not bytes(received).startswith(HALT):
        raise ProtocolError(f"unknown request {bytes(received[:16])!r}")


# --- what the init answers ---


def ready_signal(runtime_version: str | None = None) -> bytes:
    """msgpack({"version": PROTOCOL_VERSION[, "runtime": runtime_version]}), the bytes
    msgpack.packb writes, encoded here so that msgpack loads after the signal."""
    entries = [("version", PROTOCOL_VERSION)] + ([("runtime", runtime_version)] if runtime_version else [])
    return bytes((0x80 | len(entries),)) + b"".join(
        _pack_short_str(key) + _pack_short_str(value) for key, value in entries
    )


def config_success() -> bytes:
    return pack({"success": True})


def config_failure(error: str, traceback: str = "") -> bytes:
    return pack({"success": False, "error": error, "traceback": traceback})


def run_answer(
    status: int,
    headers: list,
    body: bytes,
    output: str = "",
    output_data: bytes | None = None,
) -> bytes:
    return pack(
        {
            "headers": {"status": status, "headers": headers},
            "body": {"body": body},
            "output": output,
            "output_data": output_data,
        }
    )


def event_answer(body: object, output: str = "", output_data: bytes | None = None) -> bytes:
    """An event's answer: the supervisor returns `result["body"]` to the caller."""
    return pack({"headers": {}, "body": body, "output": output, "output_data": output_data})


def error_answer(error: str, traceback: str, output: str = "") -> bytes:
    """A failed call. The supervisor answers 500 with `traceback` as the body: with none,
    the error itself is the body, never an empty page."""
    return pack({"error": error, "traceback": traceback or error, "output": output})


#: Starts the "error" (and the traceback a node shows as the 500's body) of an answer the
#: init gives for its own failure or refusal, not the program's: a scope it cannot
#: complete, a malformed or oversized call, a call while it is not serving. The answer
#: keeps the supervisor's format; the local node reads the mark to log it as the init's.
INIT_FAILURE = "aleph-runtime init: "


def init_error_answer(error: str, traceback: str = "") -> bytes:
    text = INIT_FAILURE + error
    return error_answer(text, f"{text}\n{traceback}" if traceback else f"{text}\n")


def is_init_failure(answer: object) -> bool:
    """Whether an unpacked answer is the init's own failure (see `init_error_answer`)."""
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, str) and error.startswith(INIT_FAILURE)


#: The variable that sets the largest response the init passes on.
MAX_RESPONSE_VARIABLE = "ALEPH_MAX_RESPONSE_BYTES"


def response_too_large(limit: int) -> str:
    """The one sentence a call gets when the program's response outgrew the cap."""
    return f"the program's response is larger than {limit} bytes (the limit, {MAX_RESPONSE_VARIABLE})"
