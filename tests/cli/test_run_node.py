"""`aleph-runtime run --mode dev` behaves like a node when the program goes wrong, with
aleph-vm's diagnostic behaviours (tests/programs/diagnostic_app.py): a `/crash` that
calls sys.exit(1) answers 502 and the next request gets a new program with the same
volume; a program that can no longer start stops the command (exit 3) after 3 tries;
in private namespaces the program finds its volume at its absolute mount point and the
guest API at /tmp/socat-socket, and no file of the machine is touched."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from aleph_runtime.testing import descendants

from .conftest import REPOSITORY, alive
from .example_checks import sockets_under, stop_cleanly

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

DIAGNOSTIC = REPOSITORY / "tests" / "programs" / "diagnostic_app.py"
VOLUME = "mount=/var/lib/example,persistent=example"
needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="private namespaces need root and unshare"
)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def wait_for_text(cli, text: str, timeout: float = 30) -> None:
    for _ in range(int(timeout * 10)):
        if text in cli.output():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared:\n{cli.output()}")


@needs_namespaces
async def test_crash_answers_502_and_the_next_request_gets_a_new_program(cli_factory):
    cli = await cli_factory("--mode", "dev", "--port", "0", "--volume", VOLUME, str(DIAGNOSTIC))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http:
        assert await get(http, f"{url}state/increment") == (200, '{"counter": 0}')
        status, pid = await get(http, f"{url}pid")
        assert status == 200
        assert await get(http, f"{url}crash") == (502, "VM did not respond and was shut down\n")
        await wait_for_text(cli, "crash: the init exited")
        # A fresh program, the same persistent volume: the counter goes on.
        assert await get(http, f"{url}state/increment") == (200, '{"counter": 1}')
        # The init is PID 1 of the container, as in a VM: the same PID, a new program.
        status, new_pid = await get(http, f"{url}pid")
        assert status == 200 and new_pid == pid == "1"
        # And again: a node restarts a program as often as it crashes.
        assert (await get(http, f"{url}crash"))[0] == 502
        assert await get(http, f"{url}state/increment") == (200, '{"counter": 2}')
    output = cli.output()
    crashes = [line for line in output.splitlines() if "crash:" in line]
    assert len(crashes) == 2, output
    assert "SystemExit: 1" in crashes[0]  # the reason, from the init's last log line
    assert output.count("restarted in") == 2
    await stop_cleanly(cli)
    assert json.loads((cli.state_dir / "volumes" / "example" / "storage.json").read_text()) == {"counter": 2}


@needs_namespaces
async def test_a_program_that_cannot_start_again_stops_the_command_after_3_tries(cli_factory):
    cli = await cli_factory("--mode", "dev", "--port", "0", "--volume", VOLUME, str(DIAGNOSTIC))
    url = await cli.wait_url()
    children = descendants(cli.process.pid)
    async with aiohttp.ClientSession() as http:
        assert (await get(http, f"{url}break"))[0] == 502
        # The restart this request asks for fails at every try: it is answered, not left hanging.
        status, text = await get(http, f"{url}state/increment")
        assert status == 502 and "failed to start" in text, text
    assert await cli.wait() == 3, cli.output()
    output = cli.output()
    assert "crash: the init exited (status 3)" in output
    tries = [line for line in output.splitlines() if line.startswith("aleph-runtime: start ")]
    assert [line.split(" failed: ")[0] for line in tries] == [
        f"aleph-runtime: start {n}/3" for n in (1, 2, 3)
    ]
    assert all(line.endswith("RuntimeError: the volume says this program is broken") for line in tries), tries
    assert "giving up" in output
    assert output.count("Traceback") == 1  # the start error's traceback, once
    assert [pid for pid in children | descendants(cli.process.pid) if alive(pid)] == []
    assert sockets_under(cli.state_dir) == []
    assert list((cli.state_dir / "run").iterdir()) == []


@needs_namespaces
async def test_dev_mode_has_the_vm_paths_and_touches_no_host_file(cli_factory, short_dir):
    """The volume at its absolute mount point, /tmp/socat-socket, an immutable volume
    read-only at /opt/packages; nothing created on the machine outside the state directory."""
    lib = short_dir / "lib"
    lib.mkdir()
    (lib / "shiny.py").write_text("VALUE = 'shiny'\n")
    assert not Path("/var/lib/example").exists() and not Path("/tmp/socat-socket").exists()
    opt_before = set(os.listdir("/opt"))  # /tmp is shared with whatever else runs here: named paths only
    cli = await cli_factory("--mode", "dev", "--port", "0", "--volume", VOLUME,
                            "--volume", f"/opt/packages={lib}", str(DIAGNOSTIC))  # fmt: skip
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http:
        assert await get(http, f"{url}state/increment") == (200, '{"counter": 0}')
        status, text = await get(http, f"{url}socat")
        assert status == 200, text
        assert json.loads(text)["address"].startswith("0x")
    output = cli.output()
    assert "volumes are not mounted" not in output
    assert "without private namespaces" not in output
    assert not Path("/var/lib/example").exists() and not Path("/tmp/socat-socket").exists()
    assert set(os.listdir("/opt")) == opt_before and not Path("/opt/diagnostic_app.py").exists()
    # The program's view: read-only packages, its module in /opt (as a VM has it).
    init = [
        pid
        for pid in descendants(cli.process.pid)
        if b"init1.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    mounts = Path(f"/proc/{init[0]}/mounts").read_text().splitlines()
    packages = [line for line in mounts if line.split()[1] == "/opt/packages"]
    assert packages and "ro" in packages[0].split()[3].split(","), mounts
    assert (Path(f"/proc/{init[0]}/root") / "opt" / "diagnostic_app.py").exists()
    await stop_cleanly(cli)
    assert json.loads((cli.state_dir / "volumes" / "example" / "storage.json").read_text()) == {"counter": 0}


async def test_without_unshare_dev_mode_says_so_and_exits(cli_factory, short_dir):
    """No `unshare` on PATH: dev mode cannot make its container; one sentence names the
    tool and the fix, the command exits 1, and nothing is left running or mounted."""
    bin_dir = short_dir / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(shutil.which("redis-server"))
    cli = await cli_factory("--mode", "dev", "--port", "0", str(DIAGNOSTIC), env={"PATH": str(bin_dir)})
    assert await cli.wait() == 1, cli.output()
    assert "`unshare` is not installed: dev mode needs util-linux and bash" in cli.output()
    assert sockets_under(cli.state_dir) == []
    assert list((cli.state_dir / "run").iterdir()) == []


@needs_namespaces
async def test_watch_restarts_the_program_after_an_edit(cli_factory, short_dir):
    program = short_dir / "app"
    program.mkdir()
    main = program / "main.py"
    source = (
        "VERSION = {version!r}\n\n"
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({{'type': 'http.response.start', 'status': 200, 'headers': []}})\n"
        "    await send({{'type': 'http.response.body', 'body': VERSION.encode()}})\n"
    )
    main.write_text(source.format(version="first"))
    cli = await cli_factory("--mode", "dev", "--port", "0", "--watch", str(program))
    url = await cli.wait_url()
    await wait_for_text(cli, "watching")
    async with aiohttp.ClientSession() as http:
        assert await get(http, url) == (200, "first")
        # What editors, Python and git leave around is not an edit.
        (program / "__pycache__").mkdir()
        (program / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"cache")
        (program / ".main.py.swp").write_bytes(b"swap")
        (program / ".git").mkdir()
        (program / ".git" / "index").write_bytes(b"index")
        await asyncio.sleep(2)  # several polls and debounce periods
        assert "starting a new init" not in cli.output()
        main.write_text(source.format(version="second"))
        for _ in range(300):
            status, text = await get(http, url)
            if text == "second":
                break
            await asyncio.sleep(0.1)
        assert (status, text) == (200, "second"), cli.output()
    output = cli.output()
    assert "starting a new init (main.py changed)" in output
    assert "restarted in" in output
    await stop_cleanly(cli)
