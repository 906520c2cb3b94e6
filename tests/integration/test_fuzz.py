"""Seeded, bounded fuzzing of what the host sends the init (issues 9 and 28).

In-process: tens of thousands of mutated configurations through the init's config
path (length line, msgpack, parse_config) and mutated run requests through its call
path (read_run_request, scope checks, the ASGI bridge) must end in an answer, a
ProtocolError or a ConfigError, never another exception; map keys include arrays,
which msgpack cannot make dict keys. Hand-built tar archives (pax and global headers
with GNU.sparse keys, old GNU sparse members, long names, negative and huge sizes)
are extracted or refused, a sparse member never extracted; settings are read as
positive finite numbers or refused. Then a few hundred requests through a real
dev-mode init, configured with a zip whose entrypoint names only its module, over its
socket: every answer is msgpack, the init stays up and still halts.

Inputs never start with `!` (a debug shell command) nor `h` (halt), which are not
guarded and would run a command on this machine or end the run early.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import math
import random
import resource
import string
import zipfile

import pytest

from aleph_runtime import protocol
from aleph_runtime.guest.archive import ArchiveError, extract_tar
from aleph_runtime.guest.asgi import AsgiProgram, Lifespan
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.config import ConfigError, parse_config
from aleph_runtime.guest.data import DataExport
from aleph_runtime.guest.init import Init, InitState
from aleph_runtime.guest.settings import MAX_SETTING, Settings, SettingsError
from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config
from aleph_runtime.host.supervisor import ConfigurationRejected
from tests.unit.test_archive import padded, pax_records, sparse_10_tar, tar_block

SEED = 20269
IN_PROCESS_CONFIGS = 20_000
IN_PROCESS_CALLS = 20_000
THROUGH_THE_INIT = 300
TAR_ARCHIVES = 1_500
SETTINGS_VALUES = 20_000

APP = b"""
async def app(scope, receive, send):
    if scope["type"] != "http":
        return {"echo": scope.get("body")}
    message = await receive()
    body = repr((scope["method"], scope["path"], scope["query_string"], len(message.get("body", b"")))).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [[b"x-echo", b"1"]]})
    await send({"type": "http.response.body", "body": body})
