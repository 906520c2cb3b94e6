"""The vsock device against a simulated guest driver (no QEMU) and real Unix sockets.

The guest side here posts rx buffers and sends tx packets through split virtqueues in
memory built by the test, as Linux's virtio-vsock transport does; the host side is
Firecracker's layout: `<uds>` with CONNECT/OK, and `<uds>_P` for guest connections.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass

import pytest

from aleph_runtime.host.vmm import vsock_backend as vb
from aleph_runtime.host.vmm.vsock_backend import HEADER, Op, VsockDevice
from tests.unit.virtqueue_driver import DriverQueue, FakeRAM

GUEST_BUF = 4096


@dataclass
class Packet:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int
    payload: bytes


class FakeGuest:
    """Linux's side of the vsock device, reduced to what the tests need."""

    def __init__(self, device: VsockDevice, rx_buffers: int = 32):
        self.device = device
        self.ram = FakeRAM(32 << 20)
        self.rx = DriverQueue(self.ram, 256, event_idx=True)
        self.tx = DriverQueue(self.ram, 256, event_idx=True)
        self.interrupts = [0, 0]
        device.queue_started(0, self.rx.device_queue(), lambda: self._irq(0))
        device.queue_started(1, self.tx.device_queue(), lambda: self._irq(1))
        self.packets: list[Packet] = []
        self.post_rx(rx_buffers)

    def _irq(self, index: int) -> None:
        self.interrupts[index] += 1

    def post_rx(self, count: int) -> None:
        for _ in range(count):
            # Linux 6.1 posts a header buffer and a data buffer per packet.
            self.rx.add([], [HEADER.size, GUEST_BUF])
        self.device.queue_kicked(0)

    def send(self, op, src_port, dst_port, payload=b"", flags=0, buf_alloc=256 * 1024, fwd_cnt=0, dst_cid=2):
        header = HEADER.pack(3, dst_cid, src_port, dst_port, len(payload), 1, op, flags, buf_alloc, fwd_cnt)
        self.tx.add([header, payload] if payload else [header], [])
        self.device.queue_kicked(1)
        assert self.tx.take_used(), "the device did not consume the tx packet"

    def collect(self, repost: bool = True) -> list[Packet]:
        used = self.rx.take_used()
        for _, _, data in used:
            fields = HEADER.unpack_from(data)
            src_cid, dst_cid, src_port, dst_port, length, _type, op, flags, buf_alloc, fwd_cnt = fields
            self.packets.append(
                Packet(
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                    data[44 : 44 + length],
                )
            )
        if repost and used:
            self.post_rx(len(used))
        return self.packets

    async def wait_for(self, predicate, timeout: float = 5.0, repost: bool = True) -> Packet:
        """The first collected packet matching `predicate` (removed from the list)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for p in self.collect(repost):
                if predicate(p):
                    self.packets.remove(p)
                    return p
            if loop.time() > deadline:
                raise AssertionError(f"no matching packet; got {self.packets}")
            await asyncio.sleep(0.005)


@pytest.fixture
async def device(tmp_path):
    dev = VsockDevice(tmp_path / "v.sock")
    await dev.start()
    yield dev
    await dev.close()


async def host_connect(device: VsockDevice, port: int, extra: bytes = b""):
    reader, writer = await asyncio.open_unix_connection(device.uds_path)
    writer.write(b"CONNECT %d\n" % port + extra)
    await writer.drain()
    return reader, writer


async def established_host_stream(device, guest, port=1234, buf_alloc=256 * 1024, extra=b""):
    reader, writer = await host_connect(device, port, extra)
    req = await guest.wait_for(lambda p: p.op == Op.REQUEST)
    guest.send(Op.RESPONSE, req.dst_port, req.src_port, buf_alloc=buf_alloc)
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line == b"OK %d\n" % req.src_port
    return reader, writer, req


async def test_config_space_is_the_guest_cid(device):
    assert struct.unpack("<Q", device.config_space()) == (3,)


async def test_host_connect_gets_ok_with_firecracker_like_port_and_data_flows(device):
    guest = FakeGuest(device)
    reader, writer = await host_connect(device, 1234, b"hello")
    req = await guest.wait_for(lambda p: p.op == Op.REQUEST)
    assert (req.src_cid, req.dst_cid, req.dst_port) == (2, 3, 1234)
    assert req.src_port >= 1 << 30
    guest.send(Op.RESPONSE, 1234, req.src_port)
    assert await asyncio.wait_for(reader.readline(), 5) == b"OK %d\n" % req.src_port
    data = await guest.wait_for(lambda p: p.op == Op.RW)
    assert data.payload == b"hello" and data.dst_port == 1234
    guest.send(Op.RW, 1234, req.src_port, b"world")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"world"
    # The host half-closes: the guest is told SHUTDOWN(SEND); the guest then closes too.
    writer.write_eof()
    shut = await guest.wait_for(lambda p: p.op == Op.SHUTDOWN)
    assert shut.flags == vb.SHUTDOWN_SEND
    guest.send(Op.SHUTDOWN, 1234, req.src_port, flags=vb.SHUTDOWN_BOTH)
    await guest.wait_for(lambda p: p.op == Op.RST)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert not device.streams


async def test_second_host_connection_gets_the_next_port(device):
    guest = FakeGuest(device)
    _, w1, r1 = await established_host_stream(device, guest)
    _, w2, r2 = await established_host_stream(device, guest)
    assert r2.src_port == r1.src_port + 1
    w1.close()
    w2.close()


async def test_guest_refusing_closes_the_host_connection_without_ok(device):
    guest = FakeGuest(device)
    reader, writer = await host_connect(device, 99)
    req = await guest.wait_for(lambda p: p.op == Op.REQUEST)
    guest.send(Op.RST, 99, req.src_port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_garbage_instead_of_connect_is_closed(device):
    reader, writer = await asyncio.open_unix_connection(device.uds_path)
    writer.write(b"HELLO THERE\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_guest_connect_to_missing_host_port_is_reset(device):
    guest = FakeGuest(device)
    guest.send(Op.REQUEST, 40000, 5555)
    rst = await guest.wait_for(lambda p: p.op == Op.RST)
    assert (rst.src_port, rst.dst_port) == (5555, 40000)


async def test_guest_connect_reaches_uds_port_both_ways(device):
    guest = FakeGuest(device)
    got = asyncio.get_running_loop().create_future()

    async def on_connect(reader, writer):
        line = await reader.readline()
        writer.write(b"pong " + line)
        await writer.drain()
        got.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_unix_server(on_connect, path=f"{device.uds_path}_52")
    try:
        guest.send(Op.REQUEST, 40001, 52)
        resp = await guest.wait_for(lambda p: p.op == Op.RESPONSE)
        assert (resp.src_cid, resp.src_port, resp.dst_port) == (2, 52, 40001)
        guest.send(Op.RW, 40001, 52, b"ping\n")
        answer = await guest.wait_for(lambda p: p.op == Op.RW)
        assert answer.payload == b"pong ping\n"
        guest.send(Op.SHUTDOWN, 40001, 52, flags=vb.SHUTDOWN_BOTH)
        assert await asyncio.wait_for(got, 5) == b""
        await guest.wait_for(lambda p: p.op == Op.RST)
    finally:
        server.close()


async def test_packets_wait_for_rx_buffers(device):
    """No rx buffer posted: nothing is lost, it goes out once the guest posts some."""
    guest = FakeGuest(device, rx_buffers=0)
    _reader, writer = await host_connect(device, 7)
    await asyncio.sleep(0.05)
    assert guest.collect(repost=False) == []
    guest.post_rx(4)
    req = await guest.wait_for(lambda p: p.op == Op.REQUEST)
    assert req.dst_port == 7
    writer.close()


async def test_host_to_guest_respects_guest_credit(device):
    """A guest that announces 8 KiB never gets more than 8 KiB unacknowledged."""
    guest = FakeGuest(device)
    _reader, writer, req = await established_host_stream(device, guest, buf_alloc=8192)
    blob = os.urandom(100_000)
    writer.write(blob)
    await writer.drain()
    received = bytearray()
    fwd = 0
    while len(received) < len(blob):
        await asyncio.sleep(0.02)
        packets = guest.collect()
        rws = [p for p in packets if p.op == Op.RW]
        for p in rws:
            received += p.payload
        assert len(received) - fwd <= 8192, "the device overran the guest's credit"
        if any(p.op == Op.CREDIT_REQUEST for p in packets) or rws:
            # The guest's reader consumed everything: tell the device.
            fwd = len(received)
            guest.send(Op.CREDIT_UPDATE, 1234, req.src_port, buf_alloc=8192, fwd_cnt=fwd)
        guest.packets.clear()
    assert bytes(received) == blob
    writer.close()


async def exhaust_credit(device, guest: FakeGuest, size: int):
    """(writer, request) of a host stream that wrote `size` bytes to a guest giving it 4096
    bytes of credit, once the device has asked the guest for more."""
    _reader, writer, req = await established_host_stream(device, guest, buf_alloc=4096)
    writer.write(b"x" * size)
    await writer.drain()
    await guest.wait_for(lambda p: p.op == Op.CREDIT_REQUEST)
    return writer, req


async def test_credit_exhaustion_sends_a_credit_request(device):
    guest = FakeGuest(device)
    writer, req = await exhaust_credit(device, guest, 10000)
    rw = [p for p in guest.collect() if p.op == Op.RW]
    assert sum(len(p.payload) for p in rw) == 4096
    guest.send(Op.CREDIT_UPDATE, 1234, req.src_port, buf_alloc=4096, fwd_cnt=4096)
    more = await guest.wait_for(lambda p: p.op == Op.RW)
    assert len(more.payload) > 0
    writer.close()


async def test_slow_host_reader_holds_the_guest_back_without_losing_bytes(device):
    """Guest -> host with a host that does not read: the guest runs out of credit, not us of memory."""
    guest = FakeGuest(device)
    reader, writer, req = await established_host_stream(device, guest)
    stream = device.streams[(req.src_port, 1234)]
    blob = os.urandom(6 * vb.BUF_ALLOC)
    sent = 0
    peer_buf_alloc, peer_fwd = vb.BUF_ALLOC, 0
    read = bytearray()
    stalls = 0
    while len(read) < len(blob):
        # The guest sends as far as the device's credit allows.
        for p in guest.collect():
            peer_buf_alloc, peer_fwd = p.buf_alloc, p.fwd_cnt
            assert p.fwd_cnt <= len(read) + stream.transport.get_write_buffer_size() + 2**20
        guest.packets.clear()
        credit = peer_buf_alloc - (sent - peer_fwd)
        assert credit >= 0
        while credit > 0 and sent < len(blob):
            n = min(credit, 64 * 1024, len(blob) - sent)
            guest.send(Op.RW, 1234, req.src_port, blob[sent : sent + n])
            sent += n
            credit -= n
        assert stream.transport.get_write_buffer_size() <= vb.BUF_ALLOC
        if credit == 0 and sent < len(blob):
            stalls += 1
        # The host reads slowly, a bit at a time.
        try:
            read += await asyncio.wait_for(reader.read(100_000), 2)
        except TimeoutError:
            raise AssertionError(f"stuck at {len(read)} of {len(blob)} bytes, sent {sent}") from None
    assert bytes(read) == blob
    assert stalls > 0, "the guest never had to wait for credit: the test did not exercise flow control"
    writer.close()


async def test_host_close_resets_the_guest_after_data(device):
    guest = FakeGuest(device)
    _reader, writer, _req = await established_host_stream(device, guest)
    writer.write(b"last words")
    await writer.drain()
    writer.close()
    rw = await guest.wait_for(lambda p: p.op == Op.RW)
    assert rw.payload == b"last words"
    await guest.wait_for(lambda p: p.op in (Op.RST, Op.SHUTDOWN))


async def test_many_streams_at_once(device):
    guest = FakeGuest(device, rx_buffers=100)
    conns = [await host_connect(device, 1000 + i, b"stream %d" % i) for i in range(32)]
    reqs = []
    for _ in range(32):
        reqs.append(await guest.wait_for(lambda p: p.op == Op.REQUEST))
    for req in reqs:
        guest.send(Op.RESPONSE, req.dst_port, req.src_port)
    for reader, _writer in conns:
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"OK ")
    for req in reqs:
        rw = await guest.wait_for(lambda p, req=req: p.op == Op.RW and p.src_port == req.src_port)
        assert rw.payload == b"stream %d" % (req.dst_port - 1000)
    for _reader, writer in conns:
        writer.close()


async def test_unknown_stream_and_bad_type_get_reset(device):
    guest = FakeGuest(device)
    guest.send(Op.RW, 123, 456, b"nobody home")
    rst = await guest.wait_for(lambda p: p.op == Op.RST)
    assert (rst.src_port, rst.dst_port) == (456, 123)
    guest.send(Op.REQUEST, 124, 457, dst_cid=7)  # not the host
    await guest.wait_for(lambda p: p.op == Op.RST and p.dst_port == 124)


async def test_driver_reset_drops_every_stream(device):
    guest = FakeGuest(device)
    reader, writer, _req = await established_host_stream(device, guest)
    device.queue_stopped(0)
    device.queue_stopped(1)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not device.streams
    writer.close()


async def test_no_credit_request_storm_while_the_guest_does_not_read(device):
    guest = FakeGuest(device)
    writer, req = await exhaust_credit(device, guest, 20000)
    # The guest answers, but its reader has not consumed anything: same credit.
    for _ in range(3):
        guest.send(Op.CREDIT_UPDATE, 1234, req.src_port, buf_alloc=4096, fwd_cnt=0)
        await asyncio.sleep(0.05)
    assert not [p for p in guest.collect() if p.op == Op.CREDIT_REQUEST]
    # Once it reads, data flows again.
    guest.send(Op.CREDIT_UPDATE, 1234, req.src_port, buf_alloc=4096, fwd_cnt=4096)
    await guest.wait_for(lambda p: p.op == Op.RW)
    writer.close()


async def send_through_a_window(device, blob: bytes, window: int, chunk: int, read_size: int, pause: float):
    """The guest sends `blob` on a host stream keeping at most `window` bytes unacknowledged
    (`chunk` at a time), while a host reader takes `read_size` with a `pause` between reads:
    every byte must arrive, or the test names where it got stuck."""
    guest = FakeGuest(device)
    reader, writer, req = await established_host_stream(device, guest)
    sent = peer_fwd = 0
    read = bytearray()
    while len(read) < len(blob):
        for p in guest.collect():
            peer_fwd = p.fwd_cnt
        guest.packets.clear()
        while sent < len(blob) and sent - peer_fwd < window:
            n = min(window - (sent - peer_fwd), chunk, len(blob) - sent)
            guest.send(Op.RW, 1234, req.src_port, blob[sent : sent + n])
            sent += n
        try:
            read += await asyncio.wait_for(reader.read(read_size), 2)
        except TimeoutError:
            raise AssertionError(f"stuck: read {len(read)}, sent {sent}, last fwd_cnt {peer_fwd}") from None
        await asyncio.sleep(pause)
    assert bytes(read) == blob
    writer.close()


async def test_a_guest_with_a_smaller_window_than_announced_is_never_left_without_credit(device):
    """Linux may cap what it sends below our buf_alloc: updates must follow the drained
    bytes, not only a big threshold, or the guest waits forever (seen with a 6.1 guest)."""
    window = vb.BUF_ALLOC // 2 + 4096  # between the update threshold and what we announce
    # A host reader that takes a while between reads, so the socket buffers.
    await send_through_a_window(device, os.urandom(4 << 20), window, 32 * 1024, 48 * 1024, pause=0.001)


async def test_a_guest_waiting_below_the_update_threshold_still_hears_from_us(device):
    """Even a window smaller than the update threshold drains: an idle stream reports anyway."""
    window = 16 * 1024
    # Long pauses between reads let the idle report go out.
    await send_through_a_window(device, os.urandom(256 * 1024), window, window, 65536, pause=0.06)
