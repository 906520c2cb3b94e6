"""The init as a real process in dev transport mode, driven exactly as the supervisor drives it."""

import asyncio
import io
import json
import os
import signal
import zipfile
from pathlib import Path

import pytest

from aleph_runtime import protocol
from aleph_runtime.host.machines.base import MachineExited
from aleph_runtime.host.machines.dev import DevMachine
from aleph_runtime.host.program import program_config, tar_directory, zip_directory
from aleph_runtime.host.supervisor import ConfigurationRejected

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"


@pytest.fixture(params=["uvloop", "asyncio"])
async def init(tmp_path, request):
    """The init under both event loops: uvloop in the image, the stdlib's wherever uvloop is missing."""
    env = {"MARKER_FILE": str(tmp_path / "markers"), "ALEPH_EVENT_LOOP": request.param}
    instance = DevMachine(tmp_path / "vm", env=env)
    await instance.start()
    yield instance
    await instance.stop()
    assert instance.process.returncode is not None


def program(name: str) -> bytes:
    return (PROGRAMS / name).read_bytes()


def json_body(answer: dict) -> object:
    assert "traceback" not in answer, answer.get("traceback")
    return json.loads(answer["body"]["body"])


def markers(tmp_path: Path) -> list[str]:
    path = tmp_path / "markers"
    return path.read_text().split() if path.exists() else []


async def test_ready_signal_announces_version_2(init):
    assert init.ready["version"] == "2.0.0"


async def test_the_ready_signal_comes_before_the_imports_and_the_config_still_lands(tmp_path):
    """guest/ready.py: port 52 listens and the host has the signal before asyncio is
    imported; the configuration sent at once waits in the backlog and is answered."""
    log = tmp_path / "init.log"
    with open(log, "wb") as stderr:
        instance = DevMachine(tmp_path / "vm", stderr=stderr)
        await instance.start()
    try:
        await instance.configure(program_config(program("starlette_app.py"), "main:app"))
        assert (await instance.client.http("GET", "/"))["headers"]["status"] == 200
    finally:
        await instance.stop()
    lines = log.read_text().splitlines()
    assert any("Ready signal sent before the imports" in line for line in lines), lines
    assert not any(line.endswith("Ready signal sent") for line in lines), lines  # not twice


async def test_an_init_that_ends_with_its_configuration_unread_is_reported_as_ended(tmp_path):
    """The configuration waits in the init's socket (the ready signal comes before the
    imports); an init that ends then leaves it unread, which resets the host's side.
    configure() says the machine ended, how, and its last log lines: not a bare
    ConnectionResetError, as one flaky run under load showed."""
    log = tmp_path / "init.log"
    instance = DevMachine(tmp_path / "vm", log_path=log)
    await instance.start()
    try:
        assert await eventually(lambda: "Listening on" in log.read_text())
        os.kill(instance.process.pid, signal.SIGSTOP)
        configure = asyncio.ensure_future(instance.configure(program_config(b"app = None", "main:app")))
        # The host's connection is queued on the init's listener (its server side shows the path).
        assert await eventually(lambda: unread_connections(instance.uds_path) > 0)
        os.kill(instance.process.pid, signal.SIGKILL)
        with pytest.raises(MachineExited, match=r"the init exited \(status -9\) before answering") as error:
            await configure
        assert "Listening on" in str(error.value)  # its log's last lines
    finally:
        await instance.kill()


async def test_an_init_that_ended_before_its_configuration_is_reported_as_ended(tmp_path):
    """An init that ended right after its ready signal (its imports failed, say) listens
    no more: configure() says it ended, not ConnectionRefusedError."""
    instance = DevMachine(tmp_path / "vm")
    await instance.start()
    try:
        instance.process.kill()
        await instance.process.wait()
        with pytest.raises(MachineExited, match=r"the init exited \(status -9\) before answering"):
            await instance.configure(program_config(b"app = None", "main:app"))
    finally:
        await instance.kill()