"""


async def echo_app(scope, receive, send):
    if scope["type"] != "http":
        return None
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [[b"x-echo", b"1"]]})
    await send({"type": "http.response.body", "body": repr((scope["path"], len(message["body"]))).encode()})


# --- generators ---


def odd_value(rng: random.Random, depth: int = 0) -> object:
    choices = [
        lambda: None, lambda: True, lambda: rng.randint(-(2**63), 2**64 - 1), lambda: rng.random() * 1e300,
        lambda: "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40))),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))),
        lambda: "x" * rng.choice([0, 1, 63, 64, 65, 4096]),
        lambda: rng.choice(["", "/", "..", "../../etc", "\x00", "a\n", "main:app", "vdc", "zip", "asgi", "8.8.8.8"]),
        lambda: [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))] if depth < 3 else [],
        lambda: {odd_key(rng) if rng.random() < 0.3 else rng.choice(["mount", "device", "read_only", "a"]):
                 odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))} if depth < 3 else {},
    ]  # fmt: skip
    return rng.choice(choices)()


def odd_key(rng: random.Random) -> object:
    """A map key; a tuple is packed as an array, which msgpack cannot make a dict key."""
    value = odd_value(rng, 3)
    if rng.random() < 0.1:
        return (value,) if not isinstance(value, (list, dict)) else ()
    return value if not isinstance(value, (list, dict)) else "k"


def zipped_app() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", APP)
    return buffer.getvalue()


def base_configs() -> list[dict]:
    zipped = b"PK\x05\x06" + b"\x00" * 18  # an empty zip
    return [
        program_config(APP, "main:app"),
        program_config(zipped_app(), "main", encoding="zip", interface="asgi"),
        program_config(sparse_10_tar(1000), "main", encoding="tar", interface="asgi"),
        program_config(zipped, "main:app", encoding="zip", ip="10.0.0.2", route="10.0.0.1",
                       dns_servers=["9.9.9.9"], variables={"A": "1"}),
        program_config(b"#!/bin/sh\n", "run.sh", interface="executable",
                       volumes=[{"mount": "/opt/venv", "device": "vdc", "read_only": True}],
                       ipv6="fc00::2/64", ipv6_gateway="fc00::1", authorized_keys=["ssh-ed25519 AAAA x"]),
        program_config(None, "main:app", encoding="squashfs",
                       volumes=[{"mount": "/opt/code", "device": "vdb", "read_only": True}]),
    ]  # fmt: skip


def mutate_structure(rng: random.Random, config: dict) -> dict:
    config = dict(config)
    for _ in range(rng.randint(1, 4)):
        key = rng.choice([*config, "extra", "volumes", "dns_servers", "variables"])
        action = rng.random()
        if action < 0.2:
            config.pop(key, None)
        elif action < 0.8:
            config[key] = odd_value(rng)
        else:
            config[odd_key(rng) if rng.random() < 0.5 else key] = odd_value(rng)
    return config


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        action = rng.random()
        position = rng.randrange(len(data) + 1)
        if action < 0.4 and data:
            data[min(position, len(data) - 1)] = rng.getrandbits(8)
        elif action < 0.6:
            data[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif action < 0.8:
            del data[position : position + rng.randint(1, 16)]
        else:
            data = data[:position]
    return _unguarded_first_byte(rng, bytes(data))


def _unguarded_first_byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\xc1"  # an empty connection is no request: something, at least
    if data[:1] in (b"!", b"h"):
        data = bytes([rng.choice(b"0123456789\x81\x82\xde\xffz")]) + data[1:]
    return data


def run_scope(rng: random.Random) -> dict:
    scope = protocol.http_scope("GET", "/", "a=1", [(b"host", b"x")], b"body")
    if rng.random() < 0.2:
        scope = protocol.event_scope({"item_hash": "x", "content": {"a": 1}})
    for _ in range(rng.randint(0, 3)):
        key = rng.choice([*scope, "http_version", "scheme", "root_path", "extra"])
        scope[odd_key(rng) if rng.random() < 0.1 else key] = odd_value(rng)
    return scope


def run_request(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return protocol.pack({"scope": run_scope(rng)})
    if rng.random() < 0.5:
        return protocol.pack({"scope": odd_value(rng)} if rng.random() < 0.5 else odd_value(rng))
    return mutate_bytes(rng, protocol.pack({"scope": run_scope(rng)}))


def config_frame(rng: random.Random, bases: list[dict]) -> bytes:
    config = rng.choice(bases)
    if rng.random() < 0.6:
        return protocol.frame_config(mutate_structure(rng, config))
    return mutate_bytes(rng, protocol.frame_config(config))


# --- in-process ---


def parse_frame_as_the_init_does(frame: bytes) -> None:
    """The init's config path without side effects: length line, msgpack, parse_config."""
    length_text, newline, payload = frame.partition(b"\n")
    if not newline or not length_text.isdigit() or len(length_text) > 12:
        return  # answered as a ProtocolError by the connection handler
    try:
        data = protocol.unpack(payload[: int(length_text)])
    except Exception:  # noqa: BLE001 - msgpack raises many kinds: the init answers each "not valid msgpack"
        return
    parse_config(data)


def test_mutated_configurations_are_parsed_or_refused_with_a_config_error():
    rng = random.Random(SEED)
    bases = base_configs()
    refused = 0
    for _ in range(IN_PROCESS_CONFIGS):
        try:
            parse_frame_as_the_init_does(config_frame(rng, bases))
        except ConfigError as error:
            refused += 1
            assert str(error), "a refusal names its reason"
    assert refused > IN_PROCESS_CONFIGS // 4  # the mutations do reach the checks


@pytest.fixture
async def serving_init(tmp_path):
    """An Init serving an in-process ASGI app, with no host behind it: only calls reach it."""
    init = Init(transport=None, paths=Paths(tmp_path), system=False)
    init.program = AsgiProgram(echo_app, Lifespan(echo_app), DataExport(str(tmp_path / "data")))
    init.state = InitState.SERVING
    return init


async def decode_as_the_init_does(data: bytes) -> object:
    """protocol.read_run_request over a connection that sends `data` in two reads, then ends."""
    reader = asyncio.StreamReader()
    split = len(data) // 2 or len(data)
    reader.feed_data(data[split:])
    reader.feed_eof()
    return await protocol.read_run_request(reader, data[:split], 1 << 20)


async def test_mutated_run_requests_always_get_a_msgpack_answer(serving_init):
    rng = random.Random(SEED + 1)
    kinds = {"answer": 0, "error": 0, "not a request": 0, "unhashable key": 0}
    for _ in range(IN_PROCESS_CALLS):
        data = run_request(rng)
        try:
            request = await decode_as_the_init_does(data)
        except protocol.ProtocolError as error:  # answered with an error by the connection handler
            kinds["unhashable key" if "unhashable" in str(error) else "not a request"] += 1
            continue
        answer = protocol.unpack(await serving_init.run(request))
        assert isinstance(answer, dict)
        if "error" in answer:
            assert answer["error"] and answer["traceback"]
            kinds["error"] += 1
        else:
            assert set(answer) == {"headers", "body", "output", "output_data"}
            kinds["answer"] += 1
    assert all(kinds.values()), kinds


