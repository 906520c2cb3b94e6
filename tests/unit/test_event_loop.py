"""The guest's loop (uvloop, with the standard library's subprocesses), on real children."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from aleph_runtime.guest import event_loop, linux

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT

# The child's own descriptors, as it sees them after exec.
LIST_FDS = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"


def run(coroutine_function):
    loop = event_loop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine_function(), 60))
    finally:
        loop.close()


def test_the_loop_is_uvloop():
    import uvloop

    loop = event_loop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize("stdin", [None, DEVNULL, PIPE])
def test_a_child_inherits_its_stdio_and_nothing_else(stdin):
    async def child_fds():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LIST_FDS, stdin=stdin, stdout=PIPE, stderr=STDOUT
        )
        output, _ = await process.communicate(b"" if stdin == PIPE else None)
        return output, process.returncode

    output, returncode = run(child_fds)
    assert returncode == 0
    # listdir's own descriptor on the directory is the one above 2.
    assert output.startswith(b"[0, 1, 2, 3]"), output


def test_pass_fds_are_passed():
    async def child_fds(kept: int):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LIST_FDS, stdout=PIPE, pass_fds=(kept,)
        )
        output, _ = await process.communicate()
        return output

    read_end, write_end = os.pipe()
    try:
        output = run(lambda: child_fds(write_end))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert str(write_end).encode() in output.strip(b"[]\n").split(b", ")


def test_a_daemon_left_behind_does_not_hold_the_programs_pipe():
    """The case that hung dockerd in the full image: a script starts a server that
    outlives it, with its own stdio redirected; the program reads the script's output."""

    async def start_daemon():
        process = await asyncio.create_subprocess_shell(
            "sleep 300 </dev/null >/dev/null 2>&1 & echo $!; echo started", stdout=PIPE, stderr=PIPE
        )
        output, errors = await process.communicate()
        return output.split(), errors, process.returncode

    (daemon, started), errors, returncode = run(start_daemon)
    try:
        assert (started, errors, returncode) == (b"started", b"", 0)
    finally:
        os.kill(int(daemon), signal.SIGKILL)


def test_exit_codes_and_signals_reach_the_program():
    async def codes():
        exited = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
        killed = await asyncio.create_subprocess_exec("sleep", "300")
        assert killed.pid in linux.MANAGED_CHILDREN  # PID 1's reaper leaves it to the program
        killed.send_signal(signal.SIGTERM)
        return await exited.wait(), await killed.wait(), killed.pid

    exited, killed, pid = run(codes)
    assert (exited, killed) == (7, -signal.SIGTERM)
    assert pid not in linux.MANAGED_CHILDREN


def test_the_standard_librarys_arguments_hold():
    async def in_a_directory():
        process = await asyncio.create_subprocess_shell(
            "pwd; echo $ALEPH_TEST_VALUE",
            stdout=PIPE,
            cwd="/tmp",
            env={"ALEPH_TEST_VALUE": "seen", "PATH": "/usr/bin:/bin"},
        )
        output, _ = await process.communicate()
        return output

    assert run(in_a_directory) == b"/tmp\nseen\n"

    async def text_mode():
        await asyncio.get_running_loop().subprocess_exec(asyncio.SubprocessProtocol, "true", text=True)

    with pytest.raises(ValueError, match="universal_newlines must be False"):
        run(text_mode)


def test_a_program_that_cannot_start_raises_as_with_the_standard_loop():
    async def missing():
        await asyncio.create_subprocess_exec("/nonexistent/program")

    with pytest.raises(FileNotFoundError):
        run(missing)
