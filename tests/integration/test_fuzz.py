"""Seeded, bounded fuzzing of what the host sends the init (issue 9).

In-process: tens of thousands of mutated configurations through the init's config
path (length line, msgpack, parse_config) and mutated run requests through its call
path (msgpack, scope checks, the ASGI bridge) must end in an answer or a ConfigError,
never another exception. Then a few hundred of them through a real dev-mode init,
over its socket: every answer is msgpack, the init stays up and still halts.

Inputs never start with `!` (a debug shell command) nor `h` (halt), which are not
guarded and would run a command on this machine or end the run early.
"""

from __future__ import annotations

import asyncio
import random
import string

import pytest

from aleph_runtime import protocol
from aleph_runtime.guest.asgi import AsgiProgram, Lifespan
from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.config import ConfigError, parse_config
from aleph_runtime.guest.data import DataExport
from aleph_runtime.guest.init import Init, InitState
from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config

SEED = 20269
IN_PROCESS_CONFIGS = 20_000
IN_PROCESS_CALLS = 20_000
THROUGH_THE_INIT = 300

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
    value = odd_value(rng, 3)
    return value if not isinstance(value, (list, dict)) else "k"


def base_configs() -> list[dict]:
    zipped = b"PK\x05\x06" + b"\x00" * 18  # an empty zip
    return [
        program_config(APP, "main:app"),
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
        scope[key] = odd_value(rng)
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


async def test_mutated_run_requests_always_get_a_msgpack_answer(serving_init):
    rng = random.Random(SEED + 1)
    kinds = {"answer": 0, "error": 0, "not a request": 0}
    for _ in range(IN_PROCESS_CALLS):
        data = run_request(rng)
        try:
            request = protocol.unpack(data)
        except Exception:  # noqa: BLE001 - msgpack raises many kinds: all mean "not a request"
            kinds["not a request"] += 1
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
            if index == 0:
                data = protocol.frame_config(program_config(APP, "main:app"))
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