# --- through a real dev-mode init ---


async def exchange(init: DevMachine, data: bytes, timeout: float = 20) -> bytes:
    """Send as the supervisor does, then half-close (so a truncated request ends), read to EOF."""
    reader, writer = await asyncio.open_unix_connection(init.uds_path)
    try:
        writer.write(protocol.connect_line(protocol.INIT_PORT) + data)
        await writer.drain()
        writer.write_eof()
        assert (await asyncio.wait_for(reader.readline(), timeout)).startswith(b"OK ")
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def refused_config_frame(rng: random.Random, bases: list[dict]) -> bytes:
    """A mutated config, one the init would refuse even if it were the first."""
    while True:
        frame = config_frame(rng, bases)
        try:
            parse_frame_as_the_init_does(frame)
        except ConfigError:
            return frame


async def test_a_dev_init_answers_hundreds_of_mutated_requests_and_still_halts(short_dir):
    rng = random.Random(SEED + 2)
    bases = base_configs()
    seen = {"config refused": 0, "configured": 0, "call answered": 0, "call error": 0}
    async with DevMachine(short_dir / "vm") as init:
        for index in range(THROUGH_THE_INIT):
            # The first config that reaches the init decides (one per boot): the program's.
            if index == 0:  # as aleph-vm now sends it: the entrypoint names only the module
                data = protocol.frame_config(
                    program_config(zipped_app(), "main", encoding="zip", interface="asgi")
                )
            elif index < THROUGH_THE_INIT // 5:
                data = refused_config_frame(rng, bases)
            else:
                data = _unguarded_first_byte(
                    rng, run_request(rng) if rng.random() < 0.9 else config_frame(rng, bases)
                )
            answer = await exchange(init, data)
            assert answer, f"no answer to {data[:80]!r}"
            decoded = protocol.unpack(answer)  # whole msgpack, nothing else on the connection
            assert isinstance(decoded, dict), decoded
            if "success" in decoded:
                seen["configured" if decoded["success"] else "config refused"] += 1
            else:
                seen["call error" if "error" in decoded else "call answered"] += 1
            assert init.process.returncode is None
        assert seen["configured"] == 1 and all(seen.values()), seen
        result = await init.client.halt()
        assert result.stopped and result.shut_down
        assert await asyncio.wait_for(init.process.wait(), 10) == 0


# --- archives and settings ---

#: A negative base-256 size (-512), and one past any limit (2**80).
NEGATIVE_SIZE = b"\xff" * 10 + b"\xfe\x00"
HUGE_SIZE = b"\x80" + (2**80).to_bytes(11, "big")
PAX_KEYS = [
    "path", "linkpath", "comment", "size", "mtime", "hdrcharset", "GNU.sparse.major", "GNU.sparse.minor",
    "GNU.sparse.map", "GNU.sparse.name", "GNU.sparse.size", "GNU.sparse.realsize", "GNU.sparse.offset",
]  # fmt: skip
SPARSE_KINDS = {"old sparse", "sparse 1.0"}


