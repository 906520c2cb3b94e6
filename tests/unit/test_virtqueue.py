"""Split virtqueues over memory built in the test: chains, indirect tables, wrap-around, events."""

from __future__ import annotations

import pytest

from aleph_runtime.host.vmm.virtqueue import GuestMemory, GuestMemoryError, SplitQueue, VirtqueueError
from tests.unit.virtqueue_driver import GPA_BASE, UVA_BASE, DriverQueue, FakeRAM


def test_guest_memory_translates_both_address_spaces():
    ram = FakeRAM(1 << 16)
    ram.write(GPA_BASE + 100, b"hello")
    assert bytes(ram.memory.gpa(GPA_BASE + 100, 5)) == b"hello"
    assert bytes(ram.memory.uva(UVA_BASE + 100, 5)) == b"hello"
    assert ram.memory.uva_to_gpa(UVA_BASE + 7) == GPA_BASE + 7
    with pytest.raises(GuestMemoryError):
        ram.memory.gpa(GPA_BASE + (1 << 16) - 2, 4)  # straddles the end
    with pytest.raises(GuestMemoryError):
        ram.memory.gpa(0, 1)


def test_guest_memory_maps_a_memfd(tmp_path):
    import os

    fd = os.memfd_create("ram")
    try:
        os.ftruncate(fd, 2 * 4096)
        os.pwrite(fd, b"from the VMM", 4096 + 8)
        memory = GuestMemory()
        memory.map_fd(fd, guest_addr=0x1000, size=4096, user_addr=0x5000, mmap_offset=4096)
        assert bytes(memory.gpa(0x1008, 12)) == b"from the VMM"
        memory.gpa(0x1000, 4)[:] = b"back"
        assert os.pread(fd, 4, 4096) == b"back"
        memory.close()
    finally:
        os.close(fd)


def test_pop_chain_then_push_used():
    ram = FakeRAM()
    drv = DriverQueue(ram, 8)
    dev = drv.device_queue()
    assert dev.pop() is None
    head = drv.add([b"abc", b"defg"], [5, 10])
    chain = dev.pop()
    assert chain.head == head
    assert chain.read() == b"abcdefg"
    assert chain.writable_len == 15
    assert chain.write(b"0123", b"456789") == 10
    dev.push(chain.head, 10)
    assert drv.take_used() == [(head, 10, b"0123456789")]
    assert dev.pop() is None


def test_indirect_descriptors():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    drv.add([b"header", b"payload"], [64], indirect=True)
    chain = dev.pop()
    assert chain.read() == b"headerpayload"
    assert chain.writable_len == 64


@pytest.mark.parametrize("start", [0, 65533, 65535])
def test_ring_indices_wrap_around(start):
    """Free-running 16-bit indices: many more chains than slots, across 65535 -> 0."""
    ram = FakeRAM()
    drv = DriverQueue(ram, 4, start_idx=start)
    dev = drv.device_queue()
    seen = []
    for round_ in range(10):
        for k in range(3):
            drv.add([bytes([round_, k])], [])
        while (chain := dev.pop()) is not None:
            seen.append(chain.read())
            dev.push(chain.head, 0)
        assert len(drv.take_used()) == 3
    assert seen == [bytes([r, k]) for r in range(10) for k in range(3)]
    assert dev.last_avail == (start + 30) & 0xFFFF
    assert drv.used_idx() == (start + 30) & 0xFFFF


def _too_far_ahead(drv: DriverQueue) -> None:
    drv.avail_idx = 9  # claims 9 chains in a ring of 4
    drv.add([b"x"], [])


def _descriptor_loop(drv: DriverQueue) -> None:
    idxs, _ = drv.inflight[drv.add([b"a", b"b"], [])]
    drv._write_desc(idxs[1], GPA_BASE, 1, 1, idxs[0])  # the second points back at the first


def _descriptor_out_of_memory(drv: DriverQueue) -> None:
    head = drv.add([b"a"], [])
    drv._write_desc(head, 0xDEAD_0000_0000, 16, 0, 0)


def _readable_after_writable(drv: DriverQueue) -> None:
    idxs, bufs = drv.inflight[drv.add([b"a", b"b"], [])]
    drv._write_desc(idxs[0], bufs[0][0], 1, 2 | 1, idxs[1])  # WRITE|NEXT, then a readable one


@pytest.mark.parametrize(
    ("corrupt", "error"),
    [
        (_too_far_ahead, VirtqueueError),
        (_descriptor_loop, VirtqueueError),  # and does not hang
        (_descriptor_out_of_memory, GuestMemoryError),
        (_readable_after_writable, VirtqueueError),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_"),
)
def test_a_corrupt_ring_is_refused(corrupt, error):
    drv = DriverQueue(FakeRAM(), 4)
    dev = drv.device_queue()
    corrupt(drv)
    with pytest.raises(error):
        dev.pop()


def test_bad_queue_sizes():
    ram = FakeRAM()
    with pytest.raises(VirtqueueError):
        SplitQueue(ram.memory, 3, GPA_BASE, GPA_BASE + 4096, GPA_BASE + 8192)


def notifies_after_using_next(dev: SplitQueue) -> bool:
    """Whether the driver must be notified once the next chain is used (nothing written)."""
    dev.push(dev.pop().head, 0)
    return dev.needs_notification()


def test_notifications_without_event_idx_follow_the_flag():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    drv.add([b"x"], [])
    assert notifies_after_using_next(dev)
    ram.view(drv.avail, 2)[:] = b"\x01\x00"  # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.add([b"y"], [])
    assert not notifies_after_using_next(dev)


def test_event_idx_interrupts_only_when_used_event_is_crossed():
    ram = FakeRAM()
    drv = DriverQueue(ram, 8, start_idx=65534, event_idx=True)
    dev = drv.device_queue()
    for _ in range(6):
        drv.add([b"x"], [])
    drv.set_used_event(65534)  # interrupt me after the first used entry
    assert notifies_after_using_next(dev)  # the first interrupt is always sent
    drv.set_used_event(1)  # across the wrap: after used index 1 has been written
    assert not notifies_after_using_next(dev)  # used idx 0
    assert not notifies_after_using_next(dev)  # used idx 1
    assert notifies_after_using_next(dev)  # used idx 2: crossed used_event 1
    assert not notifies_after_using_next(dev)


def test_enable_kicks_publishes_avail_event_and_reports_a_race():
    ram = FakeRAM()
    drv = DriverQueue(ram, 8, start_idx=65535, event_idx=True)
    dev = drv.device_queue()
    assert dev.enable_kicks() is False
    assert drv.avail_event() == 65535
    drv.add([b"x"], [])  # arrives "between" our last look and the kick request
    assert dev.enable_kicks() is True
    dev.push(dev.pop().head, 0)
    assert dev.enable_kicks() is False
    assert drv.avail_event() == 0