def unread_connections(uds_path: Path) -> int:
    """Connections to the Unix socket `uds_path` on its listener's side, accepted or not."""
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table]
    return sum(1 for row in rows if row[-1] == str(uds_path) and row[3] != "00010000")  # not the listener


async def eventually(check, timeout: float = 15):
    """check() until it is truthy; its last value. A bound on a wait, not a speed test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := check()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return value


@pytest.mark.parametrize("name", ["starlette_app.py", "fastapi_app.py"])
async def test_lifespan_shutdown_runs_at_halt_and_not_before(init, tmp_path, name):
    await init.configure(program_config(program(name), "main:app", variables={"GREETING": "hi"}))
    path = "/" if name.startswith("starlette") else "/items"
    answer = await init.client.http("GET", path)
    assert answer["headers"]["status"] == 200
    await asyncio.sleep(0.2)
    assert markers(tmp_path) == ["startup"]
    halted = await init.client.halt()
    assert halted.stopped and halted.shut_down
    assert markers(tmp_path) == ["startup", "shutdown"]
    assert await asyncio.wait_for(init.process.wait(), 10) == 0


async def test_lifespan_state_and_variables_reach_the_app(init):
    config = program_config(program("starlette_app.py"), "main:app", variables={"GREETING": "hi"})
    await init.configure(config)
    assert json_body(await init.client.http("GET", "/")) == {"state": "lifespan", "env": "hi"}
    env = json_body(await init.client.http("GET", "/env"))
    assert env["ALEPH_API_HOST"] == "http://localhost"
    assert env["ALEPH_API_UNIX_SOCKET"].endswith("/tmp/socat-socket")
    assert env["ALEPH_REMOTE_CRYPTO_UNIX_SOCKET"] == env["ALEPH_API_UNIX_SOCKET"]
    assert env["ALEPH_INIT_VERSION"] == "2.0.0"
    # The VM's item hash in hex, as the guest API requires in a signed message's address.
    assert env["ALEPH_ADDRESS_TO_USE"] == config["vm_hash"]
    # The guest API socket exists before the program is imported.
    assert Path(env["ALEPH_API_UNIX_SOCKET"]).is_socket()


async def test_streaming_response_arrives_whole(init):
    await init.configure(program_config(program("starlette_app.py"), "main:app"))
    answer = await init.client.http("GET", "/stream")
    assert answer["body"]["body"] == b"".join(f"part{index}\n".encode() for index in range(10))


async def test_64_mib_body_without_length_prefix(init):
    await init.configure(program_config(program("starlette_app.py"), "main:app"))
    body = os.urandom(1 << 20) * 64
    answer = await init.client.http("POST", "/echo", "a=1", [(b"X-Test", b"yes")], body, timeout=120)
    import hashlib

    assert json_body(answer) == {
        "length": 64 << 20,
        "sha256": hashlib.sha256(body).hexdigest(),
        "query": "a=1",
        "header": "yes",
    }


async def test_16_calls_are_served_at_once(init):
    await init.configure(program_config(program("starlette_app.py"), "main:app"))
    # Each call waits at a barrier until 16 are in flight: served one by one, they would time out.
    answers = await asyncio.gather(*(init.client.http("GET", "/together", "count=16") for _ in range(16)))
    assert [answer["body"]["body"] for answer in answers] == [b"together"] * 16


async def test_app_exception_answers_a_traceback_and_later_calls_work(init):
    await init.configure(program_config(program("starlette_app.py"), "main:app"))
    answer = await init.client.http("GET", "/fail")
    assert "the program failed on purpose" in answer["traceback"]
    assert set(answer) == {"error", "traceback", "output"}
    assert (await init.client.http("GET", "/"))["headers"]["status"] == 200


PLAIN_WITH_HELPER = b"""
def greeting(name):
    return f"hello {name}"

