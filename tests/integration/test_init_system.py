"""The init as PID 1 of private namespaces, driven as the supervisor drives a VM:
real loop-device volumes, a veth eth0, the guest API on `<uds>_53`, halt and signals."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from aleph_runtime.host.machines.sandbox import Sandbox, SandboxMachine
from aleph_runtime.host.program import program_config
from aleph_runtime.host.supervisor import ConfigurationRejected
from tests.helpers import zip_bytes
from tests.integration.nsguest import (
    INIT1,
    REPOSITORY,
    guest_env,
    host_file_snapshot,
    make_ext4,
    make_squashfs,
)
from tests.sandbox_tools import read_from_image

pytestmark = pytest.mark.root

PROGRAMS = REPOSITORY / "tests" / "programs"
APP = (PROGRAMS / "system_app.py").read_bytes()
VM_HASH = "c0ffee" + "00" * 29
_spec = importlib.util.spec_from_file_location("guest_api_stub", PROGRAMS / "guest_api_stub.py")
guest_api_stub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guest_api_stub)


class Booted:
    def __init__(self, machine: SandboxMachine, console: Path):
        self.machine = machine
        self.box = machine.box
        self.client = machine.client
        self.console = console

    async def get(self, path: str, query: str = "") -> dict:
        answer = await self.client.http("GET", path, query)
        assert "traceback" not in answer, answer["traceback"] + self.log()
        return json.loads(answer["body"]["body"])

    def log(self) -> str:
        return "\n--- console ---\n" + self.console.read_text(errors="replace")

    def wait_exit(self, timeout: float = 15) -> int:
        return self.box.wait(timeout)


@pytest.fixture
async def boot(tmp_path):
    started: list[tuple[SandboxMachine, object]] = []
    stack = contextlib.ExitStack()

    async def start(
        *, devices=None, veth=False, wrapper: str | None = None, api=None, init_args=(), **config_overrides
    ) -> tuple[Booted, dict | Exception]:
        console = tmp_path / "console.log"
        console_file = stack.enter_context(console.open("ab"))
        command = [sys.executable, "-OO", str(INIT1), *init_args]
        if wrapper:
            command = ["/bin/sh", "-c", wrapper + '\nexec "$@"', "wrapper", *command]
        box = Sandbox(
            # The default work directory is short: Unix socket paths are limited to 107 bytes.
            command, env=guest_env(), binds=[REPOSITORY], volumes=devices or {},
            veth=veth, stdout=console_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        machine = SandboxMachine(box)
        if api is None:
            runner = await guest_api_stub.start(f"{box.base}_53", VM_HASH)
            started.append((machine, runner.cleanup))
        else:
            started.append((machine, await api(f"{box.base}_53")))
        booted = Booted(machine, console)
        signal_ = await machine.start(timeout=30)
        assert signal_["version"] == "2.0.0"
        arguments = {"code": APP, "entrypoint": "main:app", "vm_hash": VM_HASH, **config_overrides}
        config = program_config(**arguments)
        config["variables"] = {"VM_HASH": VM_HASH, **(config.get("variables") or {})}
        try:
            answer = await booted.client.configure(config)
        except ConfigurationRejected as error:
            answer = error
        return booted, answer

    yield start
    for machine, cleanup in started:
        await machine.kill()
        await cleanup()
    stack.close()


@pytest.fixture
def volume_images(tmp_path):
    squash = make_squashfs(tmp_path / "venv.squashfs", {"vollib.py": b"VALUE = 42\n"})
    ext4 = make_ext4(tmp_path / "store.ext4")
    return squash, ext4


VOLUMES = [
    {"mount": "/opt/venv", "device": "vdc", "read_only": True},
    {"mount": "/mnt/store", "device": "vdd", "read_only": False},
]
NETWORK = {"ip": "10.77.0.5", "route": "10.77.0.1", "ipv6": "fc00:77::5/64", "ipv6_gateway": "fc00:77::1",
           "dns_servers": ["10.77.0.1"]}  # fmt: skip


async def test_full_system_program_then_halt(boot, volume_images):
    squash, ext4 = volume_images
    before = host_file_snapshot()
    vm, answer = await boot(devices={"vdc": squash, "vdd": ext4}, veth=True, volumes=VOLUMES, **NETWORK)
    assert answer == {"success": True}, getattr(answer, "traceback", "")

    info = await vm.get("/info")
    assert info["hostname"] == base64.b32encode(bytes.fromhex(VM_HASH)).decode().rstrip("=").lower()
    assert info["resolv_conf"] == "nameserver 10.77.0.1\n"
    assert info["env"]["ALEPH_API_UNIX_SOCKET"] == "/tmp/socat-socket"
    assert (await vm.get("/lib")) == {"value": 42}

    addresses = json.loads(vm.box.run(["ip", "-j", "addr", "show", "dev", "eth0"]).stdout)[0]["addr_info"]
    assert {("10.77.0.5", 24), ("fc00:77::5", 64)} <= {(a["local"], a["prefixlen"]) for a in addresses}
    routes = json.loads(vm.box.run(["ip", "-j", "route"]).stdout)
    assert any(r["dst"] == "default" and r["gateway"] == "10.77.0.1" for r in routes)

    # The guest API, through the in-process bridge, with the real SDK in the program.
    assert await vm.get("/cache") == {"get": "forty-two", "keys": ["answer"]}
    signed = await vm.get("/sign")
    assert signed["address"] == guest_api_stub.ADDRESS and signed["signed"]["signature"].startswith("0x")

    assert await vm.get("/write", "acknowledged before halt") == {"written": "acknowledged before halt"}
    result = await vm.client.halt()
    assert (result.stopped, result.shut_down) == (True, True), vm.log()
    # reboot(2) by the PID 1 of a PID namespace ends it: RB_AUTOBOOT as a SIGHUP.
    assert vm.wait_exit() == -signal.SIGHUP, vm.log()
    assert read_from_image(ext4, "/value") == b"acknowledged before halt"
    assert "Halted" in vm.log()
    assert host_file_snapshot() == before


async def test_kernel_words_in_argv_are_ignored_by_pid1(boot):
    """A kernel hands PID 1 the boot arguments it did not take (a node's `nomodule`, on a
    kernel without modules): the init must not exit on them, PID 1 exiting panics the VM."""
    vm, answer = await boot(init_args=["nomodule", "noapic", "--help", "--uds"])
    assert answer == {"success": True}, getattr(answer, "traceback", "") + vm.log()
    assert "Ignoring arguments" in vm.log() and "nomodule" in vm.log()
    assert (await vm.client.halt()).shut_down


async def test_exception_during_halt_still_unmounts(boot, volume_images):
    squash, ext4 = volume_images
    vm, answer = await boot(
        devices={"vdc": squash, "vdd": ext4}, volumes=VOLUMES, variables={"FAIL_AT_SHUTDOWN": "1"}
    )
    assert answer == {"success": True}, getattr(answer, "traceback", "")
    await vm.get("/write", "survives a failing shutdown")
    result = await vm.client.halt()
    assert (result.stopped, result.shut_down) == (True, True), vm.log()
    vm.wait_exit()
    assert read_from_image(ext4, "/value") == b"survives a failing shutdown"
    assert "exploded" in vm.log()


async def test_sigterm_halts_cleanly(boot, volume_images):
    squash, ext4 = volume_images
    vm, answer = await boot(devices={"vdc": squash, "vdd": ext4}, volumes=VOLUMES)
    assert answer == {"success": True}, getattr(answer, "traceback", "")
    await vm.get("/write", "written before SIGTERM")
    os.kill(vm.box.pid, signal.SIGTERM)
    await asyncio.get_running_loop().run_in_executor(None, vm.wait_exit)
    assert read_from_image(ext4, "/value") == b"written before SIGTERM"
    assert "Halt requested by SIGTERM" in vm.log() and "Halted" in vm.log()


async def test_missing_volume_device_is_refused_and_the_init_stays_up(boot, volume_images):
    squash, _ = volume_images
    volumes = [VOLUMES[0], {"mount": "/mnt/gone", "device": "vdz", "read_only": False}]
    vm, answer = await boot(devices={"vdc": squash}, volumes=volumes)
    assert isinstance(answer, ConfigurationRejected)
    assert "/mnt/gone" in answer.error and "vdz" in answer.error
    call = await vm.client.http("GET", "/info")
    assert "failed to start" in call["error"]
    assert "/opt/venv" not in vm.box.read_file("/proc/mounts")
    result = await vm.client.halt()
    assert result.shut_down


async def test_sdk_through_the_bridge_against_the_real_guest_api(boot, tmp_path):
    """VmCache and RemoteAccount in the program, the host's own guest API (Redis, signer) behind."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    from aleph_runtime.host.services.guest_api import GuestAPIServer, GuestAPISettings
    from aleph_runtime.host.services.redis_server import RedisServer
    from aleph_runtime.host.services.signer import LocalSigner

    state = Path(tempfile.mkdtemp(prefix="ar-", dir="/var/tmp"))
    redis = await RedisServer(state / "redis", persistent=False).start()
    signer = LocalSigner.in_state_dir(state)

    async def real_api(socket_path: str):
        server = await GuestAPIServer(socket_path, GuestAPISettings(VM_HASH, redis.url, signer)).start()

        async def cleanup():
            await server.stop()
            await redis.stop()
            shutil.rmtree(state, ignore_errors=True)

        return cleanup

    vm, answer = await boot(api=real_api)
    assert answer == {"success": True}, getattr(answer, "traceback", "")
    assert await vm.get("/cache") == {"get": "forty-two", "keys": ["answer"]}
    signed = await vm.get("/sign")
    assert signed["address"] == await signer.address()
    assert signed["signed"]["signature"].startswith("0x")
    assert signed["signed"]["sender"] == signed["address"]
    result = await vm.client.halt()
    assert result.shut_down


