"""What `aleph-runtime run` prints, as an author reads it: the program's own output and
the init's warnings, one access-log line per request (none with --quiet), a program's
traceback once, the startup report; the init's progress lines only with --verbose. Also
--env-file and `aleph-runtime event`, which go with them in the everyday loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys

import aiohttp
import pytest

from .conftest import EXAMPLES, REPOSITORY
from .example_checks import stop_cleanly

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

TALKER = b"""
import sys

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/raise":
        raise ValueError("raised on purpose")
    print("program says hello on stdout", scope["path"], flush=True)
    print("program complains on stderr", file=sys.stderr, flush=True)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * 1500})
"""
ACCESS_LINE = re.compile(r"^GET /hello\?a=1 200 \d+\.\d ms 1\.5 kB(  \(first call\))?$", re.MULTILINE)


async def wait_for_text(cli, text: str, timeout: float = 10) -> None:
    for _ in range(int(timeout * 10)):
        if text in cli.output():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared:\n{cli.output()}")


async def test_default_output(cli_factory, short_dir):
    program = short_dir / "talker.py"
    program.write_bytes(TALKER)
    cli = await cli_factory("--mode", "dev", "--port", "0", str(program))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}hello?a=1") as response:
            assert response.status == 200
        async with http.get(f"{url}raise") as response:
            assert response.status == 500
    await wait_for_text(cli, "GET /raise 500")
    await stop_cleanly(cli)
    output = cli.output()
    assert ACCESS_LINE.search(output), output
    assert ACCESS_LINE.search(output).group(1) == "  (first call)"  # the startup report's last part
    assert output.count("(first call)") == 1
    assert "program says hello on stdout /hello" in output
    assert "program complains on stderr" in output
    assert output.count("ValueError: raised on purpose") == 1, output  # the traceback, once
    assert re.search(r"^aleph-runtime: started in [\d.]+ s: container [\d.]+ s, init ready [\d.]+ s, config answered [\d.]+ s$",
                     output, re.MULTILINE), output  # fmt: skip
    assert " init1 INFO" not in output and "Ready signal sent" not in output  # the init's progress: --verbose


async def test_quiet_and_verbose(cli_factory, short_dir):
    program = short_dir / "talker.py"
    program.write_bytes(TALKER)
    cli = await cli_factory("--mode", "dev", "--port", "0", "--quiet", str(program))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(f"{url}hello?a=1") as response:
        assert response.status == 200
    await wait_for_text(cli, "program says hello")
    await stop_cleanly(cli)
    assert not ACCESS_LINE.search(cli.output())

    cli = await cli_factory("--mode", "dev", "--port", "0", "--verbose", str(program), state="verbose")
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(f"{url}hello?a=1") as response:
        assert response.status == 200
    await wait_for_text(cli, "program says hello")
    await stop_cleanly(cli)
    assert ACCESS_LINE.search(cli.output())
    assert " init1 INFO: Ready signal sent" in cli.output()


async def test_env_file_under_env(cli_factory, short_dir):
    env_file = short_dir / "program.env"
    env_file.write_text(
        "# settings\nexport GREETING='hello # not a comment'\nNAME=\"two\\nlines\"\nPLAIN = bare value # comment\n"
        "OVERRIDDEN=from-file\n"
    )
    program = REPOSITORY / "tests" / "programs" / "diagnostic_app.py"
    cli = await cli_factory("--mode", "dev", "--port", "0", "--env-file", str(env_file),
                            "--env", "OVERRIDDEN=from-env", str(program))  # fmt: skip
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http:
        found = {}
        for name in ("GREETING", "NAME", "PLAIN", "OVERRIDDEN"):
            async with http.get(f"{url}env/{name}") as response:
                found[name] = await response.json()
    assert found == {"GREETING": "hello # not a comment", "NAME": "two\nlines", "PLAIN": "bare value",
                     "OVERRIDDEN": "from-env"}  # fmt: skip
    await stop_cleanly(cli)

    env_file.write_text("NOT A VARIABLE\n")
    cli = await cli_factory("--mode", "dev", "--port", "0", "--env-file", str(env_file), str(program))
    assert await cli.wait() == 2
    assert f"--env-file {env_file}, line 1: expected KEY=VALUE" in cli.output()


async def run_event(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aleph_runtime.host.node.cli", "event", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    return process.returncode, out.decode(), err.decode()


async def test_event_subcommand_round_trip(cli_factory, short_dir, fake_api):
    cli = await cli_factory("--mode", "dev", "--port", "0", "--api-server", fake_api.url,
                            "--volume", "mount=/var/lib/example,persistent=example", str(EXAMPLES / "fastapi_app"))  # fmt: skip
    url = await cli.wait_url()
    # A message built from options: the example's handler answers for POST messages.
    status, out, err = await run_event("--url", url, "--type", "POST", "--content", '{"hello": "event"}')
    assert status == 0, err
    answer = json.loads(out)
    assert answer["handled"] is True and answer["type"] == "POST" and len(answer["item_hash"]) == 64
    # A message from a file, and from stdin.
    message = {"item_hash": "ab" * 32, "type": "POST", "content": {"from": "file"}}
    path = short_dir / "message.json"
    path.write_text(json.dumps(message))
    status, out, err = await run_event("--url", url, str(path))
    assert status == 0 and json.loads(out)["item_hash"] == "ab" * 32, err
    status, out, err = await run_event(
        "--url", url, "-", stdin=json.dumps({**message, "item_hash": "cd" * 32}).encode()
    )
    assert status == 0 and json.loads(out)["item_hash"] == "cd" * 32, err
    await wait_for_text(cli, "POST /control/event 200")
    await stop_cleanly(cli)
    # Errors: not JSON (usage, 2); nobody listening (1).
    path.write_text("{not json")
    status, _, err = await run_event("--url", url, str(path))
    assert status == 2 and "is not JSON" in err
    status, _, err = await run_event("--url", url)
    assert status == 1 and "cannot reach" in err
