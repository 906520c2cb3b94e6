"""The debian-13 runtime image (Debian 13, Python 3.13) booted in QEMU with the node-like
kernel, as test_qemu_vm.py boots debian-12's: it answers a request from a program that
needs Python 3.12+, with the image's libraries at the VM's paths.

Marked `debian13`: the image is a second build (minutes when cold, then cached), which
`-m "not debian13"` leaves out.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from aleph_runtime.host.program import program_config

from .test_qemu_vm import NET_CONFIG, boot, halt_and_exit, json_body

# Building the image (debootstrap, chroot) needs root.
pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.debian13]

REPOSITORY = Path(__file__).resolve().parents[2]

# PEP 695 syntax (3.12+) and the libraries' whereabouts, in one answer.
WHERE_PROGRAM = b"""
import json
import sys

import fastapi

type Answer = dict[str, object]


async def app(scope, receive, send):
    found: Answer = {
        "version_info": list(sys.version_info[:2]),
        "fastapi": fastapi.__file__,
        "fastapi_version": fastapi.__version__,
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(found).encode()})
"""


@pytest.fixture(scope="session")
def debian13_images():
    from aleph_runtime.host.machines.qemu import find_images

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return find_images("node", "lean", runtime="debian-13")


async def test_debian_13_boots_on_the_node_kernel_and_answers(debian13_images, tmp_path):
    async with boot(debian13_images, tmp_path, name="debian13") as vm:
        assert vm.qemu.initramfs is None  # the node-like kernel, booted as a node boots it
        await vm.client.configure(program_config(WHERE_PROGRAM, "main:app", interface="asgi", **NET_CONFIG))
        answer = await vm.client.http("GET", "/")
        assert answer["headers"]["status"] == 200, answer
        found = json_body(answer)
        assert found["version_info"] == [3, 13], found
        assert found["fastapi"] == "/opt/aleph/libs/fastapi/__init__.py", found
        lock = (REPOSITORY / "rootfs-build" / "requirements-debian-13.txt").read_text()
        assert re.search(rf"^fastapi=={re.escape(found['fastapi_version'])}$", lock, re.MULTILINE), found
        await halt_and_exit(vm)