def tar_member(rng: random.Random, kind: str) -> bytes:
    name = rng.choice([b"a", b"d/b", b"./c", b"../x", b"/abs", b"n" * 99, b"d"])
    if kind == "file":
        data = rng.randbytes(rng.randint(0, 3000))
        return tar_block(name, len(data), b"0") + padded(data)
    if kind == "dir":
        return tar_block(name, 0, b"5")
    if kind in ("pax", "global"):
        values = ["1", "0", "-512", "a", "0,1,2,3", "nan", "1e9", "x" * rng.randint(0, 5000)]
        records = pax_records({rng.choice(PAX_KEYS): rng.choice(values) for _ in range(rng.randint(1, 4))})
        return tar_block(b"PaxHeaders/x", len(records), b"x" if kind == "pax" else b"g") + padded(records)
    if kind == "long name":
        data = name * rng.randint(1, 60)
        return tar_block(b"././@LongLink", len(data), rng.choice([b"L", b"K"])) + padded(data)
    if kind == "old sparse":
        pair = b"%011o\0%011o\0" % (rng.randint(0, 9), rng.randint(0, 9))
        extension = bytearray(pair * 21 + b"\0" * 8)
        extension[504] = 1
        blocks = [bytes(extension)] * rng.randint(0, 3000)
        last = bytearray(extension)
        last[504] = 0
        return tar_block(
            name, 0, b"S", extra=((386, pair * 4), (482, b"\x01"), (483, b"%011o\0" % 1))
        ) + b"".join([*blocks, bytes(last)])
    if kind == "sparse 1.0":
        entries = rng.randint(0, 100_000)
        records = pax_records({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f"})
        sparse_map = b"%d\n" % entries + b"0\n" * (2 * entries)
        return (
            tar_block(b"PaxHeaders/f", len(records), b"x")
            + padded(records)
            + tar_block(name, len(sparse_map), b"0")
            + padded(sparse_map)
        )
    if kind == "negative size":
        return tar_block(name, 0, rng.choice([b"0", b"L", b"x"]), raw_size=NEGATIVE_SIZE)
    return tar_block(name, 0, rng.choice([b"0", b"L", b"x", b"g"]), raw_size=HUGE_SIZE)  # a huge size


def hostile_tar(rng: random.Random) -> tuple[bytes, set[str], bool]:
    """(compressed tar, the kinds of its members, whether its bytes were mutated)."""
    kinds = [
        rng.choice(
            [
                "file",
                "file",
                "dir",
                "pax",
                "global",
                "long name",
                "old sparse",
                "sparse 1.0",
                "negative size",
                "huge",
            ]
        )
        for _ in range(rng.randint(1, 5))
    ]
    raw = b"".join(tar_member(rng, kind) for kind in kinds) + b"\0" * 1024
    mutated = rng.random() < 0.2
    if mutated:
        raw = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.getrandbits(8)
        raw = bytes(raw)
    compress = rng.choice([gzip.compress, bz2.compress, lzma.compress, bytes])
    return compress(raw), set(kinds), mutated


def test_hand_built_tar_headers_are_extracted_or_refused_and_no_sparse_member_is_extracted(tmp_path):
    rng = random.Random(SEED + 3)
    outcomes = {"extracted": 0, "refused": 0, "sparse refused": 0}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for index in range(TAR_ARCHIVES):
        data, kinds, mutated = hostile_tar(rng)
        dest = tmp_path / str(index) / "dest"
        try:
            extract_tar(data, dest, max_unpacked=64 << 10)
        except ArchiveError as error:
            outcomes["sparse refused" if "sparse file" in str(error) else "refused"] += 1
            assert str(error) and "\n" not in str(error)
        else:
            outcomes["extracted"] += 1
            assert mutated or not kinds & SPARSE_KINDS, (kinds, sorted(p.name for p in dest.rglob("*")))
        beside = sorted(path.name for path in dest.parent.iterdir()) if dest.parent.exists() else []
        assert beside in ([], ["dest"]), beside  # nothing was written beside the destination
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    assert growth_mib < 64, f"the extractions grew the process by {growth_mib} MiB ({outcomes})"
    assert all(outcomes.values()), outcomes


SETTING_PIECES = [
    "1",
    "0",
    "9" * 19,
    "9" * 25,
    ".",
    "e",
    "E",
    "+",
    "-",
    "_",
    " ",
    "nan",
    "inf",
    "\u0661",
    "\uff11",
    "x",
]


def test_settings_are_positive_finite_bounded_numbers_or_refused():
    rng = random.Random(SEED + 4)
    kinds = {int: "ALEPH_MAX_REQUEST_BYTES", float: "ALEPH_LIFESPAN_STARTUP_TIMEOUT"}
    outcomes = {"read": 0, "refused": 0}
    for _ in range(SETTINGS_VALUES):
        kind = rng.choice([int, float])
        value = "".join(rng.choice(SETTING_PIECES) for _ in range(rng.randint(1, 4)))
        try:
            settings = Settings.read({kinds[kind]: value})
        except SettingsError as error:
            assert kinds[kind] in str(error)
            outcomes["refused"] += 1
            continue
        number = settings.max_request_bytes if kind is int else settings.lifespan_startup_timeout
        assert type(number) is kind and math.isfinite(number) and 0 < number <= MAX_SETTING, (value, number)
        assert value.strip().isascii(), value
        outcomes["read"] += 1
    assert all(outcomes.values()), outcomes


async def test_a_dev_init_refuses_a_sparse_tar_program_and_still_halts(short_dir):
    async with DevMachine(short_dir / "vm") as init:
        with pytest.raises(ConfigurationRejected, match="is a sparse file"):
            await init.configure(program_config(sparse_10_tar(2_000_000), "main:app", encoding="tar"))
        result = await init.client.halt()
        assert result.stopped and result.shut_down
        assert await asyncio.wait_for(init.process.wait(), 10) == 0
