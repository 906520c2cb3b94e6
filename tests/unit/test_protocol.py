import asyncio

import pytest

from aleph_runtime import protocol


def test_request_kinds_are_told_from_the_first_byte():
    assert protocol.classify_request(b"123\n"[0]) is protocol.RequestKind.CONFIG
    assert protocol.classify_request(protocol.run_request({"type": "http"})[0]) is protocol.RequestKind.RUN
    assert protocol.classify_request(b"halt"[0]) is protocol.RequestKind.HALT
    assert protocol.classify_request(b"!ls"[0]) is protocol.RequestKind.COMMAND
    # A map with 16+ keys starts with 0xde: still a run request.
    big = protocol.pack({"scope": {str(i): i for i in range(20)}, **{f"k{i}": i for i in range(20)}})
    assert big[0] == 0xDE
    assert protocol.classify_request(big[0]) is protocol.RequestKind.RUN
    with pytest.raises(protocol.ProtocolError):
        protocol.classify_request(0x00)


def test_config_framing_is_the_supervisors():
    framed = protocol.frame_config({"a": b"\x00\x01"})
    length, _, payload = framed.partition(b"\n")
    assert int(length) == len(payload)
    assert protocol.unpack(payload) == {"a": b"\x00\x01"}


def test_control_lines():
    assert protocol.connect_line(52) == b"CONNECT 52\n"
    assert protocol.parse_connect_line(b"CONNECT 52\n") == 52
    assert protocol.parse_ok_line(b"OK 1073741824\n") == 1073741824
    for bad in (b"CONNECT\n", b"CONNECT x\n", b"HELLO 52\n", b"CONNECT 52 53\n"):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_connect_line(bad)


def test_answers_keep_bytes_and_strings_apart():
    answer = protocol.unpack(protocol.run_answer(201, [[b"x-a", b"1"]], b"body", output_data=b"zip"))
    assert answer == {
        "headers": {"status": 201, "headers": [[b"x-a", b"1"]]},
        "body": {"body": b"body"},
        "output": "",
        "output_data": b"zip",
    }
    error = protocol.unpack(protocol.error_answer("boom", "Traceback..."))
    assert error == {"error": "boom", "traceback": "Traceback...", "output": ""}


def test_streaming_unpacker_waits_for_a_whole_object():
    data = protocol.run_request(protocol.http_scope("POST", "/", body=b"x" * 100_000))
    unpacker = protocol.new_unpacker()
    objects = []
    for start in range(0, len(data), 4096):
        unpacker.feed(data[start : start + 4096])
        objects.extend(unpacker)
        if start + 4096 < len(data):
            assert objects == []
    assert objects[0]["scope"]["body"] == b"x" * 100_000


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def test_read_config_takes_the_length_line_and_exactly_its_payload():
    framed = protocol.frame_config({"a": 1})
    payload = await protocol.read_config(_reader(framed[3:] + b"trailing"), framed[:3], 1000)
    assert protocol.unpack(payload) == {"a": 1}


async def test_read_config_refuses_a_bad_or_oversized_length_line():
    with pytest.raises(protocol.ProtocolError, match="not a number"):
        await protocol.read_config(_reader(), b"12a\n", 1000)
    with pytest.raises(protocol.ProtocolError, match="too long"):
        await protocol.read_config(_reader(b"9" * 30), b"1", 1000)
    with pytest.raises(protocol.RequestTooLarge, match="larger than 1000 bytes"):
        await protocol.read_config(_reader(eof=False), b"1001\n", 1000)
    with pytest.raises(asyncio.IncompleteReadError):
        await protocol.read_config(_reader(b"ab"), b"5\n", 1000)


async def test_read_run_request_streams_a_request_split_over_reads():
    data = protocol.run_request(protocol.http_scope("POST", "/", body=b"x" * 10_000))
    request = await protocol.read_run_request(
        _reader(data[100:5000], data[5000:], eof=False), data[:100], 1 << 20
    )
    assert request["scope"]["body"] == b"x" * 10_000


async def test_read_run_request_bounds_and_names_what_it_refuses():
    data = protocol.run_request(protocol.http_scope("POST", "/", body=b"x" * 10_000))
    with pytest.raises(protocol.RequestTooLarge):
        await protocol.read_run_request(_reader(data[100:], eof=False), data[:100], 1000)
    with pytest.raises(protocol.ProtocolError, match="closed before"):
        await protocol.read_run_request(_reader(data[100:200]), data[:100], 1 << 20)
    with pytest.raises(protocol.ProtocolError, match="malformed"):
        await protocol.read_run_request(_reader(b"\xc1" * 10), b"\x81\xc1", 1 << 20)


@pytest.mark.parametrize(
    "data",
    [b"\x81\x91\x01\x01", b"\x81\xa5scope\x81\x81\x01\x01\x01"],
    ids=["array key", "map key inside the scope"],
)
async def test_a_map_key_python_cannot_hash_is_a_malformed_request(data):
    """msgpack raises TypeError for it: the init answered nothing, and the supervisor killed the VM."""
    with pytest.raises(protocol.ProtocolError, match="malformed run request: TypeError: unhashable"):
        await protocol.read_run_request(_reader(data[3:]), data[:3], 1 << 20)
    with pytest.raises(protocol.ProtocolError, match="malformed run request: TypeError: unhashable"):
        await protocol.read_run_request(_reader(), data, 1 << 20)
    with pytest.raises(protocol.UNPACK_ERRORS):
        protocol.unpack(data)


async def test_read_halt():
    await protocol.read_halt(_reader(b"lt"), b"ha")
    with pytest.raises(protocol.ProtocolError, match="unknown request"):
        await protocol.read_halt(_reader(b"lo"), b"he")


def test_names_of_interfaces_and_encodings():
    assert protocol.Interface.named("binary") is protocol.Interface.EXECUTABLE
    assert protocol.Interface.named("wsgi") is None
    assert protocol.Encoding.named("TGZ") is protocol.Encoding.TAR
    assert protocol.interface_for("main:app") is protocol.Interface.ASGI
    assert f"{protocol.Encoding.ZIP}" == "zip"