async def app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [[b"content-type", b"text/plain"]]})
    await send({"type": "http.response.body", "body": greeting("plain").encode()})
"""


@pytest.mark.parametrize("entrypoint", ["main:app", "app"])
async def test_plain_code_is_a_real_module_with_helpers(init, entrypoint):
    await init.configure(program_config(PLAIN_WITH_HELPER, entrypoint, interface="asgi"))
    answer = await init.client.http("GET", "/")
    assert answer["body"]["body"] == b"hello plain"


def package(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    (source / "webapp").mkdir(parents=True)
    (source / "webapp" / "__init__.py").write_text("")
    (source / "webapp" / "helpers.py").write_text("def text():\n    return b'from a package'\n")
    (source / "webapp" / "server.py").write_text(
        "from webapp.helpers import text\n"
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': text()})\n"
    )
    return source


@pytest.mark.parametrize(
    "encoding, pack",
    [
        ("tar.gz", lambda d: tar_directory(d, "gz")),
        ("tar", lambda d: tar_directory(d, "xz")),
        ("zip", zip_directory),
    ],
)
async def test_packages_in_archives(init, tmp_path, encoding, pack):
    await init.configure(program_config(pack(package(tmp_path)), "webapp.server:app", encoding=encoding))
    assert (await init.client.http("GET", "/"))["body"]["body"] == b"from a package"


async def test_code_packed_by_the_tar_command_with_dot_entries(init, tmp_path):
    # `tar -C dir -czf code.tar.gz .`, the most common way to pack a program: `./`, `./main.py`.
    source = tmp_path / "src"
    source.mkdir()
    (source / "main.py").write_bytes(program("starlette_app.py"))
    archive = tmp_path / "code.tar.gz"
    await (await asyncio.create_subprocess_exec("tar", "-C", str(source), "-czf", str(archive), ".")).wait()
    await init.configure(program_config(archive.read_bytes(), "main:app", encoding="tar.gz"))
    answer = await init.client.http("GET", "/")
    assert answer["headers"]["status"] == 200, answer


def hostile_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "app = None")
        archive.writestr("../../escaped.py", "owned = True")
    return buffer.getvalue()


def hostile_tar(tmp_path: Path) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc"
        archive.addfile(info)
        info = tarfile.TarInfo("link/passwd")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"owned"))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar"])
async def test_hostile_archives_are_config_errors_and_the_init_stays_up(init, tmp_path, kind):
    code = hostile_zip() if kind == "zip" else hostile_tar(tmp_path)
    with pytest.raises(ConfigurationRejected) as rejected:
        await init.configure(program_config(code, "main:app", encoding="zip" if kind == "zip" else "tar.gz"))
    assert "outside" in rejected.value.error or "absolute" in rejected.value.error
    assert not list(tmp_path.rglob("escaped.py"))
    answer = await init.client.http("GET", "/")
    assert "failed to start" in answer["error"]
    assert (await init.client.halt()).shut_down


async def test_garbage_config_is_an_error_and_the_init_stays_up(init):
    reader, writer = await asyncio.open_unix_connection(init.uds_path)
    writer.write(b"CONNECT 52\n" + b"12\n" + b"\xc1garbage!!!!")
    await writer.drain()
    await reader.readline()
    answer = protocol.unpack(await reader.read(protocol.MAX_SINGLE_READ))
    writer.close()
    assert answer["success"] is False and "not valid msgpack" in answer["error"]
    assert (await init.client.halt()).shut_down


async def test_missing_field_names_it(init):
    config = program_config(b"app = 1", "main:app")
    del config["vm_hash"]
    with pytest.raises(ConfigurationRejected, match="vm_hash"):
        await init.configure(config)


@pytest.mark.parametrize(
    "code, entrypoint, message",
    [
        (b"app = 1", "main:missing", "has no 'missing'"),
        (b"app = 1", "main:app", "not callable"),
        (b"import not_a_module_anywhere\n", "main:app", "failed to import"),
        (b"raise SystemExit(3)\n", "main:app", "SystemExit"),
    ],
)
async def test_bad_entrypoints_are_clear_config_errors(init, code, entrypoint, message):
    with pytest.raises(ConfigurationRejected, match=message):
        await init.configure(program_config(code, entrypoint))


async def test_missing_module_in_an_archive(init, tmp_path):
    with pytest.raises(ConfigurationRejected, match="'nowhere' was not found"):
        await init.configure(program_config(zip_directory(package(tmp_path)), "nowhere:app", encoding="zip"))


async def test_malformed_and_oversized_calls_get_error_answers(tmp_path):
    async with DevMachine(tmp_path / "vm", env={"ALEPH_MAX_REQUEST_BYTES": str(1 << 20)}) as init:
        await init.configure(program_config(PLAIN_WITH_HELPER, "main:app"))
        for payload in (b"\x81\xa5scope\xc1", protocol.pack({"scope": "not a map"}), protocol.pack([1, 2])):
            reader, writer = await asyncio.open_unix_connection(init.uds_path)
            writer.write(b"CONNECT 52\n" + payload)
            await writer.drain()
            if payload.startswith(b"\x81\xa5scope\xc1"):
                writer.write_eof()
            await reader.readline()
            answer = protocol.unpack(await reader.read())
            writer.close()
            assert "error" in answer, payload
        oversized = await init.client.http("POST", "/", body=b"x" * (2 << 20))
        assert "larger than" in oversized["error"]
        assert (await init.client.http("GET", "/"))["body"]["body"] == b"hello plain"


async def test_event_reaches_the_program_and_its_answer_is_the_body(init):
    code = b"""
