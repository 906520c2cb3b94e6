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


def test_a_driver_running_too_far_ahead_is_refused():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    drv.avail_idx = 9  # claims 9 chains in a ring of 4
    drv.add([b"x"], [])
    with pytest.raises(VirtqueueError):
        dev.pop()


def test_a_descriptor_loop_does_not_hang():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    head = drv.add([b"a", b"b"], [])
    idxs, _ = drv.inflight[head]
    # Point the second descriptor back at the first.
    drv._write_desc(idxs[1], GPA_BASE, 1, 1, idxs[0])
    with pytest.raises(VirtqueueError):
        dev.pop()


def test_out_of_memory_descriptor_is_refused():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    head = drv.add([b"a"], [])
    drv._write_desc(head, 0xDEAD_0000_0000, 16, 0, 0)
    with pytest.raises(GuestMemoryError):
        dev.pop()


def test_readable_after_writable_is_refused():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    head = drv.add([b"a", b"b"], [])
    idxs, bufs = drv.inflight[head]
    drv._write_desc(idxs[0], bufs[0][0], 1, 2 | 1, idxs[1])  # WRITE|NEXT, then a readable one
    with pytest.raises(VirtqueueError):
        dev.pop()


def test_bad_queue_sizes():
    ram = FakeRAM()
    with pytest.raises(VirtqueueError):
        SplitQueue(ram.memory, 3, GPA_BASE, GPA_BASE + 4096, GPA_BASE + 8192)


def test_notifications_without_event_idx_follow_the_flag():
    ram = FakeRAM()
    drv = DriverQueue(ram, 4)
    dev = drv.device_queue()
    drv.add([b"x"], [])
    dev.push(dev.pop().head, 0)
    assert dev.needs_notification()
    ram.view(drv.avail, 2)[:] = b"\x01\x00"  # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.add([b"y"], [])
    dev.push(dev.pop().head, 0)
    assert not dev.needs_notification()


def test_event_idx_interrupts_only_when_used_event_is_crossed():
    ram = FakeRAM()
    drv = DriverQueue(ram, 8, start_idx=65534, event_idx=True)
    dev = drv.device_queue()
    for _ in range(6):
        drv.add([b"x"], [])
    drv.set_used_event(65534)  # interrupt me after the first used entry
    dev.push(dev.pop().head, 0)
    assert dev.needs_notification()  # the first interrupt is always sent
    drv.set_used_event(1)  # across the wrap: after used index 1 has been written
    dev.push(dev.pop().head, 0)  # used idx 0
    assert not dev.needs_notification()
    dev.push(dev.pop().head, 0)  # used idx 1
    assert not dev.needs_notification()
    dev.push(dev.pop().head, 0)  # used idx 2: crossed used_event 1
    assert dev.needs_notification()
    dev.push(dev.pop().head, 0)
    assert not dev.needs_notification()


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