async def test_hostile_input_data_is_refused(boot):
    before = host_file_snapshot()
    vm, answer = await boot(input_data=zip_bytes({"fine.txt": b"ok", "../../etc/evil": b"pwned"}))
    assert isinstance(answer, ConfigurationRejected), answer
    assert vm.box.run(["test", "-e", "/etc/evil"], check=False).returncode != 0
    assert not os.path.exists("/etc/evil")
    assert host_file_snapshot() == before


async def test_input_data_in_and_output_data_out(boot):
    vm, answer = await boot(input_data=zip_bytes({"in.txt": b"from the input"}))
    assert answer == {"success": True}, getattr(answer, "traceback", "")
    call = await vm.client.http("GET", "/data-write", "from the program")
    assert json.loads(call["body"]["body"]) == {"in": "from the input"}
    with zipfile.ZipFile(io.BytesIO(call["output_data"])) as archive:
        assert archive.read("in.txt") == b"from the input"
        assert archive.read("out.txt") == b"from the program"


EXECUTABLE = b"""#!/bin/sh
# A start script that does not exec: the server is its child, as in many real programs.
echo "run.sh starting" >&2
python3 "$(dirname "$0")/server.py" 8080
"""


async def test_executable_program_crash_restart_and_halt(boot):
    code = zip_bytes({"run.sh": EXECUTABLE, "server.py": (PROGRAMS / "http_echo_server.py").read_bytes()})
    vm, answer = await boot(code=code, encoding="zip", entrypoint="run.sh", interface="executable")
    assert answer == {"success": True}, getattr(answer, "traceback", "") + vm.log()
    first = await vm.client.http("POST", "/echo", "a=1", [(b"x-test", b"yes")], b"body!")
    echoed = json.loads(first["body"]["body"])
    assert (first["headers"]["status"], echoed["body"], echoed["query"]) == (200, "body!", "a=1")
    crashed = await vm.client.http("GET", "/crash")
    assert "closed the connection" in crashed["error"]
    second = await vm.client.http("GET", "/echo")
    assert second["headers"]["status"] == 200, second
    assert json.loads(second["body"]["body"])["pid"] != echoed["pid"]
    assert "status 3" in vm.log()
    result = await vm.client.halt()
    assert (result.stopped, result.shut_down) == (True, True)
    vm.wait_exit()


