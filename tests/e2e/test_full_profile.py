"""The full profile (today's official image: nodejs/npm, build tools, docker) booted in
QEMU: a program runs node, npm, gcc, pip and dockerd inside the VM, as programs on the
network do. The VM has no network to the outside: what a check needs (a wheel, a
container image) ships in the program's code.

The full image is built through the cache on first use (about 7 minutes cold; cached by
its inputs afterwards, like the lean image).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from aleph_runtime.host.program import program_config, zip_directory

from .test_qemu_vm import NET, NET_CONFIG, boot, halt_and_exit

# Building the full image (debootstrap, chroot) needs root.
pytestmark = [pytest.mark.e2e, pytest.mark.root]

# An ASGI program whose one route runs the shell script it is sent and answers its
# status and output: each check below is one request.
SHELL_APP = rb"""
import asyncio, json, os

HERE = os.path.dirname(os.path.abspath(__file__))

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    script = b""
    while True:
        message = await receive()
        script += message.get("body", b"")
        if not message.get("more_body"):
            break
    # The status comes through the output, not waitpid: the init (PID 1) reaps exited
    # children it does not know of, and may take this one's status before asyncio does.
    process = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", script.decode() + "\necho \"exit-status=$?\"", cwd=HERE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "HOME": "/root"})
    output = (await process.stdout.read()).decode(errors="replace")
    output, _, status = output.rpartition("exit-status=")
    body = json.dumps({"status": int(status or -1), "output": output}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

HELLO_C = b"""#include <stdio.h>
#include <zlib.h>
int main(void) { printf("compiled %d\\n", 6 * 7); return 0; }
"""


def pure_python_wheel(directory: Path) -> Path:
    """A pure-Python wheel (py3-none-any), written by hand: pip installs it offline."""
    name, version = "aleph_hello", "1.0"
    files = {
        f"{name}/__init__.py": b"GREETING = 'hello from a wheel'\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: aleph-runtime-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def busybox_image_tar(path: Path) -> Path:
    """A one-binary container filesystem (the host's static busybox) for `docker import`."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is installed by scripts/setup.sh"
    data = Path(busybox).read_bytes()
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def full_images():
    from aleph_runtime.host.vmm import image

    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    kernel = image.ensure_kernel()
    rootfs = image.ensure_rootfs("full")
    return kernel.vmlinuz, kernel.initramfs, rootfs


async def run(vm, script: str, timeout: float = 300) -> tuple[int, str]:
    answer = await vm.client.http("POST", "/", body=script.encode(), timeout=timeout)
    assert "traceback" not in answer, answer.get("traceback")
    result = json.loads(answer["body"]["body"])
    return result["status"], result["output"]


async def test_node_npm_gcc_and_pip_in_the_full_image(full_images, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_bytes(SHELL_APP)
    (code / "hello.c").write_bytes(HELLO_C)
    wheel = pure_python_wheel(code)
    busybox_image_tar(code / "busybox.tar")
    config = program_config(zip_directory(code), "main:app", encoding="zip", interface="asgi", **NET_CONFIG)

    async with boot(full_images, tmp_path, network=NET, name="full", memory_mb=1536) as vm:
        await vm.client.configure(config)

        status, output = await run(vm, "node -e 'console.log(process.version, 6 * 7)'")
        assert status == 0 and output.split()[1] == "42", output
        status, output = await run(vm, "npm --version")
        assert status == 0 and output.strip()[0].isdigit(), output

        # C with a header and library of python3-dev's dependencies (zlib), the way a
        # native wheel's build links.
        status, output = await run(
            vm, "gcc -O2 -o /tmp/hello hello.c -lz && /tmp/hello && gcc --version | head -1"
        )
        assert status == 0 and output.startswith("compiled 42"), output

        status, output = await run(
            vm,
            f"python3 -m pip install --no-index --no-cache-dir --target /tmp/libs {wheel.name} "
            "&& PYTHONPATH=/tmp/libs python3 -c 'import aleph_hello; print(aleph_hello.GREETING)'",
        )
        assert status == 0 and output.strip().endswith("hello from a wheel"), output

        # iptables is the legacy backend (today's image); locale and fstab from stage-full.sh.
        status, output = await run(vm, "iptables --version; locale -a; cat /etc/fstab")
        assert "legacy" in output and "en_US.utf8" in output and "cgroup2" in output, output
        await halt_and_exit(vm)


async def test_dockerd_and_a_container_in_the_full_image(full_images, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_bytes(SHELL_APP)
    busybox_image_tar(code / "busybox.tar")
    config = program_config(zip_directory(code), "main:app", encoding="zip", interface="asgi", **NET_CONFIG)
    async with boot(full_images, tmp_path, network=NET, name="docker", memory_mb=1536) as vm:
        await vm.client.configure(config)
        # dockerd on Debian's kernel: its bridge and iptables NAT need modules the test
        # kernel's initramfs does not load (a node's kernel builds them in), so without both.
        status, output = await run(
            vm,
            "setsid -f dockerd --iptables=false --ip6tables=false --bridge=none </dev/null >/tmp/dockerd.log 2>&1; "
            "for i in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 1; done; "
            "docker info --format '{{json .}}' || { tail -20 /tmp/dockerd.log; exit 1; }",
            timeout=300,
        )
        assert status == 0, output
        info = json.loads(output.strip().splitlines()[-1])
        assert info["Driver"] == "overlay2", info["Driver"]  # the full image's tmpfs at /var/lib/docker
        assert info["CgroupVersion"] == "2"
        assert info["ServerVersion"]

        status, output = await run(
            vm,
            "docker import busybox.tar aleph-test/busybox:1 >/dev/null && "
            "docker run --rm --network none aleph-test/busybox:1 /bin/busybox echo hello from a container",
            timeout=300,
        )
        assert status == 0 and output.strip().endswith("hello from a container"), output

        await halt_and_exit(vm)
