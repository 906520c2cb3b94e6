"""The QEMU command line built for a VM: drive order, shared memory, vsock, a network matching the config."""

from __future__ import annotations

import pytest

from aleph_runtime.host.machines.qemu import QemuMachine
from aleph_runtime.host.vmm.qemu import NODE_BOOT_ARGS, Drive, UserNetwork


def vm(tmp_path, **kwargs) -> QemuMachine:
    return QemuMachine(
        "/k/vmlinuz", "/k/initramfs.cpio.gz", "/img/rootfs.squashfs", workdir=tmp_path, **kwargs
    )


def test_memory_is_a_shared_memfd_backing_the_machine(tmp_path):
    cmd = " ".join(vm(tmp_path, memory_mb=768, vcpus=2).command())
    assert "-machine q35,memory-backend=mem" in cmd
    assert "memory-backend-memfd,id=mem,size=768M,share=on" in cmd
    assert "-m 768M" in cmd and "-smp 2" in cmd
    assert "-no-reboot" in cmd


def test_drives_follow_the_root_in_order_with_increasing_pci_slots(tmp_path):
    cmd = vm(tmp_path, drives=[Drive("/code.squashfs"), Drive("/data.ext4", read_only=False)]).command()
    drives = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-drive"]
    assert drives[0].startswith("id=vd0,file=/img/rootfs.squashfs") and "readonly=on" in drives[0]
    assert drives[1].startswith("id=vd1,file=/code.squashfs") and "readonly=on" in drives[1]
    assert drives[2].startswith("id=vd2,file=/data.ext4") and "readonly" not in drives[2]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device" and "virtio-blk" in cmd[i + 1]]
    slots = [int(d.rsplit("addr=", 1)[1], 16) for d in devices]
    assert slots == sorted(slots) and len(set(slots)) == 3


def test_vsock_device_uses_the_backend_socket(tmp_path):
    machine = vm(tmp_path)
    cmd = " ".join(machine.command())
    assert f"socket,id=vsock,path={machine.vhost_path}" in cmd
    assert "vhost-user-vsock-pci,chardev=vsock" in cmd
    assert machine.uds_path == tmp_path / "v.sock"


def test_kernel_cmdline_and_another_init(tmp_path):
    line = vm(tmp_path, init="/opt/other/init", cmdline=["quiet"]).kernel_cmdline()
    for arg in (
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "ro",
        "root=/dev/vda",
        "init=/opt/other/init",
        "quiet",
    ):
        assert arg in line.split()


@pytest.mark.parametrize(
    "network, expected",
    [
        (UserNetwork(ip="172.16.7.2", route="172.16.7.1"), ["net=172.16.7.0/24", "host=172.16.7.1"]),
        (UserNetwork(ip="10.1.2.66/26", route="10.1.2.65"), ["net=10.1.2.64/26", "host=10.1.2.65"]),
        (
            UserNetwork(ipv6="fc00:1:2:3::2/64", ipv6_gateway="fc00:1:2:3::1"),
            ["ipv6-net=fc00:1:2:3::/64", "ipv6-host=fc00:1:2:3::1"],
        ),
        (UserNetwork(ipv6="fc00:1:2:3:4::2/80"), ["ipv6-net=fc00:1:2:3::/64"]),
    ],
)
def test_user_network_matches_the_config(network, expected):
    netdev = network.netdev().split(",")
    assert "restrict=on" in netdev
    for item in expected:
        assert item in netdev
    values = {kv.split("=")[0]: kv.split("=")[1] for kv in netdev if "=" in kv}
    if "host" in values:
        assert (
            len({values["host"], values["dns"], values["dhcpstart"], (network.ip or "").split("/")[0]}) == 4
        )


def test_microvm_uses_mmio_devices(tmp_path):
    cmd = " ".join(vm(tmp_path, machine="microvm", network=UserNetwork(ip="10.0.0.2")).command())
    assert "microvm,acpi=off,pit=on,pic=on,rtc=on,memory-backend=mem" in cmd
    assert "vhost-user-vsock-device,chardev=vsock" in cmd
    assert "virtio-blk-device,drive=vd0" in cmd and "virtio-net-device,netdev=net0" in cmd
    assert "-pci" not in cmd


def test_microvm_has_an_rtc_unless_a_virtio_device_needs_its_irq(tmp_path):
    """Transports get IRQs 12, 11, 10... in creation order; the RTC's is 8: rootfs, vsock and
    network leave room for one more drive, and a second would put the network card on 8."""
    one_drive = [Drive(tmp_path / "a.img", True)]
    command = " ".join(vm(tmp_path, machine="microvm", network=UserNetwork(), drives=one_drive).command())
    assert ",rtc=on," in command
    two_drives = [*one_drive, Drive(tmp_path / "b.img", False)]
    command = " ".join(vm(tmp_path, machine="microvm", network=UserNetwork(), drives=two_drives).command())
    assert ",rtc=off," in command
    command = " ".join(vm(tmp_path, machine="microvm", drives=two_drives).command())
    assert ",rtc=on," in command  # no network card: vsock is the fourth device, on IRQ 9


def node_vm(tmp_path, **kwargs) -> QemuMachine:
    return QemuMachine("/k/vmlinux", None, "/img/rootfs.squashfs", workdir=tmp_path, **kwargs)


def test_node_kernel_boots_as_a_node_does(tmp_path):
    """No initramfs: microvm, virtio-mmio, and the node's boot arguments verbatim, in order."""
    machine = node_vm(tmp_path, network=UserNetwork(ip="10.0.0.2"))
    cmd = machine.command()
    assert machine.machine == "microvm"
    assert cmd[cmd.index("-machine") + 1].startswith("microvm,acpi=off,")
    assert cmd[cmd.index("-cpu") + 1] == "max"
    assert "-initrd" not in cmd and not any(arg.endswith("-pci") or "-pci," in arg for arg in cmd)
    line = cmd[cmd.index("-append") + 1].split()
    assert line[: len(NODE_BOOT_ARGS)] == list(NODE_BOOT_ARGS)
    assert NODE_BOOT_ARGS[:6] == ("console=ttyS0", "reboot=k", "panic=1", "pci=off", "ro", "nomodule")
    assert line[len(NODE_BOOT_ARGS) :] == ["root=/dev/vda"]


def test_debian_kernel_gets_neither_pci_off_nor_nomodule(tmp_path):
    machine = vm(tmp_path)
    assert machine.machine == "q35"
    line = machine.kernel_cmdline().split()
    assert "pci=off" not in line and "nomodule" not in line
    cmd = machine.command()
    assert cmd[cmd.index("-initrd") + 1] == "/k/initramfs.cpio.gz" and "-cpu" not in cmd


def test_node_kernel_on_q35_keeps_its_pci(tmp_path):
    line = node_vm(tmp_path, machine="q35").kernel_cmdline().split()
    assert "pci=off" not in line and "nomodule" in line and "root=/dev/vda" in line
