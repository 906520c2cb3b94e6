"""Guest memory and split virtqueues, as a virtio device backend sees them.

A vhost-user backend shares the guest's RAM with the VMM: the VMM hands over file
descriptors of its memory regions (`SET_MEM_TABLE`), the backend maps them, and from
then on reads and writes the virtqueues in place. This module holds the two pieces
that need no socket at all, so they can be unit-tested on memory built in the test:

- `GuestMemory`: the regions, each known by its guest-physical address (what
  descriptors carry) and by the VMM's own virtual address (what `SET_VRING_ADDR`
  carries), and the translation from either to a `memoryview` of our mapping;
- `SplitQueue`: a split virtqueue (virtio 1.x, section 2.7): the descriptor table,
  the available ring the driver fills and the used ring the device fills, indirect
  descriptors, and event suppression (`VIRTIO_RING_F_EVENT_IDX` or the flags).

Everything is little-endian (virtio 1.x, `VIRTIO_F_VERSION_1`). Ring indices are
free-running 16-bit counters; `idx % num` is the slot, so they wrap at 65536 whatever
the queue size.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from dataclasses import dataclass

# Descriptor flags (virtio 1.x, 2.7.5).
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# Available ring flag: the driver does not want interrupts (without EVENT_IDX).
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
# Used ring flag: the device does not want kicks (without EVENT_IDX).
VIRTQ_USED_F_NO_NOTIFY = 1

# Feature bits that concern the ring layout.
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len

#: No chain is longer than this, whatever the driver wrote: a loop in `next` is a bug
#: (or an attack) that must not hang the backend.
MAX_CHAIN = 1024


class VirtqueueError(ValueError):
    """The driver put something in the queue that the spec does not allow."""


class GuestMemoryError(VirtqueueError):
    """An address that falls outside every memory region."""


@dataclass
class MemoryRegion:
    guest_addr: int
    """Guest-physical address of the region's first byte."""
    size: int
    user_addr: int
    """The VMM's virtual address of the same byte (vring addresses use these)."""
    view: memoryview
    """Our mapping of the region, exactly `size` bytes."""
    backing: object = None
    """What owns the mapping (an mmap, a bytearray), closed with the region."""

    def close(self) -> None:
        self.view.release()
        if isinstance(self.backing, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still exported somewhere: let GC unmap it
                self.backing.close()
        self.backing = None


class GuestMemory:
    """The guest RAM regions the VMM shared with us."""

    def __init__(self) -> None:
        self.regions: list[MemoryRegion] = []

    def add_region(self, guest_addr: int, size: int, user_addr: int, buffer, offset: int = 0) -> MemoryRegion:
        """Add a region backed by `buffer` (an mmap or a bytearray) starting at `offset` in it."""
        view = memoryview(buffer)[offset : offset + size]
        if len(view) != size:
            raise VirtqueueError(f"region of {size} bytes does not fit its buffer at offset {offset}")
        region = MemoryRegion(guest_addr, size, user_addr, view.cast("B"), buffer)
        self.regions.append(region)
        return region

    def map_fd(self, fd: int, guest_addr: int, size: int, user_addr: int, mmap_offset: int) -> MemoryRegion:
        """Map a region from a file descriptor (memfd) as SET_MEM_TABLE describes it."""
        mm = mmap.mmap(fd, size + mmap_offset, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return self.add_region(guest_addr, size, user_addr, mm, mmap_offset)

    def close(self) -> None:
        for region in self.regions:
            region.close()
        self.regions = []

    def gpa(self, addr: int, length: int) -> memoryview:
        """`length` bytes at guest-physical `addr`, which must lie within one region."""
        for r in self.regions:
            off = addr - r.guest_addr
            if off >= 0 and off + length <= r.size:
                return r.view[off : off + length]
        raise GuestMemoryError(f"guest address 0x{addr:x}+{length} is outside guest memory")

    def uva(self, addr: int, length: int) -> memoryview:
        """`length` bytes at the VMM's virtual address `addr`."""
        for r in self.regions:
            off = addr - r.user_addr
            if off >= 0 and off + length <= r.size:
                return r.view[off : off + length]
        raise GuestMemoryError(f"VMM address 0x{addr:x}+{length} is outside guest memory")

    def uva_to_gpa(self, addr: int) -> int:
        for r in self.regions:
            off = addr - r.user_addr
            if 0 <= off < r.size:
                return r.guest_addr + off
        raise GuestMemoryError(f"VMM address 0x{addr:x} is outside guest memory")


class Chain:
    """One descriptor chain popped from the available ring.

    `readable` are the driver's buffers the device reads (device-readable, first in
    the chain), `writable` the ones the device writes (they follow). The chain is
    returned to the driver with `SplitQueue.push(chain.head, written)`.
    """

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview]):
        self.head = head
        self.readable = readable
        self.writable = writable

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)

    def read(self, limit: int | None = None) -> bytes:
        """All readable bytes (or the first `limit`), copied out of guest memory."""
        if len(self.readable) == 1:
            v = self.readable[0]
            return bytes(v if limit is None else v[:limit])
        data = b"".join(self.readable)
        return data if limit is None else data[:limit]

    def write(self, *parts) -> int:
        """Scatter `parts` (bytes-likes, in order) into the writable buffers; bytes written."""
        bufs = self.writable
        bi = 0
        boff = 0
        total = 0
        for part in parts:
            mv = memoryview(part).cast("B") if not isinstance(part, (bytes, bytearray)) else part
            pos = 0
            n = len(mv)
            while pos < n:
                if bi >= len(bufs):
                    raise VirtqueueError("writing past the end of the chain's writable buffers")
                buf = bufs[bi]
                room = len(buf) - boff
                k = min(room, n - pos)
                buf[boff : boff + k] = mv[pos : pos + k]
                pos += k
                boff += k
                total += k
                if boff == len(buf):
                    bi += 1
                    boff = 0
        return total


