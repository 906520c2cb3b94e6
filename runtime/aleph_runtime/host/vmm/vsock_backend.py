"""A virtio-vsock device for QEMU's vhost-user-vsock, with Firecracker's host-side layout.

QEMU runs the guest; this process runs its vsock device (vhost-user, see
`vhost_user.py`) and bridges it to Unix sockets exactly as Firecracker does, so the
supervisor client that drives Firecracker drives a QEMU guest unchanged:

- host → guest: connect to `<uds>`, write `CONNECT <port>\\n`; once the guest accepts,
  we answer `OK <host port>\\n` (the ephemeral host port we assigned, from 2**30 up,
  as Firecracker does) and the Unix stream is the guest socket's stream. If the guest
  refuses (RST), the Unix connection is closed without a line;
- guest → host: a guest connecting to CID 2 port P is connected to the Unix socket
  `<uds>_P`; if nothing listens there the guest gets a reset (ECONNRESET).

The virtio-vsock part (virtio 1.2, 5.10): packets are a 44-byte header plus payload;
the device receives on the tx queue (1) and sends on the rx queue (0), into buffers
the driver posted. Streams use credit flow control both ways: each side announces its
receive buffer (`buf_alloc`) and how much it has consumed (`fwd_cnt`), and the sender
never has more than `buf_alloc` bytes in flight. Here `fwd_cnt` counts only bytes that
actually left this process into the host socket, so a slow host reader stalls the
guest's writer instead of growing our memory; and host data is read only while the
guest has room for it.

Run it alone with `python -m aleph_runtime.host.vmm.vsock_backend --socket S --uds U`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import logging
import os
import struct
from collections.abc import Callable

from aleph_runtime import protocol
from aleph_runtime.host.unix import close_unix_server
from aleph_runtime.host.vmm.vhost_user import VhostUserServer
from aleph_runtime.host.vmm.virtqueue import Chain, SplitQueue, VirtqueueError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<QQIIIHHIII")
"""src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt"""
HEADER_SIZE = HEADER.size  # 44

TYPE_STREAM = 1


class Op(enum.IntEnum):
    INVALID = 0
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND

RX_QUEUE = 0
TX_QUEUE = 1

#: Receive buffer announced to the guest for each stream (its credit towards us), as
#: Firecracker and Linux's own default.
BUF_ALLOC = 256 * 1024
#: Send a credit update once this much has left for the host socket unreported.
#: Checked after each batch of guest packets and whenever the host socket's write buffer
#: drains (its high-water mark is 0, so asyncio calls resume_writing exactly then):
#: a guest that has used up its credit always gets an update once its bytes are out.
CREDIT_UPDATE_THRESHOLD = BUF_ALLOC // 4
#: A smaller unreported amount is reported anyway after this long without an update.
CREDIT_IDLE_DELAY = 0.05
#: Host bytes buffered for the guest before we stop reading the Unix socket.
PENDING_HIGH = 1 << 20
PENDING_LOW = 1 << 18
#: The largest payload in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
MAX_PAYLOAD = 64 * 1024
#: First host-side port handed out for host-initiated connections (as Firecracker).
FIRST_HOST_PORT = 1 << 30
#: How long the guest has to accept a host-initiated connection.
CONNECT_TIMEOUT = 10.0

U32 = 0xFFFFFFFF


class State(enum.Enum):
    HANDSHAKE = "handshake"  # host connected to <uds>, CONNECT line not read yet
    CONNECTING = "connecting"  # REQUEST sent to the guest, or connecting to <uds>_P
    ESTABLISHED = "established"
    CLOSED = "closed"


class Stream(asyncio.Protocol):
    """One vsock stream, bridged to one Unix-socket connection on the host."""

    def __init__(self, device: VsockDevice, host_initiated: bool, host_port: int = 0, guest_port: int = 0):
        self.device = device
        self.host_initiated = host_initiated
        self.host_port = host_port
        self.guest_port = guest_port
        self.state = State.HANDSHAKE if host_initiated else State.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.line = bytearray()
        # host -> guest
        self.pending = bytearray()
        self.tx_cnt = 0
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.credit_requested = False
        self.reading_paused = False
        self.host_eof = False
        self.host_closed = False
        self.shutdown_sent = False
        # guest -> host
        self.rx_cnt = 0
        self.reported_fwd = 0
        self.update_queued = False
        self.guest_shutdown = 0
        self.in_ready = False
        self.timer: asyncio.TimerHandle | None = None
        self.credit_timer: asyncio.TimerHandle | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.host_port, self.guest_port)

    # --- credit ---

    def fwd_cnt(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return (self.rx_cnt - buffered) & U32

    def peer_credit(self) -> int:
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32))

    def wants_rx(self) -> bool:
        """Has data the guest can take now."""
        return (
            self.state is State.ESTABLISHED
            and bool(self.pending)
            and not self.guest_shutdown & SHUTDOWN_RCV
            and self.peer_credit() > 0
        )

    # --- asyncio.Protocol: the host's Unix connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # pause_writing as soon as anything is buffered, resume_writing when it is all out.
        self.transport.set_write_buffer_limits(high=0, low=0)

    def data_received(self, data: bytes) -> None:
        if self.state is State.HANDSHAKE:
            self.line += data
            end = self.line.find(b"\n")
            if end < 0:
                if len(self.line) > protocol.MAX_CONTROL_LINE:
                    log.warning("garbage instead of a CONNECT line: %r", bytes(self.line[:64]))
                    self.transport.close()
                return
            line, rest = bytes(self.line[: end + 1]), bytes(self.line[end + 1 :])
            self.line = bytearray()
            try:
                port = protocol.parse_connect_line(line)
            except protocol.ProtocolError as exc:
                log.warning("%s", exc)
                self.transport.close()
                return
            self.pending += rest
            self.device.connect_to_guest(self, port)
            return
        if self.state is State.CLOSED or self.guest_shutdown & SHUTDOWN_RCV:
            return
        self.pending += data
        if len(self.pending) >= PENDING_HIGH and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self.device.mark_ready(self)

    def eof_received(self) -> bool:
        self.host_eof = True
        self.device.host_side_done(self)
        return True  # keep our write half open: the guest may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.host_eof = True
        self.host_closed = True
        if self.state is State.HANDSHAKE:
            self.state = State.CLOSED
            return
        self.device.host_side_done(self)

    def resume_writing(self) -> None:
        self.device.maybe_credit_update(self)

    # --- after the guest took data ---

    def consumed(self, n: int) -> None:
        del self.pending[:n]
        self.tx_cnt = (self.tx_cnt + n) & U32
        if self.reading_paused and len(self.pending) < PENDING_LOW and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()


class VsockDevice:
    """The virtio-vsock device: queues on one side, Firecracker's Unix layout on the other."""

    num_queues = 2  # rx, tx; QEMU keeps the event queue for itself
    device_features = 0  # streams only (no VIRTIO_VSOCK_F_SEQPACKET)

    def __init__(self, uds_path: str | os.PathLike, guest_cid: int = protocol.GUEST_CID):
        self.uds_path = os.fspath(uds_path)
        self.guest_cid = guest_cid
        self.host_cid = protocol.HOST_CID
        self.queues: dict[int, SplitQueue] = {}
        self.notifiers: dict[int, Callable[[], None]] = {}
        self.streams: dict[tuple[int, int], Stream] = {}
        self.control: collections.deque[tuple[Stream | None, int, int, tuple[int, int] | None]] = (
            collections.deque()
        )
        self.ready: collections.deque[Stream] = collections.deque()
        self.next_port = FIRST_HOST_PORT
        self._rx_scheduled = False
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stats = collections.Counter()

    # --- the host listener ---

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds_path)
        self._server = await self._loop.create_unix_server(lambda: Stream(self, True), path=self.uds_path)

    async def close(self) -> None:
        await close_unix_server(self._server, self.uds_path)
        self._server = None
        self.reset_streams()
        for task in list(self._tasks):
            task.cancel()

    # --- VirtioDevice ---

    def config_space(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def queue_started(self, index: int, queue: SplitQueue, notify: Callable[[], None]) -> None:
        self.queues[index] = queue
        self.notifiers[index] = notify

    def queue_stopped(self, index: int) -> None:
        self.queues.pop(index, None)
        self.notifiers.pop(index, None)
        # The driver is gone (power-off, reboot, reset): every stream dies with it.
        self.reset_streams()

    def queue_kicked(self, index: int) -> None:
        try:
            if index == TX_QUEUE:
                self.process_tx()
            elif index == RX_QUEUE:
                self.process_rx()
        except VirtqueueError as exc:
            log.error("queue %d: %s (the driver broke the ring; ignoring it until reset)", index, exc)

    # --- streams ---

    def reset_streams(self) -> None:
        for stream in list(self.streams.values()):
            self._forget(stream)
            if stream.transport is not None:
                # close(), not abort(): what the guest sent before it went away is delivered.
                stream.transport.close()
        self.control.clear()
        self.ready.clear()

    def _forget(self, stream: Stream) -> None:
        stream.state = State.CLOSED
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.credit_timer is not None:
            stream.credit_timer.cancel()
            stream.credit_timer = None
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]

    def _allocate_port(self) -> int:
        while True:
            port = self.next_port
            self.next_port = FIRST_HOST_PORT if self.next_port >= U32 else self.next_port + 1
            if not any(key[0] == port for key in self.streams):
                return port

    def connect_to_guest(self, stream: Stream, port: int) -> None:
        """The host asked for guest port `port` (CONNECT line): send the guest a REQUEST."""
        stream.host_port = self._allocate_port()
        stream.guest_port = port
        stream.state = State.CONNECTING
        self.streams[stream.key] = stream
        stream.timer = self._loop.call_later(CONNECT_TIMEOUT, self._connect_timeout, stream)
        self.send_control(stream, Op.REQUEST)

    def _connect_timeout(self, stream: Stream) -> None:
        stream.timer = None
        if stream.state is State.CONNECTING:
            log.warning("guest port %d did not answer within %ss", stream.guest_port, CONNECT_TIMEOUT)
            self.send_control(stream, Op.RST)
            self._forget(stream)
            if stream.transport is not None:
                stream.transport.close()

    def mark_ready(self, stream: Stream) -> None:
        if not stream.in_ready and stream.state is State.ESTABLISHED:
            stream.in_ready = True
            self.ready.append(stream)
        self.schedule_rx()

    def host_side_done(self, stream: Stream) -> None:
        """The host half-closed or closed its Unix connection: tell the guest once data is out."""
        if stream.state is State.CONNECTING and stream.host_closed:
            self.send_control(stream, Op.RST)
            self._forget(stream)
            return
        if stream.state is not State.ESTABLISHED:
            return
        if stream.pending and not stream.guest_shutdown & SHUTDOWN_RCV:
            self.mark_ready(stream)  # finish when the data is out (see _after_drain)
            return
        self._after_drain(stream)

    def _after_drain(self, stream: Stream) -> None:
        if stream.host_closed:
            # Nothing more can flow either way: the guest keeps the data it has received.
            self.send_control(stream, Op.RST)
            self._forget(stream)
        elif stream.host_eof and not stream.shutdown_sent:
            stream.shutdown_sent = True
            self.send_control(stream, Op.SHUTDOWN, SHUTDOWN_SEND)

    def maybe_credit_update(self, stream: Stream, force: bool = False) -> None:
        if stream.state is not State.ESTABLISHED or stream.update_queued:
            return
        unreported = (stream.fwd_cnt() - stream.reported_fwd) & U32
        if unreported >= CREDIT_UPDATE_THRESHOLD or (force and unreported):
            stream.update_queued = True
            self.send_control(stream, Op.CREDIT_UPDATE)
        elif unreported and stream.credit_timer is None:
            # Below the threshold: if the guest then goes quiet (it may be waiting for
            # any packet of ours to wake its writer), tell it anyway a moment later.
            stream.credit_timer = self._loop.call_later(CREDIT_IDLE_DELAY, self._credit_idle, stream)

    def _credit_idle(self, stream: Stream) -> None:
        stream.credit_timer = None
        if stream.transport is not None and stream.transport.get_write_buffer_size() == 0:
            self.maybe_credit_update(stream, force=True)

    # --- packets to the guest (rx queue) ---

    def send_control(
        self, stream: Stream | None, op: int, flags: int = 0, ports: tuple[int, int] | None = None
    ) -> None:
        """Queue a packet with no payload; `ports` (host, guest) for a reset of no stream."""
        self.control.append((stream, op, flags, ports))
        self.schedule_rx()

    def schedule_rx(self) -> None:
        if not self._rx_scheduled and RX_QUEUE in self.queues:
            self._rx_scheduled = True
            self._loop.call_soon(self._scheduled_rx)

    def _scheduled_rx(self) -> None:
        self._rx_scheduled = False
        try:
            self.process_rx()
        except VirtqueueError as exc:
            log.error("rx queue: %s", exc)

    def _header(self, stream: Stream, op: int, length: int = 0, flags: int = 0) -> bytes:
        fwd = stream.fwd_cnt()
        stream.reported_fwd = fwd
        return HEADER.pack(
            self.host_cid, self.guest_cid, stream.host_port, stream.guest_port,
            length, TYPE_STREAM, op, flags, BUF_ALLOC, fwd,
        )  # fmt: skip

    def _next_rx_item(self):
        """The next packet to put in the rx queue: a control tuple, a Stream, or None."""
        control = self.control
        while control:
            stream, op, _flags, _ports = control[0]
            if stream is None or stream.state is not State.CLOSED or op == Op.RST:
                return control[0]
            control.popleft()
        ready = self.ready
        while ready:
            stream = ready[0]
            if stream.wants_rx():
                return stream
            ready.popleft()
            stream.in_ready = False
            if (
                stream.state is State.ESTABLISHED
                and stream.pending
                and stream.peer_credit() == 0
                and not stream.credit_requested
                and not stream.guest_shutdown & SHUTDOWN_RCV
            ):
                stream.credit_requested = True
                self.send_control(stream, Op.CREDIT_REQUEST)
                return self._next_rx_item()
        return None

    def process_rx(self) -> None:
        queue = self.queues.get(RX_QUEUE)
        if queue is None:
            return
        pushed = 0
        while True:
            item = self._next_rx_item()
            if item is None:
                break
            chain = queue.pop()
            if chain is None:
                if queue.enable_kicks():
                    continue
                break  # the guest's kick on the rx queue brings us back
            if chain.writable_len < HEADER_SIZE:
                log.error("rx buffer of %d bytes cannot hold a header", chain.writable_len)
                queue.push(chain.head, 0)
                pushed += 1
                continue
            if isinstance(item, Stream):
                written = self._send_data(item, chain)
            else:
                self.control.popleft()
                written = self._send_control(item, chain)
            queue.push(chain.head, written)
            pushed += 1
        if pushed:
            self.stats["rx_packets"] += pushed
            if queue.needs_notification():
                self.notifiers[RX_QUEUE]()

    def _send_control(self, item, chain: Chain) -> int:
        stream, op, flags, ports = item
        if stream is None:
            host_port, guest_port = ports
            header = HEADER.pack(
                self.host_cid, self.guest_cid, host_port, guest_port, 0, TYPE_STREAM, op, flags, 0, 0
            )
        else:
            if op == Op.CREDIT_UPDATE:
                stream.update_queued = False
            header = self._header(stream, op, 0, flags)
        return chain.write(header)

    def _send_data(self, stream: Stream, chain: Chain) -> int:
        n = min(len(stream.pending), stream.peer_credit(), chain.writable_len - HEADER_SIZE, MAX_PAYLOAD)
        header = self._header(stream, Op.RW, n)
        with memoryview(stream.pending) as view:
            written = chain.write(header, view[:n])
        stream.consumed(n)
        self.stats["rx_bytes"] += n
        # Round-robin between streams with data.
        self.ready.popleft()
        stream.in_ready = False
        if stream.pending:
            self.mark_ready(stream)
        elif stream.host_eof:
            self.host_side_done(stream)
        return written

    # --- packets from the guest (tx queue) ---

    def process_tx(self) -> None:
        queue = self.queues.get(TX_QUEUE)
        if queue is None:
            return
        # Payloads per stream, written to the host socket in one go after the batch
        # (fewer syscalls, and a reader's single read sees the data together).
        touched: dict[Stream, list[bytes]] = {}
        pushed = 0
        while True:
            chain = queue.pop()
            if chain is None:
                if queue.enable_kicks():
                    continue
                break
            try:
                data = chain.read()
            finally:
                queue.push(chain.head, 0)
                pushed += 1
            if len(data) < HEADER_SIZE:
                log.warning("tx packet of %d bytes is shorter than a header", len(data))
                continue
            self._on_packet(data, touched)
        if pushed:
            self.stats["tx_packets"] += pushed
            if queue.needs_notification():
                self.notifiers[TX_QUEUE]()
        for stream in list(touched):
            self._flush(stream, touched)
            self.maybe_credit_update(stream)
        self.process_rx()

    def _flush(self, stream: Stream, touched: dict[Stream, list[bytes]]) -> None:
        chunks = touched.get(stream)
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if stream.transport is not None and not stream.host_closed and stream.state is State.ESTABLISHED:
            stream.rx_cnt = (stream.rx_cnt + len(data)) & U32
            stream.transport.write(data)
            self.stats["tx_bytes"] += len(data)

    def _on_packet(self, data: bytes, touched: dict[Stream, list[bytes]]) -> None:
        src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc, fwd_cnt = (
            HEADER.unpack_from(data)
        )
        payload = memoryview(data)[HEADER_SIZE : HEADER_SIZE + length]
        if src_cid != self.guest_cid:
            log.debug("packet from CID %d ignored", src_cid)
            return
        stream = self.streams.get((dst_port, src_port))
        if type_ != TYPE_STREAM or dst_cid != self.host_cid:
            if op != Op.RST:
                self.send_control(None, Op.RST, ports=(dst_port, src_port))
            return
        if op == Op.REQUEST:
            if stream is not None:
                log.warning("duplicate REQUEST for %s", stream.key)
                return
            self._connect_to_host(dst_port, src_port, buf_alloc, fwd_cnt)
            return
        if stream is None:
            if op != Op.RST:
                self.send_control(None, Op.RST, ports=(dst_port, src_port))
            return
        if buf_alloc != stream.peer_buf_alloc or fwd_cnt != stream.peer_fwd_cnt:
            # New credit: a later exhaustion may ask again. An unchanged answer to our
            # CREDIT_REQUEST does not, or we would ping-pong with a guest that is not reading.
            stream.credit_requested = False
        stream.peer_buf_alloc = buf_alloc
        stream.peer_fwd_cnt = fwd_cnt
        if op == Op.RW:
            if stream.state is State.ESTABLISHED and stream.transport is not None and not stream.host_closed:
                touched.setdefault(stream, []).append(payload)  # a view of our copy of the packet
            return
        # Anything else comes after the data that preceded it.
        self._flush(stream, touched)
        if op == Op.RESPONSE:
            if stream.state is State.CONNECTING and stream.host_initiated:
                stream.state = State.ESTABLISHED
                if stream.timer is not None:
                    stream.timer.cancel()
                    stream.timer = None
                stream.transport.write(protocol.ok_line(stream.host_port))
                if stream.pending:
                    self.mark_ready(stream)
                elif stream.host_eof:
                    self.host_side_done(stream)
            else:
                self.send_control(stream, Op.RST)
                self._close_stream(stream)
            return
        if op == Op.CREDIT_UPDATE:
            if stream.pending:
                self.mark_ready(stream)
            return
        if op == Op.CREDIT_REQUEST:
            if not stream.update_queued:
                stream.update_queued = True
                self.send_control(stream, Op.CREDIT_UPDATE)
            return
        if op == Op.SHUTDOWN:
            stream.guest_shutdown |= flags & SHUTDOWN_BOTH
            if stream.guest_shutdown & SHUTDOWN_RCV:
                stream.pending.clear()
            if stream.guest_shutdown == SHUTDOWN_BOTH:
                # Linux waits for our reset to finish its close().
                self.send_control(stream, Op.RST)
                self._close_stream(stream)
            elif (
                stream.guest_shutdown & SHUTDOWN_SEND
                and stream.transport is not None
                and stream.transport.can_write_eof()
                and not stream.host_closed
            ):
                stream.transport.write_eof()
            return
        if op == Op.RST:
            self._close_stream(stream)
            return
        log.debug("unexpected op %d on %s", op, stream.key)

    def _close_stream(self, stream: Stream) -> None:
        """Forget a stream and close its Unix side once what we wrote there is flushed."""
        self._forget(stream)
        if stream.transport is not None:
            stream.transport.close()

    def _connect_to_host(self, host_port: int, guest_port: int, buf_alloc: int, fwd_cnt: int) -> None:
        stream = Stream(self, False, host_port, guest_port)
        stream.peer_buf_alloc = buf_alloc
        stream.peer_fwd_cnt = fwd_cnt
        self.streams[stream.key] = stream
        path = f"{self.uds_path}_{host_port}"

        async def connect() -> None:
            try:
                await self._loop.create_unix_connection(lambda: stream, path)
            except OSError as exc:
                log.debug("guest connection to port %d: %s: %s", host_port, path, exc)
                if stream.state is not State.CLOSED:
                    self._forget(stream)
                    self.send_control(None, Op.RST, ports=(host_port, guest_port))
                return
            if stream.state is State.CLOSED:  # reset by the guest meanwhile
                stream.transport.close()
                return
            stream.state = State.ESTABLISHED
            self.send_control(stream, Op.RESPONSE)
            if stream.pending:
                self.mark_ready(stream)
            elif stream.host_eof:
                self.host_side_done(stream)

        task = self._loop.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class VsockBackend:
    """The whole backend: the vhost-user socket QEMU connects to, and the `<uds>` layout.

    async with VsockBackend("/run/vm/vhost.sock", "/run/vm/v.sock") as backend:
        ... start QEMU with -chardev socket,path=/run/vm/vhost.sock ...
    """

    def __init__(
        self, socket_path: str | os.PathLike, uds_path: str | os.PathLike, guest_cid: int = protocol.GUEST_CID
    ):
        self.device = VsockDevice(uds_path, guest_cid)
        self.server = VhostUserServer(socket_path, self.device)

    @property
    def socket_path(self) -> str:
        return self.server.path

    @property
    def uds_path(self) -> str:
        return self.device.uds_path

    async def start(self) -> VsockBackend:
        await self.device.start()
        await self.server.start()
        return self

    async def close(self) -> None:
        await self.server.close()
        await self.device.close()

    async def __aenter__(self) -> VsockBackend:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the vhost-user socket QEMU's chardev connects to")
    parser.add_argument("--uds", required=True, help="Firecracker's vsock base path (<uds>, <uds>_PORT)")
    parser.add_argument("--cid", type=int, default=protocol.GUEST_CID)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )

    async def run_backend() -> None:
        async with VsockBackend(args.socket, args.uds, args.cid):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_backend())


if __name__ == "__main__":
    main()
