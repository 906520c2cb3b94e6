"""The vhost-user protocol spoken to the backend over its real Unix socket, as QEMU does.

The test plays QEMU: it shares a memfd as guest memory and eventfds for kicks and
calls (SCM_RIGHTS), sets up the two queues, and then drives the vsock device through
them while a host client uses the Firecracker-style `<uds>` socket.
"""

from __future__ import annotations

import array
import asyncio
import mmap
import os
import select
import socket
import struct

import pytest

from aleph_runtime.host.vmm import vhost_user as vu
from aleph_runtime.host.vmm.vsock_backend import HEADER, Op, VsockBackend
from tests.unit.virtqueue_driver import GPA_BASE, UVA_BASE, DriverQueue, FakeRAM

RAM = 4 << 20


class FrontEnd:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)

    async def request(
        self, req: int, payload: bytes = b"", fds=(), need_reply=False, reply=True
    ) -> bytes | None:
        flags = vu.VHOST_USER_VERSION | (vu.FLAG_NEED_REPLY if need_reply else 0)
        data = vu.HEADER.pack(req, flags, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._sendmsg, data, anc)
        if not reply:
            return None
        return await loop.run_in_executor(None, self._recv_reply, req)

    def _sendmsg(self, data, anc):
        select.select([], [self.sock], [], 5)
        self.sock.sendmsg([data], anc)

    def _recv_reply(self, req: int) -> bytes:
        buf = b""
        while len(buf) < vu.HEADER.size:
            r, _, _ = select.select([self.sock], [], [], 5)
            assert r, "no reply from the backend"
            chunk = self.sock.recv(vu.HEADER.size - len(buf))
            assert chunk, "backend closed the connection"
            buf += chunk
        got_req, flags, size = vu.HEADER.unpack(buf)
        assert got_req == req and flags & vu.FLAG_REPLY
        payload = b""
        while len(payload) < size:
            select.select([self.sock], [], [], 5)
            payload += self.sock.recv(size - len(payload))
        return payload

    def close(self):
        self.sock.close()


@pytest.fixture
async def backend(tmp_path):
    b = VsockBackend(tmp_path / "vhost.sock", tmp_path / "v.sock")
    await b.start()
    yield b
    await b.close()


async def test_full_start_sequence_then_a_stream_then_stop(backend):
    fe = FrontEnd(backend.socket_path)
    R = vu.Request
    (features,) = struct.unpack("<Q", await fe.request(R.GET_FEATURES))
    for bit in (32, 29, 30):
        assert features & (1 << bit)
    (pfeatures,) = struct.unpack("<Q", await fe.request(R.GET_PROTOCOL_FEATURES))
    assert pfeatures & (1 << vu.ProtocolFeature.CONFIG) and pfeatures & (1 << vu.ProtocolFeature.REPLY_ACK)
    await fe.request(R.SET_PROTOCOL_FEATURES, struct.pack("<Q", pfeatures), reply=False)
    assert await fe.request(R.SET_OWNER, need_reply=True) == struct.pack("<Q", 0)
    config = await fe.request(R.GET_CONFIG, vu.CONFIG_HEADER.pack(0, 8, 0) + bytes(8))
    assert struct.unpack_from("<Q", config, vu.CONFIG_HEADER.size) == (3,)
    acked = (1 << 32) | (1 << 29) | (1 << 30)
    assert await fe.request(R.SET_FEATURES, struct.pack("<Q", acked), need_reply=True) == bytes(8)
    # An unknown request with NEED_REPLY is answered with a failure, and nothing breaks.
    assert await fe.request(99, b"\0" * 8, need_reply=True) != bytes(8)

    memfd = os.memfd_create("guest-ram")
    os.ftruncate(memfd, RAM)
    mm = mmap.mmap(memfd, RAM)
    ram = FakeRAM(RAM, buf=mm)
    table = vu.MEM_HEADER.pack(1, 0) + vu.MEM_REGION.pack(GPA_BASE, RAM, UVA_BASE, 0)
    assert await fe.request(R.SET_MEM_TABLE, table, fds=[memfd], need_reply=True) == bytes(8)
    os.close(memfd)

    queues = [DriverQueue(ram, 64, event_idx=True), DriverQueue(ram, 64, event_idx=True)]
    kicks = [os.eventfd(0, os.EFD_NONBLOCK) for _ in queues]
    calls = [os.eventfd(0, os.EFD_NONBLOCK) for _ in queues]
    for i, q in enumerate(queues):
        await fe.request(R.SET_VRING_NUM, vu.VRING_STATE.pack(i, q.num), reply=False)
        await fe.request(R.SET_VRING_BASE, vu.VRING_STATE.pack(i, 0), reply=False)
        addr = vu.VRING_ADDR.pack(i, 0, q.desc - GPA_BASE + UVA_BASE, q.used - GPA_BASE + UVA_BASE,
                                  q.avail - GPA_BASE + UVA_BASE, 0)  # fmt: skip
        await fe.request(R.SET_VRING_ADDR, addr, reply=False)
        await fe.request(R.SET_VRING_KICK, struct.pack("<Q", i), fds=[kicks[i]], reply=False)
        await fe.request(R.SET_VRING_CALL, struct.pack("<Q", i), fds=[calls[i]], reply=False)
    for i in range(2):
        assert await fe.request(R.SET_VRING_ENABLE, vu.VRING_STATE.pack(i, 1), need_reply=True) == bytes(8)

    # The guest posts rx buffers and kicks; a host client connects to guest port 52.
    rx, tx = queues
    for _ in range(8):
        rx.add([], [HEADER.size + 4096])
    os.eventfd_write(kicks[0], 1)
    reader, writer = await asyncio.open_unix_connection(backend.uds_path)
    writer.write(b"CONNECT 52\n")
    await writer.drain()

    async def next_packet():
        for _ in range(500):
            used = rx.take_used()
            if used:
                return HEADER.unpack_from(used[0][2])
            await asyncio.sleep(0.01)
        raise AssertionError("no packet from the device")

    request = await next_packet()
    assert request[6] == Op.REQUEST and request[3] == 52
    assert os.eventfd_read(calls[0]) >= 1  # the guest was interrupted
    host_port = request[2]
    tx.add([HEADER.pack(3, 2, 52, host_port, 0, 1, Op.RESPONSE, 0, 65536, 0)], [])
    os.eventfd_write(kicks[1], 1)
    assert await asyncio.wait_for(reader.readline(), 5) == b"OK %d\n" % host_port

    base = await fe.request(R.GET_VRING_BASE, vu.VRING_STATE.pack(1, 0))
    assert vu.VRING_STATE.unpack(base) == (1, 1)  # one tx packet consumed
    await fe.request(R.GET_VRING_BASE, vu.VRING_STATE.pack(0, 0))
    # The device stopped: the stream is gone.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    fe.close()
    await asyncio.wait_for(backend.server.frontend_gone.wait(), 5)
    for fd in kicks + calls:
        os.close(fd)


async def test_garbage_on_the_vhost_socket_drops_the_frontend_only(backend):
    fe = FrontEnd(backend.socket_path)
    await fe.request(vu.Request.GET_FEATURES)
    # A header announcing an absurd payload: the backend hangs up on this front-end...
    fe.sock.setblocking(True)
    fe.sock.sendall(vu.HEADER.pack(5, 1, 1 << 30))
    await asyncio.wait_for(backend.server.frontend_gone.wait(), 5)
    fe.close()
    # ...and serves the next one.
    fe2 = FrontEnd(backend.socket_path)
    assert len(await fe2.request(vu.Request.GET_FEATURES)) == 8
    fe2.close()
