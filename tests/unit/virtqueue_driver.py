"""The driver's half of split virtqueues, over memory built in the test.

The backend under test sees this memory exactly as it sees a QEMU guest's: a
`GuestMemory` region with a guest-physical and a VMM-virtual address. The driver here
does what Linux's virtio_ring does: lays out the three areas, fills descriptors and
the available ring, and reads back the used ring.
"""

from __future__ import annotations

import struct

from aleph_runtime.host.vmm.virtqueue import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    GuestMemory,
    SplitQueue,
)

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED = struct.Struct("<II")

GPA_BASE = 0x10_0000
UVA_BASE = 0x7F00_0000_0000


class FakeRAM:
    """A bytearray as guest RAM, with a bump allocator."""

    def __init__(self, size: int = 8 << 20, buf=None):
        self.buf = bytearray(size) if buf is None else buf
        self.memory = GuestMemory()
        self.memory.add_region(GPA_BASE, size, UVA_BASE, self.buf)
        self.next = 0

    def alloc(self, size: int, align: int = 16) -> int:
        self.next = (self.next + align - 1) // align * align
        gpa = GPA_BASE + self.next
        self.next += size
        if self.next > len(self.buf):
            raise MemoryError("fake RAM exhausted")
        return gpa

    def view(self, gpa: int, size: int) -> memoryview:
        off = gpa - GPA_BASE
        return memoryview(self.buf)[off : off + size]

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))


class DriverQueue:
    """One split virtqueue, driven from the guest's side."""

    def __init__(self, ram: FakeRAM, num: int, *, start_idx: int = 0, event_idx: bool = False):
        self.ram = ram
        self.num = num
        self.desc = ram.alloc(16 * num)
        self.avail = ram.alloc(6 + 2 * num, 2)
        self.used = ram.alloc(6 + 8 * num, 4)
        self.event_idx = event_idx
        self.free = list(range(num))
        self.avail_idx = start_idx & 0xFFFF
        self.last_used = start_idx & 0xFFFF
        U16.pack_into(ram.view(self.avail, 4), 2, self.avail_idx)
        U16.pack_into(ram.view(self.used, 4), 2, self.last_used)
        # head -> (descriptor indices, [(gpa, len, writable)])
        self.inflight: dict[int, tuple[list[int], list[tuple[int, int, bool]]]] = {}

    def device_queue(self) -> SplitQueue:
        """The device's view, as the vhost-user layer would build it."""
        return SplitQueue(
            self.ram.memory, self.num, self.desc, self.avail, self.used,
            event_idx=self.event_idx, last_avail=self.avail_idx,
        )  # fmt: skip

    def _write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        DESC.pack_into(self.ram.view(self.desc, 16 * self.num), 16 * i, addr, length, flags, nxt)

    def add(self, readable: list[bytes] = (), writable: list[int] = (), *, indirect: bool = False) -> int:
        """Post a chain: device-readable buffers holding `readable`, then writable ones of the given sizes."""
        bufs: list[tuple[int, int, bool]] = []
        for data in readable:
            gpa = self.ram.alloc(max(len(data), 1))
            self.ram.write(gpa, data)
            bufs.append((gpa, len(data), False))
        for size in writable:
            bufs.append((self.ram.alloc(size), size, True))
        if indirect:
            table = self.ram.alloc(16 * len(bufs))
            for k, (gpa, length, w) in enumerate(bufs):
                flags = (VIRTQ_DESC_F_WRITE if w else 0) | (VIRTQ_DESC_F_NEXT if k + 1 < len(bufs) else 0)
                DESC.pack_into(self.ram.view(table, 16 * len(bufs)), 16 * k, gpa, length, flags, k + 1)
            head = self.free.pop(0)
            self._write_desc(head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
            idxs = [head]
        else:
            idxs = [self.free.pop(0) for _ in bufs]
            for k, (gpa, length, w) in enumerate(bufs):
                last = k + 1 == len(bufs)
                flags = (VIRTQ_DESC_F_WRITE if w else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
                self._write_desc(idxs[k], gpa, length, flags, 0 if last else idxs[k + 1])
        head = idxs[0]
        self.inflight[head] = (idxs, bufs)
        avail = self.ram.view(self.avail, 6 + 2 * self.num)
        U16.pack_into(avail, 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        U16.pack_into(avail, 2, self.avail_idx)
        return head

    def set_used_event(self, value: int) -> None:
        U16.pack_into(self.ram.view(self.avail, 6 + 2 * self.num), 4 + 2 * self.num, value & 0xFFFF)

    def avail_event(self) -> int:
        return U16.unpack_from(self.ram.view(self.used, 6 + 8 * self.num), 4 + 8 * self.num)[0]

    def used_idx(self) -> int:
        return U16.unpack_from(self.ram.view(self.used, 4), 2)[0]

    def take_used(self) -> list[tuple[int, int, bytes]]:
        """The chains the device returned since last time: (head, written length, written bytes)."""
        out = []
        used = self.ram.view(self.used, 6 + 8 * self.num)
        while self.last_used != self.used_idx():
            head, length = USED.unpack_from(used, 4 + 8 * (self.last_used % self.num))
            self.last_used = (self.last_used + 1) & 0xFFFF
            idxs, bufs = self.inflight.pop(head)
            self.free.extend(idxs)
            data = b"".join(self.ram.read(gpa, size) for gpa, size, w in bufs if w)
            out.append((head, length, data[:length]))
        return out
