"""The pytest plugin (aleph_runtime.testing): registered, cheap to import, its fixture
starting programs as `aleph-runtime run` does (dev mode), restarting them (by hand and
with --watch), stopping them cleanly, and saying in one sentence why it cannot start one.
The examples' own tests (examples/*/test_*.py) use it too: the suite collects them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from aleph_runtime.testing import AlephProgram, AlephProgramError, descendants
from tests.cli.conftest import EXAMPLES, alive

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def test_registered_as_a_pytest_plugin():
    assert "aleph_runtime.testing" in [e.value for e in entry_points(group="pytest11")]


def test_importing_it_loads_no_node_code():
    # Every pytest of the virtualenv loads it: the standard library (and pytest) only.
    code = "import sys, aleph_runtime.testing; print(sorted(m for m in sys.modules if m.startswith(('aleph_runtime.', 'httpx', 'aiohttp', 'asyncio'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['aleph_runtime.testing']"


def test_a_path_that_is_not_a_program(tmp_path):
    (tmp_path / "notes.txt").write_text("no code here")
    with pytest.raises(AlephProgramError) as error:
        AlephProgram(tmp_path, tmp_path / "state").start()
    assert str(error.value).startswith(f"aleph_program: {tmp_path} is not a program: ")
    assert "\n" not in str(error.value)
    with pytest.raises(AlephProgramError, match=r"does not exist$"):
        AlephProgram(tmp_path / "missing", tmp_path / "state").start()


def test_a_port_in_use(short_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AlephProgramError) as error:
            AlephProgram(EXAMPLES / "hello", short_dir / "state", port=port).start()
    message = str(error.value)
    assert str(port) in message and "\n" not in message, message


def test_restart_keeps_the_url_and_stop_leaves_nothing(short_dir):
    program = AlephProgram(EXAMPLES / "hello", short_dir / "state").start()
    try:
        url = program.url
        assert program.client.get("/json").json()["path"] == "/json"
        first = descendants(program.process.pid)
        program.restart()
        assert program.url == url
        assert program.client.get("/again").text == "Hello from aleph-runtime! You asked for /again\n"
        assert [pid for pid in first if alive(pid)] == []
        children = descendants(program.process.pid)
        assert children
    finally:
        status = program.stop()
    assert status == 0, program.output
    assert [pid for pid in children if alive(pid)] == []
    assert "stopped" in program.output


def test_with_watch_an_edit_restarts_it(short_dir):
    source = short_dir / "app"
    shutil.copytree(EXAMPLES / "hello", source)
    with AlephProgram(source, short_dir / "state", watch=True) as program:
        assert program.client.get("/x").text.startswith("Hello from aleph-runtime!")
        mark = program.mark()
        main = source / "main.py"
        main.write_text(main.read_text().replace("Hello from aleph-runtime!", "Edited!"))
        assert program.restarted(after=mark) > 0
        assert program.client.get("/x").text == "Edited! You asked for /x\n"


def test_the_fixture_from_a_marker(pytester):
    """A test module of an author's: the marker's options reach the program, started once
    for the module; an aleph message reaches its event handler."""
    program = pytester.path / "app"
    program.mkdir()
    (program / "main.py").write_text(
        "import os, time\n"
        "from aleph.sdk.vm.app import AlephApp\n"
        "from fastapi import FastAPI\n"
        "http_app = FastAPI()\n"
        "app = AlephApp(http_app=http_app)\n"
        "STARTED = time.time()\n"
        "@http_app.get('/')\n"
        "async def index():\n"
        "    return {'colour': os.environ.get('COLOUR'), 'started': STARTED}\n"
        "@app.event(filters=[{'type': 'POST'}])\n"
        "async def on_event(event):\n"
        "    return {'got': event['body']['content']['hello']}\n"
    )
    pytester.makepyfile(
        test_app="""
        import pytest

        pytestmark = pytest.mark.aleph_program("app", env={"COLOUR": "blue"})
        seen = []

        def test_one(aleph_program):
            seen.append(aleph_program.client.get("/").json())
            assert seen[0]["colour"] == "blue"

        def test_two(aleph_program):
            assert aleph_program.client.get("/").json() == seen[0]  # the same start
            assert aleph_program.event({"hello": "world"}) == {"got": "world"}
            assert "Program running at" in aleph_program.output
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_fixture_given_no_program(pytester):
    (pytester.path / "docs").mkdir()
    (pytester.path / "docs" / "notes.txt").write_text("no code here")
    pytester.makepyfile(
        test_empty="import pytest\npytestmark = pytest.mark.aleph_program('docs')\n"
        "def test_it(aleph_program):\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*aleph_program: {pytester.path / 'docs'} is not a program: *"])