async def test_ssh_with_host_keys_generated_on_first_boot(boot, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host_keys_before = sorted(Path("/etc/ssh").glob("ssh_host_*"))
    host_key_bytes = {path: path.read_bytes() for path in host_keys_before}
    # A fresh rootfs has no host keys: remove them, inside the sandbox's overlay only.
    wrapper = "grep -q '^overlay / overlay' /proc/mounts && rm -f /etc/ssh/ssh_host_*"
    vm, answer = await boot(authorized_keys=[key.with_suffix(".pub").read_text()], wrapper=wrapper)
    assert answer == {"success": True}, getattr(answer, "traceback", "")
    # The private key lives in the sandbox's work directory, which it sees at the same path.
    private = vm.box.workdir / "id"
    private.write_bytes(key.read_bytes())
    private.chmod(0o600)
    deadline = time.monotonic() + 30
    while True:
        result = vm.box.run(
            ["ssh", "-i", str(private), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "root@127.0.0.1", "echo ok-from-ssh"],
            check=False,
        )  # fmt: skip
        if "ok-from-ssh" in result.stdout or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert "ok-from-ssh" in result.stdout, result.stderr + vm.log()
    assert "no SSH host keys: generating them" in vm.log()
    assert vm.box.run(["test", "-f", "/etc/ssh/ssh_host_ed25519_key"], check=False).returncode == 0
    mode = vm.box.run(["stat", "-c", "%a", "/root/.ssh/authorized_keys"]).stdout.strip()
    assert mode == "600"
    await vm.client.halt()
    assert sorted(Path("/etc/ssh").glob("ssh_host_*")) == host_keys_before
    assert {path: path.read_bytes() for path in host_keys_before} == host_key_bytes


STUBBORN = b"""#!/bin/sh
# A program that ignores SIGTERM: only SIGKILL stops it.
trap '' TERM
python3 "$(dirname "$0")/server.py" 8080 &
while :; do sleep 0.2; done
"""


async def test_halt_fits_the_supervisors_budget_with_a_stubborn_executable(boot, volume_images):
    """The supervisor gives halt 5 s in all, then kills the VMM: an executable that
    ignores SIGTERM must be killed early enough for the volumes to be unmounted."""
    squash, ext4 = volume_images
    code = zip_bytes({"run.sh": STUBBORN, "server.py": (PROGRAMS / "http_echo_server.py").read_bytes()})
    vm, answer = await boot(
        code=code, encoding="zip", entrypoint="run.sh", interface="executable",
        devices={"vdc": squash, "vdd": ext4}, volumes=VOLUMES,
    )  # fmt: skip
    assert answer == {"success": True}, getattr(answer, "traceback", "") + vm.log()
    assert (await vm.client.http("GET", "/echo"))["headers"]["status"] == 200
    vm.box.run(["sh", "-c", "echo stubborn > /mnt/store/value"])
    started = time.monotonic()
    result = await vm.client.halt(timeout=5)
    assert (result.stopped, result.shut_down) == (True, True), vm.log()
    assert time.monotonic() - started < 5
    vm.wait_exit()
    assert read_from_image(ext4, "/value") == b"stubborn\n"


async def test_executable_from_squashfs_code_without_execute_bit(boot, tmp_path):
    """Squashfs code is read-only: a script that lacks +x runs through its shebang."""
    image = make_squashfs(
        tmp_path / "code.squashfs",
        {"run.sh": EXECUTABLE, "server.py": (PROGRAMS / "http_echo_server.py").read_bytes()},
    )
    (tmp_path / "code.d" / "run.sh").chmod(0o644)
    subprocess.run(["mksquashfs", str(tmp_path / "code.d"), str(image), "-noappend", "-quiet", "-all-root"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    vm, answer = await boot(
        code=None, encoding="squashfs", entrypoint="run.sh", interface="executable",
        devices={"vdb": image}, volumes=[{"mount": "/opt/code", "device": "vdb", "read_only": True}],
    )  # fmt: skip
    assert answer == {"success": True}, getattr(answer, "traceback", "") + vm.log()
    assert vm.box.run(["stat", "-c", "%a", "/opt/code/run.sh"]).stdout.strip() == "644"
    call = await vm.client.http("GET", "/echo")
    assert call["headers"]["status"] == 200, call
    result = await vm.client.halt()
    assert (result.stopped, result.shut_down) == (True, True)


def _tar_gz(files: dict[str, bytes]) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


PLAIN_SCRIPT = b"""#!/bin/sh
exec python3 -m http.server 8080 --bind 127.0.0.1 --directory /opt/code
"""


@pytest.mark.parametrize("encoding", ["plain", "tar.gz"])
async def test_executable_from_plain_and_tar_code(boot, encoding):
    if encoding == "plain":
        code, entrypoint, path = PLAIN_SCRIPT, "serve.sh", "/"
    else:
        code = _tar_gz(
            {"bin/run.sh": EXECUTABLE, "bin/server.py": (PROGRAMS / "http_echo_server.py").read_bytes()}
        )
        entrypoint, path = "bin/run.sh", "/echo"
    vm, answer = await boot(code=code, encoding=encoding, entrypoint=entrypoint, interface="executable")
    assert answer == {"success": True}, getattr(answer, "traceback", "") + vm.log()
    call = await vm.client.http("GET", path)
    assert call["headers"]["status"] == 200, call
    result = await vm.client.halt()
    assert (result.stopped, result.shut_down) == (True, True)
