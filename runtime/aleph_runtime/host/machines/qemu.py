"""The runtime image booted in QEMU (host/vmm/qemu.py) as a node's machine."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from aleph_runtime.host.errors import SetupError
from aleph_runtime.host.vmm.qemu import Drive, Network, QemuVM, find_images

#: The guest network a VM gets (QEMU's user network, restricted: no traffic leaves it).
VM_IP, VM_ROUTE = "172.16.0.2", "172.16.0.1"
#: How long a program may take to start: the supervisor's 60 s, more under emulation (TCG).
CONFIGURE_TIMEOUT = 60
CONFIGURE_TIMEOUT_EMULATED = 300


class QemuMachine:
    """The runtime image in QEMU (host/vmm/qemu.py), drives in the order the config names them."""

    def __init__(
        self,
        run_dir: Path,
        log_path: Path,
        drives: list,
        memory_mb: int,
        vcpus: int,
        kernel: str | None = None,
        images=None,
        profile: str | None = None,
        compression: str | None = None,
    ):
        """`kernel`: "node" (the node-like kernel on microvm, the default) or "debian"
        (Debian's kernel and initramfs on q35). `images`: a restarted machine reuses its
        predecessor's, so no cache check runs on the loop."""
        if shutil.which("qemu-system-x86_64") is None:
            raise SetupError(
                "qemu-system-x86_64 is not installed (Debian's qemu-system-x86; scripts/setup.sh)"
            )
        if images is None:
            try:
                images = find_images(kernel, profile, compression)
            except Exception as error:  # noqa: BLE001 - a build failure, reported as such
                raise SetupError(f"could not build or find the runtime image and kernel: {error}") from None
        kernel, initramfs, rootfs = images
        self.images = tuple(images)
        self.log_path = log_path
        self.vm = QemuVM(
            kernel, initramfs, rootfs, drives, memory_mb=memory_mb, vcpus=vcpus,
            network=Network(ip=VM_IP, route=VM_ROUTE), workdir=run_dir / "vm", console_to=log_path,
        )  # fmt: skip
        self.uds_path = self.vm.uds_path
        self.client = self.vm.client

    @staticmethod
    def drive(path: Path, read_only: bool) -> Drive:
        return Drive(path, read_only=read_only)

    async def start(self) -> dict:
        return await self.vm.start(timeout=300)

    async def configure(self, config: dict) -> dict:
        # A node allows 60 s, with KVM; QEMU here may emulate (TCG), many times slower.
        return await self.vm.client.configure(config, timeout=CONFIGURE_TIMEOUT_EMULATED)

    async def wait(self) -> int | None:
        while self.vm.process is None:
            await asyncio.sleep(0.1)
        return await self.vm.process.wait()

    async def kill(self) -> None:
        await self.vm.kill()

    async def stop(self) -> None:
        await self.vm.stop()
