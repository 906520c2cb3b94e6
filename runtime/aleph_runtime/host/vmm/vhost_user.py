"""The back-end side of the vhost-user protocol (QEMU docs/interop/vhost-user.rst), on asyncio.

QEMU (the front-end) connects to our Unix socket and drives a virtio device whose
queues we process: it negotiates features, shares the guest's memory as file
descriptors (SET_MEM_TABLE), describes each virtqueue (SET_VRING_NUM/ADDR/BASE),
hands us an eventfd it signals when the driver kicks a queue (SET_VRING_KICK) and one
we signal to interrupt the guest (SET_VRING_CALL), and finally asks each queue back
(GET_VRING_BASE) when the device stops.

`VhostUserServer` speaks the protocol and owns memory and rings; the device logic
(what the queues carry) is a `VirtioDevice`: here the vsock device of
`vsock_backend`. Messages are small and QEMU waits for each reply, so each one is
read whole, synchronously, from the loop's reader callback.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import enum
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from aleph_runtime.host.vmm.virtqueue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    GuestMemory,
    SplitQueue,
    VirtqueueError,
)

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")  # request, flags, size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_HEADER = struct.Struct("<II")  # num regions, padding
MEM_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags

VHOST_USER_VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3

MAX_PAYLOAD = 4096 + CONFIG_HEADER.size  # the largest message we accept (config is <= 256 B)
MAX_FDS = 32
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8

VIRTIO_F_VERSION_1 = 32
VHOST_USER_F_PROTOCOL_FEATURES = 30


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    MQ = 0
    REPLY_ACK = 3
    CONFIG = 9


#: Requests whose reply is part of the request itself (not REPLY_ACK's u64).
_REPLYING = {
    Request.GET_FEATURES,
    Request.GET_PROTOCOL_FEATURES,
    Request.GET_VRING_BASE,
    Request.GET_QUEUE_NUM,
    Request.GET_CONFIG,
    Request.GET_MAX_MEM_SLOTS,
    Request.GET_STATUS,
    Request.GET_INFLIGHT_FD,
}


class VhostUserError(RuntimeError):
    """The front-end sent something we cannot honour; answered as a failure, never a crash."""


class VirtioDevice(Protocol):
    """What a device behind `VhostUserServer` provides."""

    num_queues: int
    device_features: int
    """The device-specific feature bits (ring and vhost-user bits are added by the server)."""

    def config_space(self) -> bytes: ...

    def queue_started(self, index: int, queue: SplitQueue, notify: Callable[[], None]) -> None: ...

    def queue_kicked(self, index: int) -> None: ...

    def queue_stopped(self, index: int) -> None: ...


def _close_fds(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Vring:
    """What the front-end told us about one virtqueue, and its running state."""

    def __init__(self, index: int):
        self.index = index
        self.num = 0
        self.desc_uva = self.used_uva = self.avail_uva = 0
        self.addr_set = False
        self.base = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.enabled = False
        self.queue: SplitQueue | None = None

    @property
    def started(self) -> bool:
        return self.queue is not None


class VhostUserServer:
    """Serves one vhost-user front-end at a time on `path`, for `device`."""

    def __init__(self, path: str | os.PathLike, device: VirtioDevice):
        self.path = os.fspath(path)
        self.device = device
        self.memory = GuestMemory()
        self.rings = [Vring(i) for i in range(device.num_queues)]
        self.acked_features = 0
        self.protocol_features = 0
        self.owner = False
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.frontend_connected = asyncio.Event()
        self.frontend_gone = asyncio.Event()

    @property
    def features(self) -> int:
        return (
            self.device.device_features
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        )

    supported_protocol_features = 1 << ProtocolFeature.REPLY_ACK | 1 << ProtocolFeature.CONFIG

    # --- the listening socket ---

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        sock.listen(1)
        sock.setblocking(False)
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._conn is not None:
            log.warning("a second vhost-user front-end connected; refusing it")
            conn.close()
            return
        # Messages are read whole in the reader callback: a blocking socket with a
        # short timeout, as the front-end always sends a message in one go.
        conn.settimeout(5)
        self._conn = conn
        self.frontend_gone.clear()
        self.frontend_connected.set()
        self._loop.add_reader(conn.fileno(), self._on_readable)
        log.debug("vhost-user front-end connected")

    async def close(self) -> None:
        self._disconnect()
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.memory.close()

    def _disconnect(self) -> None:
        """The front-end went away (or we are closing): stop everything it set up."""
        if self._conn is not None:
            self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        for ring in self.rings:
            self._stop_ring(ring)
            self._reset_ring(ring)
        self.memory.close()
        self.acked_features = 0
        self.protocol_features = 0
        self.owner = False
        self.frontend_connected.clear()
        self.frontend_gone.set()

    # --- messages ---

    def _recv_message(self) -> tuple[int, int, bytes, list[int]] | None:
        conn = self._conn
        fds = array.array("i")
        msg, ancdata, _flags, _addr = conn.recvmsg(HEADER.size, socket.CMSG_LEN(MAX_FDS * fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not msg:
            _close_fds(fds)
            return None
        while len(msg) < HEADER.size:
            more = conn.recv(HEADER.size - len(msg))
            if not more:
                _close_fds(fds)
                return None
            msg += more
        request, flags, size = HEADER.unpack(msg)
        if size > MAX_PAYLOAD:
            _close_fds(fds)
            raise VhostUserError(f"message {request} announces {size} bytes of payload")
        payload = b""
        while len(payload) < size:
            more = conn.recv(size - len(payload))
            if not more:
                _close_fds(fds)
                return None
            payload += more
        return request, flags, payload, list(fds)

    def _on_readable(self) -> None:
        try:
            message = self._recv_message()
        except (OSError, VhostUserError) as exc:
            log.warning("vhost-user connection failed: %s", exc)
            self._disconnect()
            return
        if message is None:
            log.debug("vhost-user front-end disconnected")
            self._disconnect()
            return
        request, flags, payload, fds = message
        try:
            name = Request(request).name
        except ValueError:
            name = str(request)
        log.debug("vhost-user request %s (%d bytes, %d fds)", name, len(payload), len(fds))
        reply: bytes | None = None
        ok = True
        try:
            reply = self._dispatch(request, payload, fds)
        except (VhostUserError, VirtqueueError, struct.error, OSError, ValueError) as exc:
            log.warning("vhost-user request %s failed: %s", name, exc)
            _close_fds(fds)
            ok = False
            if request in _REPLYING:
                reply = U64.pack(0) if request != Request.GET_CONFIG else b""
        if request in _REPLYING and reply is not None:
            self._send(request, reply)
        elif flags & FLAG_NEED_REPLY and self.protocol_features & (1 << ProtocolFeature.REPLY_ACK):
            self._send(request, U64.pack(0 if ok else 1))

    def _send(self, request: int, payload: bytes) -> None:
        if self._conn is None:
            return
        try:
            self._conn.sendall(HEADER.pack(request, VHOST_USER_VERSION | FLAG_REPLY, len(payload)) + payload)
        except OSError as exc:
            log.warning("vhost-user reply failed: %s", exc)
            self._disconnect()

    def _ring(self, index: int) -> Vring:
        if not 0 <= index < len(self.rings):
            raise VhostUserError(f"no virtqueue {index} (the device has {len(self.rings)})")
        return self.rings[index]

    def _dispatch(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        R = Request
        if request == R.GET_FEATURES:
            return U64.pack(self.features)
        if request == R.SET_FEATURES:
            (features,) = U64.unpack_from(payload)
            if features & ~self.features:
                raise VhostUserError(
                    f"front-end acked features we never offered: 0x{features & ~self.features:x}"
                )
            self.acked_features = features
            return None
        if request == R.GET_PROTOCOL_FEATURES:
            return U64.pack(self.supported_protocol_features)
        if request == R.SET_PROTOCOL_FEATURES:
            (features,) = U64.unpack_from(payload)
            self.protocol_features = features & self.supported_protocol_features
            return None
        if request == R.SET_OWNER:
            self.owner = True
            return None
        if request in (R.RESET_OWNER, R.RESET_DEVICE):
            for ring in self.rings:
                self._stop_ring(ring)
                self._reset_ring(ring)
            self.acked_features = 0
            return None
        if request == R.SET_MEM_TABLE:
            self._set_mem_table(payload, fds)
            return None
        if request == R.SET_VRING_NUM:
            index, num = VRING_STATE.unpack_from(payload)
            ring = self._ring(index)
            if num == 0 or num & (num - 1) or num > 32768:
                raise VhostUserError(f"queue size {num}")
            ring.num = num
            return None
        if request == R.SET_VRING_ADDR:
            index, _flags, desc, used, avail, _log = VRING_ADDR.unpack_from(payload)
            ring = self._ring(index)
            ring.desc_uva, ring.used_uva, ring.avail_uva = desc, used, avail
            ring.addr_set = True
            return None
        if request == R.SET_VRING_BASE:
            index, num = VRING_STATE.unpack_from(payload)
            self._ring(index).base = num & 0xFFFF
            return None
        if request == R.GET_VRING_BASE:
            index, _ = VRING_STATE.unpack_from(payload)
            ring = self._ring(index)
            base = ring.queue.last_avail if ring.queue is not None else ring.base
            self._stop_ring(ring)
            ring.base = base
            return VRING_STATE.pack(index, base)
        if request in (R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR):
            (value,) = U64.unpack_from(payload)
            ring = self._ring(value & VRING_INDEX_MASK)
            fd = None
            if not value & VRING_NOFD_MASK:
                if len(fds) != 1:
                    raise VhostUserError(f"{Request(request).name} expects one fd, got {len(fds)}")
                fd = fds.pop()
            _close_fds(fds)
            if request == R.SET_VRING_KICK:
                self._stop_ring(ring)
                ring.kick_fd = fd
                if fd is None:
                    raise VhostUserError("polling mode (no kick fd) is not supported")
                if not self.protocol_features_negotiated:
                    ring.enabled = True  # without protocol features a ring starts enabled
                self._start_ring(ring)
            elif request == R.SET_VRING_CALL:
                if ring.call_fd is not None:
                    os.close(ring.call_fd)
                ring.call_fd = fd
            elif fd is not None:
                os.close(fd)  # we never report ring errors
            return None
        if request == R.SET_VRING_ENABLE:
            index, enable = VRING_STATE.unpack_from(payload)
            ring = self._ring(index)
            ring.enabled = bool(enable)
            if ring.enabled:
                self._start_ring(ring)
            return None
        if request == R.GET_QUEUE_NUM:
            return U64.pack(len(self.rings))
        if request == R.GET_CONFIG:
            offset, size, flags = CONFIG_HEADER.unpack_from(payload)
            config = self.device.config_space()
            data = config[offset : offset + size].ljust(size, b"\0")
            return CONFIG_HEADER.pack(offset, size, flags) + data
        if request == R.SET_CONFIG:
            return None  # the vsock config (the CID) is read-only
        if request == R.VRING_KICK:
            index, _ = VRING_STATE.unpack_from(payload)
            ring = self._ring(index)
            if ring.started and ring.enabled:
                self.device.queue_kicked(index)
            return None
        _close_fds(fds)
        raise VhostUserError(f"unsupported request {request}")

    @property
    def protocol_features_negotiated(self) -> bool:
        return bool(self.acked_features & (1 << VHOST_USER_F_PROTOCOL_FEATURES))

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        count, _ = MEM_HEADER.unpack_from(payload)
        if count != len(fds):
            raise VhostUserError(f"SET_MEM_TABLE: {count} regions but {len(fds)} fds")
        regions = [
            MEM_REGION.unpack_from(payload, MEM_HEADER.size + i * MEM_REGION.size) for i in range(count)
        ]
        # Queues point into the old mapping: they must be rebuilt on the new one.
        running = [ring for ring in self.rings if ring.started]
        for ring in running:
            ring.base = ring.queue.last_avail
            self._stop_ring(ring, keep_kick=True)
        self.memory.close()
        memory = GuestMemory()
        try:
            for (gpa, size, uva, offset), fd in zip(regions, fds, strict=False):
                memory.map_fd(fd, gpa, size, uva, offset)
        finally:
            _close_fds(fds)  # the mappings keep the memory alive
        self.memory = memory
        for ring in running:
            self._start_ring(ring)

    def _start_ring(self, ring: Vring) -> None:
        if ring.started or ring.kick_fd is None or not ring.addr_set or not ring.enabled or ring.num == 0:
            return
        if not self.memory.regions:
            return
        event_idx = bool(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX))
        queue = SplitQueue(
            self.memory,
            ring.num,
            self.memory.uva_to_gpa(ring.desc_uva),
            self.memory.uva_to_gpa(ring.avail_uva),
            self.memory.uva_to_gpa(ring.used_uva),
            event_idx=event_idx,
            indirect=bool(self.acked_features & (1 << VIRTIO_RING_F_INDIRECT_DESC)),
            last_avail=ring.base,
        )
        ring.queue = queue
        index = ring.index

        def notify() -> None:
            fd = ring.call_fd
            if fd is not None:
                try:
                    os.eventfd_write(fd, 1)
                except OSError as exc:
                    log.debug("call eventfd of queue %d: %s", index, exc)

        def on_kick() -> None:
            with contextlib.suppress(OSError):  # BlockingIOError included: no kick pending
                os.eventfd_read(ring.kick_fd)
            if ring.queue is not None:
                self.device.queue_kicked(index)

        os.set_blocking(ring.kick_fd, False)
        self._loop.add_reader(ring.kick_fd, on_kick)
        log.debug("queue %d started: size %d, base %d, event_idx %s", index, ring.num, ring.base, event_idx)
        self.device.queue_started(index, queue, notify)
        # Buffers made available before the kick fd was watched.
        self.device.queue_kicked(index)

    def _stop_ring(self, ring: Vring, keep_kick: bool = False) -> None:
        if ring.kick_fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(ring.kick_fd)
            if not keep_kick:
                os.close(ring.kick_fd)
                ring.kick_fd = None
        if ring.queue is not None:
            ring.queue = None
            self.device.queue_stopped(ring.index)

    def _reset_ring(self, ring: Vring) -> None:
        if ring.call_fd is not None:
            os.close(ring.call_fd)
        fresh = Vring(ring.index)
        ring.__dict__.update(fresh.__dict__)
