"""The runtime image booted in QEMU, driven through our vsock backend by the supervisor client.

Every exchange goes through the real path: SupervisorClient → `<uds>` (Firecracker's
layout) → vhost-user vsock backend → virtqueues → the guest kernel's vsock → the init.
Boots the node-like kernel as a node does (microvm, virtio-mmio, no initramfs, the node's
boot arguments); ALEPH_VM_KERNEL=debian runs the suite on Debian's kernel and initramfs
(q35) instead. Needs the kernel and the runtime image (built through their caches, or
given as ALEPH_KERNEL and ALEPH_ROOTFS, with ALEPH_INITRAMFS for a kernel that needs
one; a failed build fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aleph_runtime.host.machines.qemu import QemuMachine
from aleph_runtime.host.program import program_config, squashfs_directory, tar_directory, zip_directory
from aleph_runtime.host.supervisor import ConfigurationRejected
from aleph_runtime.host.vmm.qemu import NODE_BOOT_ARGS, Drive, UserNetwork

pytestmark = pytest.mark.e2e

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
NET = UserNetwork(ip="172.16.7.2", route="172.16.7.1", ipv6="fc00:1:2:3::2/64", ipv6_gateway="fc00:1:2:3::1")
NET_CONFIG = {
    "ip": "172.16.7.2",
    "route": "172.16.7.1",
    "ipv6": "fc00:1:2:3::2/64",
    "ipv6_gateway": "fc00:1:2:3::1",
}

# The hello example: plain code whose entrypoint calls a top-level helper (greeting).
HELLO = (Path(__file__).resolve().parents[2] / "examples" / "hello" / "main.py").read_bytes()
HELLO_ANSWER = b"Hello from aleph-runtime! You asked for /\n"


@pytest.fixture(scope="session", autouse=True)
def qemu_installed():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")


@contextlib.asynccontextmanager
async def boot(
    images, tmp_path: Path, drives=(), network: UserNetwork | None = NET, name: str = "vm", **vm_options
):
    kernel, initramfs, rootfs = images
    workdir = Path(f"/tmp/aleph-e2e-{os.getpid()}-{name}")
    shutil.rmtree(workdir, ignore_errors=True)
    vm = QemuMachine(kernel, initramfs, rootfs, list(drives), network=network, workdir=workdir,
                console_to=tmp_path / f"{name}-console.log", **vm_options)  # fmt: skip
    try:
        await vm.start()
        yield vm
    finally:
        if vm.process is not None and vm.process.returncode is None:
            await vm.stop()
        else:
            await vm.kill()
        # No stray process or socket.
        assert vm.process is None or vm.process.returncode is not None
        leftovers = [p.name for p in workdir.glob("*")] if workdir.exists() else []
        shutil.rmtree(workdir, ignore_errors=True)
        assert not [name for name in leftovers if "sock" in name], leftovers


async def halt_and_exit(vm: QemuMachine) -> None:
    """Halt as the supervisor does; QEMU must then exit by itself (no kill)."""
    result = await vm.client.halt()
    assert result.lines == [b"STOP\n", b"STOPZ\n"]
    assert await vm.wait_exit(60) is not None, "QEMU did not exit on its own after halt"
    await vm.stop()


def json_body(answer: dict) -> object:
    assert "traceback" not in answer, answer.get("traceback")
    return json.loads(answer["body"]["body"])


async def test_plain_program_network_and_halt(images, tmp_path):
    async with boot(images, tmp_path) as vm:
        assert vm.ready["version"] == "2.0.0"
        await vm.client.configure(program_config(HELLO, "main:app", interface="asgi", **NET_CONFIG))
        answer = await vm.client.http("GET", "/")
        assert answer["headers"]["status"] == 200 and answer["body"]["body"] == HELLO_ANSWER
        # The network configuration seen from inside.
        addrs = json.loads(await vm.client.command("ip -j addr show eth0"))
        seen = {(a["family"], a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]}
        assert ("inet", "172.16.7.2", 24) in seen
        assert ("inet6", "fc00:1:2:3::2", 64) in seen
        routes = json.loads(await vm.client.command("ip -j route show default"))
        assert routes[0]["gateway"] == "172.16.7.1"
        # What udev would have added to the devtmpfs, made by the init.
        links = await vm.client.command("readlink /dev/fd /dev/stdin /dev/stdout /dev/stderr")
        assert links.split() == [b"/proc/self/fd", b"/proc/self/fd/0", b"/proc/self/fd/1", b"/proc/self/fd/2"]
        await halt_and_exit(vm)
        # The kernel's own line for the init's reboot(RB_AUTOBOOT); `reboot=k` on the
        # command line it echoes at boot must not count.
        assert "reboot: Restarting system" in vm.console_text(), vm.console_tail()
        if vm.qemu.initramfs is None:
            # Booted as a node boots: its command line, and no initramfs.
            console = vm.console_text()
            command_line = next(line for line in console.splitlines() if "Command line:" in line)
            assert command_line.split("Command line:", 1)[1].split()[: len(NODE_BOOT_ARGS)] == list(
                NODE_BOOT_ARGS
            )
            assert "initramfs" not in console.lower(), console


def ext4_image(path: Path, size_mib: int = 32) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def ext4_read(image: Path, path: str) -> bytes:
    """A file's content from an ext4 image, without mounting it."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True)
    return out.stdout


