"""`aleph-runtime run --mode dev` as a subprocess, exercised with plain HTTP on loopback:
the bundled FastAPI example (no PATH), then other kinds of PATH, failures and Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from aleph_runtime.testing import descendants
from tests.cli.conftest import EXAMPLES, alive
from tests.cli.example_checks import check_default_example, check_legacy_example, sockets_under, stop_cleanly
from tests.helpers import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


async def test_default_example_in_dev_mode(cli_factory, subtests, fake_api):
    await check_default_example(cli_factory, subtests, "dev", fake_api, free_port())


async def test_legacy_aleph_client_example_in_dev_mode(cli_factory, fake_api):
    await check_legacy_example(cli_factory, "dev", fake_api)


async def test_sigterm_also_halts(cli_factory):
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "hello" / "main.py"))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(f"{url}json") as response:
        assert (await response.json())["path"] == "/json"
    children = descendants(cli.process.pid)
    cli.process.send_signal(signal.SIGTERM)
    assert await cli.wait() == 0, cli.output()
    assert [pid for pid in children if alive(pid)] == []


async def test_executable_directory(cli_factory):
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "executable"))
    url = await cli.wait_url()
    assert "executable run.sh" in cli.output()
    async with aiohttp.ClientSession() as http, http.get(f"{url}some/where") as response:
        assert response.status == 200, await response.text()
        assert await response.text() == "Hello from an executable program! path=/some/where\n"
    await stop_cleanly(cli)


async def test_import_failure_prints_the_traceback_and_exits_non_zero(cli_factory, short_dir):
    program = short_dir / "broken"
    program.mkdir()
    (program / "main.py").write_text(
        "import json\n\ndef helper():\n    raise ValueError('no good')\n\nhelper()\n"
    )
    cli = await cli_factory("--mode", "dev", "--port", "0", str(program))
    status = await cli.wait()
    output = cli.output()
    assert status == 3, output
    assert "the program failed to start" in output
    assert "Traceback" in output and "ValueError: no good" in output
    assert sockets_under(cli.state_dir) == []
    assert list((cli.state_dir / "run").iterdir()) == []


async def test_usage_errors(cli_factory, short_dir):
    cli = await cli_factory("--mode", "dev", str(short_dir / "nowhere"))
    assert await cli.wait() == 2
    assert "does not exist" in cli.output()
    empty = short_dir / "empty"
    empty.mkdir()
    (empty / "README").write_text("nothing to run\n")
    cli = await cli_factory("--mode", "dev", str(empty))
    assert await cli.wait() == 2
    assert "give --entrypoint" in cli.output()
    cli = await cli_factory("--mode", "dev", "--volume", "relative=./x", str(EXAMPLES / "hello"))
    assert await cli.wait() == 2
    assert "absolute path" in cli.output()


async def test_port_in_use(cli_factory):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = await cli_factory("--mode", "dev", "--port", str(port), str(EXAMPLES / "hello"))
        assert await cli.wait() == 2
    assert f"cannot listen on 127.0.0.1:{port}" in cli.output()


LIBRARY_USER = b"""
import os
from pathlib import Path
import shiny  # from the /opt/packages volume

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    data = Path(os.environ["DATA_DIR"]) / "note.txt"
    body = f"{shiny.VALUE} {data.read_text().strip() if data.exists() else 'none'}".encode()
    data.write_text(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools are not installed")
async def test_squashfs_code_and_volumes(cli_factory, short_dir):
    """Squashfs code, an immutable squashfs volume at /opt/packages, a persistent one whose
    mount point reaches the program through --env (rewritten in dev mode)."""
    code, lib = short_dir / "code", short_dir / "lib"
    code.mkdir()
    lib.mkdir()
    (code / "main.py").write_bytes(LIBRARY_USER)
    (lib / "shiny.py").write_text("VALUE = 'shiny'\n")
    image = short_dir / "code.squashfs"
    subprocess.run(["mksquashfs", str(code), str(image), "-quiet", "-noappend"], check=True)
    lib_image = short_dir / "lib.squashfs"
    subprocess.run(["mksquashfs", str(lib), str(lib_image), "-quiet", "-noappend"], check=True)
    args = [
        "--mode",
        "dev",
        "--port",
        "0",
        "--volume",
        f"/opt/packages={lib_image}",
        "--volume",
        "mount=/var/lib/notes,persistent=notes",
        "--env",
        "DATA_DIR=/var/lib/notes",
        str(image),
    ]
    cli = await cli_factory(*args)
    url = await cli.wait_url()
    assert "squashfs" in cli.output()
    async with aiohttp.ClientSession() as http, http.get(f"{url}first") as response:
        assert await response.text() == "shiny none"
    await stop_cleanly(cli)
    cli = await cli_factory(*args)
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(f"{url}second") as response:
        assert await response.text() == "shiny /first"
    await stop_cleanly(cli)
    assert (cli.state_dir / "volumes" / "notes" / "note.txt").read_text() == "/second"


PROXY_USER = b"""
import os
import aiohttp

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    connector = aiohttp.UnixConnector(path=os.environ["ALEPH_API_UNIX_SOCKET"])
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(os.environ["ALEPH_API_HOST"] + "/api/v0/info/public.json") as response:
            status, body = response.status, await response.read()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


async def test_api_proxy_external_redis_and_verbose(cli_factory, fake_api, short_dir):
    """--api-server reaches the program through the guest API; --redis-url replaces the
    private Redis; --verbose streams the init's log."""
    from aleph_runtime.host.services.redis_server import RedisServer

    program = short_dir / "proxy_user.py"
    program.write_bytes(PROXY_USER)
    async with RedisServer(short_dir / "external-redis", persistent=False) as external:
        cli = await cli_factory("--mode", "dev", "--port", "0", "--api-server", fake_api.url,
                                "--redis-url", external.url, "--verbose", str(program))  # fmt: skip
        url = await cli.wait_url()
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["node_version"] == "fake"
        assert fake_api.requests == [("GET", "/api/v0/info/public.json")]
        assert not (cli.state_dir / "redis").exists()  # no private Redis was started
        await stop_cleanly(cli)
    output = cli.output()
    assert "Program started" in output  # the init's own log line, streamed


async def test_a_dying_init_is_replaced_at_the_next_request(cli_factory):
    """The machine dying on its own (here the init, killed) is reported on one line with its
    status; the next request starts a new init, and Ctrl-C still cleans everything up."""
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "hello" / "main.py"))
    url = await cli.wait_url()
    children = descendants(cli.process.pid)
    # The init itself (python3 ... init1.py), not the container's setup that names it in its arguments.
    init = [
        pid
        for pid in children
        if (argv := Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        and b"python" in argv[0]
        and any(arg.endswith(b"init1.py") for arg in argv)
    ]
    assert len(init) == 1
    os.kill(init[0], signal.SIGKILL)
    for _ in range(100):
        if "crash:" in cli.output():
            break
        await asyncio.sleep(0.1)
    assert "crash: the init exited (status -9)" in cli.output()
    async with aiohttp.ClientSession() as http, http.get(f"{url}json") as response:
        assert response.status == 200, await response.text()
    assert "restarted in" in cli.output()
    assert cli.process.returncode is None
    await stop_cleanly(cli)
    assert [pid for pid in children if alive(pid)] == []


async def test_interrupted_while_starting(cli_factory):
    """Ctrl-C before the program is up: the start is abandoned, everything is stopped."""
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "fastapi_app"))
    for _ in range(600):
        if "starting the init" in cli.output():
            break
        await asyncio.sleep(0.05)
    children = descendants(cli.process.pid)
    assert await cli.interrupt() == 0, cli.output()
    assert [pid for pid in children | descendants(cli.process.pid) if alive(pid)] == []
    assert sockets_under(cli.state_dir) == []
    assert list((cli.state_dir / "run").iterdir()) == []