class SplitQueue:
    """A split virtqueue seen from the device side.

    `desc`, `avail` and `used` are the guest-physical addresses of the three areas
    (the vhost-user layer translates the VMM's addresses before building this).
    `last_avail` is where the device resumes (SET_VRING_BASE); the used index is read
    from the ring itself, so a restarted queue continues where it stopped.
    """

    def __init__(
        self,
        memory: GuestMemory,
        num: int,
        desc: int,
        avail: int,
        used: int,
        *,
        event_idx: bool = False,
        indirect: bool = True,
        last_avail: int = 0,
    ):
        if num == 0 or num & (num - 1) or num > 32768:
            raise VirtqueueError(f"queue size {num} is not a power of 2 up to 32768")
        self.memory = memory
        self.num = num
        self.event_idx = event_idx
        self.indirect = indirect
        self.desc_table = memory.gpa(desc, 16 * num)
        # flags, idx, ring[num], used_event
        self.avail = memory.gpa(avail, 6 + 2 * num)
        # flags, idx, ring[num] of (id, len), avail_event
        self.used = memory.gpa(used, 6 + 8 * num)
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = U16.unpack_from(self.used, 2)[0]
        # The used index as of the last interrupt we sent (for EVENT_IDX).
        self.signalled_used = self.used_idx
        self.signalled_used_valid = False
        self._used_event_off = 4 + 2 * num
        self._avail_event_off = 4 + 8 * num

    # --- the driver's side, read ---

    def avail_idx(self) -> int:
        return U16.unpack_from(self.avail, 2)[0]

    def has_available(self) -> bool:
        return self.avail_idx() != self.last_avail

    def pending(self) -> int:
        """How many chains the driver has made available that we have not popped."""
        return (self.avail_idx() - self.last_avail) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next available chain, or None when the driver has made none available."""
        avail_idx = U16.unpack_from(self.avail, 2)[0]
        if avail_idx == self.last_avail:
            return None
        if (avail_idx - self.last_avail) & 0xFFFF > self.num:
            raise VirtqueueError(
                f"available index {avail_idx} is more than {self.num} ahead of {self.last_avail}"
            )
        head = U16.unpack_from(self.avail, 4 + 2 * (self.last_avail % self.num))[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return self._walk(head)

    def _walk(self, head: int) -> Chain:
        if head >= self.num:
            raise VirtqueueError(f"descriptor head {head} out of range (queue size {self.num})")
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        table = self.desc_table
        size = self.num
        i = head
        count = 0
        gpa = self.memory.gpa
        while True:
            addr, length, flags, nxt = DESC.unpack_from(table, 16 * i)
            count += 1
            if count > MAX_CHAIN:
                raise VirtqueueError("descriptor chain too long (a loop?)")
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise VirtqueueError("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
                if length % 16 or length == 0:
                    raise VirtqueueError(f"indirect table of {length} bytes")
                # An indirect table replaces the rest of the chain (spec 2.7.5.3).
                table = gpa(addr, length)
                size = length // 16
                i = 0
                continue
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append(gpa(addr, length))
            else:
                if writable:
                    raise VirtqueueError("device-readable descriptor after a device-writable one")
                readable.append(gpa(addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            i = nxt
            if i >= size:
                raise VirtqueueError(f"next descriptor {i} out of range ({size})")
        return Chain(head, readable, writable)

    # --- the device's side, written ---

    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver, saying how many bytes we wrote into it."""
        USED_ELEM.pack_into(self.used, 4 + 8 * (self.used_idx % self.num), head, written)
        # On x86 stores are not reordered with older stores: the element is visible
        # before the index. (Python gives no finer barrier; TCG honours the guest's.)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        U16.pack_into(self.used, 2, self.used_idx)

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for what we pushed since the last one."""
        if not self.event_idx:
            flags = U16.unpack_from(self.avail, 0)[0]
            return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT
        new = self.used_idx
        old = self.signalled_used
        valid = self.signalled_used_valid
        self.signalled_used = new
        self.signalled_used_valid = True
        if not valid:
            return True
        used_event = U16.unpack_from(self.avail, self._used_event_off)[0]
        # vring_need_event(): did we cross used_event since the last interrupt?
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def enable_kicks(self) -> bool:
        """Ask for a kick at the next available buffer; True if one arrived meanwhile.

        With EVENT_IDX we publish avail_event = last_avail; without it we clear
        NO_NOTIFY. Either way the caller must look at the ring again when this returns
        True, or a buffer made available between its last look and now is missed.
        """
        if self.event_idx:
            U16.pack_into(self.used, self._avail_event_off, self.last_avail)
        else:
            U16.pack_into(self.used, 0, 0)
        return self.has_available()

    def disable_kicks(self) -> None:
        if not self.event_idx:
            U16.pack_into(self.used, 0, VIRTQ_USED_F_NO_NOTIFY)