async def test_zip_fastapi_lifespan_shutdown_only_at_halt(images, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(PROGRAMS / "fastapi_app.py", code / "main.py")
    # The markers go to a persistent volume, so what the lifespan did is readable after the VM is gone.
    store = ext4_image(tmp_path / "markers.ext4")
    config = program_config(
        zip_directory(code), "main:app", encoding="zip",
        variables={"MARKER_FILE": "/var/lib/markers/markers"},
        volumes=[{"mount": "/var/lib/markers", "device": "vdb", "read_only": False}],
    )  # fmt: skip
    async with boot(images, tmp_path, drives=[Drive(store, read_only=False)]) as vm:
        await vm.client.configure(config)
        assert json_body(await vm.client.http("GET", "/items")) == {"items": ["from-startup"]}
        assert json_body(await vm.client.http("POST", "/items/second")) == {
            "items": ["from-startup", "second"]
        }
        await asyncio.sleep(0.5)
        assert (await vm.client.command("cat /var/lib/markers/markers")).split() == [b"startup"]
        await halt_and_exit(vm)
    # Shutdown ran at halt, and the volume was synced and unmounted before STOPZ.
    assert ext4_read(store, "/markers").split() == [b"startup", b"shutdown"]


async def test_streaming_64_mib_body_and_32_in_flight(images, tmp_path):
    config = program_config((PROGRAMS / "starlette_app.py").read_bytes(), "main:app")
    async with boot(images, tmp_path) as vm:
        await vm.client.configure(config)
        answer = await vm.client.http("GET", "/stream")
        assert answer["body"]["body"] == b"".join(f"part{i}\n".encode() for i in range(10))
        body = os.urandom(1 << 20) * 64
        answer = await vm.client.http("POST", "/echo", "a=1", [(b"X-Test", b"yes")], body, timeout=600)
        assert json_body(answer) == {
            "length": 64 << 20, "sha256": hashlib.sha256(body).hexdigest(), "query": "a=1", "header": "yes",
        }  # fmt: skip
        answers = await asyncio.gather(
            *(vm.client.http("GET", "/together", "count=32", timeout=120) for _ in range(32))
        )
        assert [a["body"]["body"] for a in answers] == [b"together"] * 32
        await halt_and_exit(vm)


async def test_tar_gz_package(images, tmp_path):
    package = tmp_path / "pkg"
    (package / "webapp").mkdir(parents=True)
    (package / "webapp" / "__init__.py").write_text("")
    (package / "webapp" / "server.py").write_text(HELLO.decode())
    config = program_config(tar_directory(package, "gz"), "webapp.server:app", encoding="tar.gz")
    async with boot(images, tmp_path) as vm:
        await vm.client.configure(config)
        assert (await vm.client.http("GET", "/"))["body"]["body"] == HELLO_ANSWER
        await halt_and_exit(vm)


async def test_squashfs_code_and_an_immutable_library_volume(images, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    # The hello app with its helper replaced by one answering from the library volume.
    from_library = "\ndef greeting(path):\n    return shiny.VALUE\n"
    (code / "main.py").write_text("import shiny\n" + HELLO.decode() + from_library)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shiny.py").write_text("VALUE = 'from the library volume'\n")
    code_image = squashfs_directory(code, tmp_path / "code.squashfs")
    lib_image = squashfs_directory(lib, tmp_path / "lib.squashfs")
    config = program_config(
        None, "main:app", encoding="squashfs", interface="asgi",
        volumes=[
            {"mount": "/opt/code", "device": "vdb", "read_only": True},
            {"mount": "/opt/packages", "device": "vdc", "read_only": True},
        ],
    )  # fmt: skip
    async with boot(images, tmp_path, drives=[Drive(code_image), Drive(lib_image)]) as vm:
        await vm.client.configure(config)
        assert (await vm.client.http("GET", "/"))["body"]["body"] == b"from the library volume\n"
        await halt_and_exit(vm)


PERSIST = b"""
import os
PATH = "/var/lib/store/value"

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    if scope["method"] == "PUT":
        with open(PATH, "wb") as f:
            f.write(message.get("body", b""))
        body = b"stored"
    else:
        body = open(PATH, "rb").read() if os.path.exists(PATH) else b"nothing"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


async def test_persistent_volume_survives_halt_and_boot(images, tmp_path):
    image = ext4_image(tmp_path / "store.ext4")
    volumes = [{"mount": "/var/lib/store", "device": "vdb", "read_only": False}]
    config = program_config(PERSIST, "main:app", interface="asgi", volumes=volumes)
    async with boot(images, tmp_path, drives=[Drive(image, read_only=False)], name="first") as vm:
        await vm.client.configure(config)
        assert (await vm.client.http("GET", "/"))["body"]["body"] == b"nothing"
        assert (await vm.client.http("PUT", "/", body=b"kept across boots"))["body"]["body"] == b"stored"
        await halt_and_exit(vm)
    async with boot(images, tmp_path, drives=[Drive(image, read_only=False)], name="second") as vm:
        await vm.client.configure(config)
        assert (await vm.client.http("GET", "/"))["body"]["body"] == b"kept across boots"
        await halt_and_exit(vm)


async def test_calls_the_host_gave_up_on_are_cancelled_over_vsock(images, tmp_path):
    """The host closes its end (its `seconds` passed): through the vsock device, the init
    sees the connection end and cancels the call (issue 9, item 1)."""

    async def stats(vm) -> dict:
        return json.loads((await vm.client.http("GET", "/stats", timeout=60))["body"]["body"])

    async def until(vm, wanted: dict) -> dict:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            counts = await stats(vm)
            if all(counts[key] == value for key, value in wanted.items()):
                return counts
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.2)

    config = program_config((PROGRAMS / "guardrails_app.py").read_bytes(), "main:app")
    async with boot(images, tmp_path, network=None) as vm:
        await vm.client.configure(config)
        calls = [asyncio.ensure_future(vm.client.http("GET", "/hang", timeout=300)) for _ in range(3)]
        await until(vm, {"hanging": 3})
        for call in calls:
            call.cancel()  # the client closes its Unix connection, as the supervisor does
        await asyncio.gather(*calls, return_exceptions=True)
        assert await until(vm, {"hanging": 0, "cancelled": 3})
        await halt_and_exit(vm)


async def test_executable_program(images, tmp_path):
    code = tmp_path / "exe"
    code.mkdir()
    shutil.copy(PROGRAMS / "http_echo_server.py", code / "server.py")
    (code / "run.sh").write_text('#!/bin/sh\ncd "$(dirname "$0")"\nexec python3 server.py 8080\n')
    (code / "run.sh").chmod(0o755)
    config = program_config(zip_directory(code), "run.sh", encoding="zip", interface="executable")
    async with boot(images, tmp_path) as vm:
        await vm.client.configure(config)
        answer = await vm.client.http("POST", "/echo", body=b"to the executable", timeout=120)
        assert answer["headers"]["status"] == 200, answer
        assert b"to the executable" in answer["body"]["body"]
        await halt_and_exit(vm)


async def test_import_failure_is_a_config_error_and_the_vm_still_halts(images, tmp_path):
    async with boot(images, tmp_path) as vm:
        with pytest.raises(ConfigurationRejected) as rejected:
            await vm.client.configure(program_config(b"import no_such_module_here\n", "main:app"))
        assert "no_such_module_here" in rejected.value.error
        await halt_and_exit(vm)


GUEST_CLIENTS = r"""
import hashlib, socket, sys, threading
results = {}
def one(i):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/tmp/socat-socket")
    payload = (b"%d:" % i) * 50000
    s.sendall(b"PUT /echo HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    results[i] = data.endswith(hashlib.sha256(payload).hexdigest().encode())
threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(sum(results.values()), "of", len(threads))
"""


async def test_guest_to_host_streams_and_a_64_mib_download(images, tmp_path):
    """Guest → host through `<uds>_53` (the guest API bridge), 16 streams at once; then
    64 MiB from the guest to the host intact."""
    async with boot(images, tmp_path) as vm:
        seen = []

        async def guest_api(reader, writer):
            # A stand-in for the host's guest API: hash what the guest sent.
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            seen.append(len(body))
            digest = hashlib.sha256(body).hexdigest().encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 64\r\n\r\n" + digest)
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(guest_api, path=f"{vm.uds_path}_53")
        try:
            await vm.client.configure(program_config(HELLO, "main:app", interface="asgi"))
            script = GUEST_CLIENTS.replace("'", "'\"'\"'")
            out = await vm.client.command(f"python3 -c '{script}'", timeout=300)
            assert out.strip() == b"16 of 16", out
            assert len(seen) == 16
        finally:
            server.close()
        digest = (
            await vm.client.command("head -c 67108864 /dev/urandom > /tmp/blob && sha256sum /tmp/blob")
        ).split()[0]
        blob = await vm.client.command("cat /tmp/blob", timeout=600)
        assert len(blob) == 64 << 20
        assert hashlib.sha256(blob).hexdigest().encode() == digest
        await halt_and_exit(vm)