from aleph.sdk.vm.app import AlephApp
app = AlephApp(http_app=None)

@app.event(filters=[{"channel": "TEST"}])
async def on_event(event):
    return {"seen": event["body"]["item_hash"]}
"""
    await init.configure(program_config(code, "main:app"))
    assert await init.client.event({"item_hash": "c0ffee", "channel": "TEST"}) == {"seen": "c0ffee"}


async def test_debug_command_returns_combined_output(init):
    assert await init.client.command("echo out; echo err >&2") == b"out\nerr\n"


async def test_sigterm_halts_cleanly(init, tmp_path):
    await init.configure(program_config(program("starlette_app.py"), "main:app"))
    init.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(init.process.wait(), 10) == 0
    assert markers(tmp_path) == ["startup", "shutdown"]


async def test_second_config_is_refused(init):
    await init.configure(program_config(PLAIN_WITH_HELPER, "main:app"))
    with pytest.raises(ConfigurationRejected, match="already configured"):
        await init.configure(program_config(PLAIN_WITH_HELPER, "main:app"))
    assert (await init.client.http("GET", "/"))["body"]["body"] == b"hello plain"


async def test_output_data_is_the_zip_of_data(init):
    input_data = io.BytesIO()
    with zipfile.ZipFile(input_data, "w") as archive:
        archive.writestr("seed.txt", "seed")
    code = b"""
import os
async def app(scope, receive, send):
    await receive()
    root = os.environ["ALEPH_API_UNIX_SOCKET"].rsplit("/tmp/", 1)[0]
    with open(root + "/data/out.txt", "w") as out:
        out.write("written")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
    await init.configure(program_config(code, "main:app", input_data=input_data.getvalue()))
    answer = await init.client.http("GET", "/")
    with zipfile.ZipFile(io.BytesIO(answer["output_data"])) as archive:
        assert sorted(archive.namelist()) == ["out.txt", "seed.txt"]
        assert archive.read("out.txt") == b"written"


async def test_an_ordinary_process_refuses_vsock_without_being_asked(tmp_path):
    import sys

    from aleph_runtime.host.machines.dev import INIT1

    env = {key: value for key, value in os.environ.items() if key != "ALEPH_VSOCK_UDS"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(INIT1), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"--uds" in stderr