async def test_ctrl_c_in_a_terminal(cli_factory):
    """A terminal's Ctrl-C reaches the whole foreground process group, not only the
    command: the init (in a session of its own) is still halted through the protocol,
    its lifespan shutdown runs, and nothing is left."""
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "fastapi_app"),
                            "--volume", "mount=/var/lib/example,persistent=tty",
                            "--env", "EXAMPLE_VOLUME=/var/lib/example", new_session=True)  # fmt: skip
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(f"{url}counter") as response:
        assert await response.json() == {"counter": 1}
    children = descendants(cli.process.pid)
    os.killpg(cli.process.pid, signal.SIGINT)
    assert await cli.wait() == 0, cli.output()
    assert [pid for pid in children if alive(pid)] == []
    assert sockets_under(cli.state_dir) == []
    log = (cli.state_dir / "volumes" / "tty" / "lifespan.log").read_text().split()
    assert log[0::2] == ["startup", "shutdown"]


HUNGRY = b"""
import importlib.util
import sys

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    body = f"{sys.executable} pytest={importlib.util.find_spec('pytest') is not None}".encode()
    if scope["path"] == "/eat":
        body = bytes(bytearray(400 << 20))[:10]  # 400 MiB, touched
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


async def test_memory_limit_and_the_image_python(cli_factory, short_dir):
    """The program runs on the image's Python, not this machine's virtualenv; past its
    --memory it is killed, as a VM's init is, and the terminal says so in one line."""
    program = short_dir / "hungry.py"
    program.write_bytes(HUNGRY)
    cli = await cli_factory("--mode", "dev", "--port", "0", "--memory", "128", str(program))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            # The image's Python, without this machine's packages (this test's pytest, say).
            assert await response.text() == "/usr/bin/python3 pytest=False"
        async with http.get(f"{url}eat") as response:
            assert response.status == 502
    for _ in range(100):
        if "crash:" in cli.output():
            break
        await asyncio.sleep(0.1)
    crashes = [line for line in cli.output().splitlines() if "crash:" in line]
    assert len(crashes) == 1, cli.output()
    assert "out of memory: the kernel's OOM killer ended it at its 128 MiB limit (--memory)" in crashes[0]
    await stop_cleanly(cli)


async def test_an_image_that_cannot_be_unpacked_stops_dev_mode_in_one_sentence(cli_factory, short_dir):
    broken = short_dir / "rootfs.squashfs"
    broken.write_bytes(b"hsqs" + b"\0" * 4096)  # a squashfs magic, and nothing behind it
    cli = await cli_factory("--mode", "dev", "--port", "0", str(EXAMPLES / "hello" / "main.py"),
                            env={"ALEPH_ROOTFS": str(broken), "XDG_CACHE_HOME": str(short_dir / "cache")})  # fmt: skip
    assert await cli.wait() != 0
    output = cli.output()
    assert f"the runtime image {broken} could not be unpacked" in output, output
    assert "rebuild it with rootfs-build/build-rootfs.sh --force" in output
    assert "Traceback" not in output
    with open("/proc/self/mountinfo") as mountinfo:
        assert str(short_dir) not in mountinfo.read()


async def test_a_volume_that_cannot_be_unpacked_is_one_sentence(cli_factory, short_dir):
    broken = short_dir / "data.squashfs"
    broken.write_bytes(b"hsqs" + b"\0" * 4096)  # a squashfs magic, and nothing behind it
    cli = await cli_factory("--mode", "dev", "--port", "0", "--volume", f"/data={broken}",
                            str(EXAMPLES / "hello" / "main.py"))  # fmt: skip
    assert await cli.wait() == 2
    output = cli.output()
    assert f"unsquashfs {broken} failed: " in output, output
    assert "Traceback" not in output
    assert not any(path.name.endswith(".partial") for path in cli.state_dir.rglob("*")), output


PEEKING = b"""
import json, os, socket

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    key = os.environ["STATE_KEY"]
    seen = {
        "key": os.path.exists(key),
        "host_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:3],
        "hostname": socket.gethostname(),
        "cmdline1": open("/proc/1/cmdline").read().split("\\0")[1:3],
    }
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


async def test_the_program_sees_the_container_not_this_machine(cli_factory, short_dir):
    program = short_dir / "peeking.py"
    program.write_bytes(PEEKING)
    state = short_dir / "state"
    state.mkdir()
    (state / "signing.key").write_bytes(os.urandom(32))  # the node's key, as a run leaves it
    cli = await cli_factory("--mode", "dev", "--port", "0", "--env", f"STATE_KEY={state / 'signing.key'}",
                            str(program))  # fmt: skip
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        seen = await response.json(content_type=None)
    assert seen["key"] is False
    assert seen["host_pids"][0] == 1 and max(seen["host_pids"]) < 100  # its own PID namespace
    assert seen["cmdline1"] == ["-OO", "/opt/aleph/init/init1.py"]  # the image's init, PID 1
    assert seen["hostname"] != socket.gethostname()
    await stop_cleanly(cli)
