"""The first run's progress: the kernel build's moving line (rootfs-build/make-progress.sh,
fed a real slice of the node kernel's make output, kernel_make_output.txt: the first
150 s of `make -j2 vmlinux` on node-kernel.config, 600 objects), and the build scripts'
stderr relayed by vmm/image.py as it comes, the moving line only when it ends on a terminal."""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPOSITORY = Path(__file__).resolve().parents[2]
FILTER = REPOSITORY / "rootfs-build" / "make-progress.sh"
RECORDED = Path(__file__).with_name("kernel_make_output.txt")


def progress(text: bytes, *arguments: str, pause_after: int | None = None, pause: float = 0):
    """make-progress.sh TTY TOTAL LABEL [SETTLE] over `text` (a pause after the first
    `pause_after` lines): its stdout and stderr."""
    command = [str(FILTER), *arguments]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = text.splitlines(keepends=True)
    split = len(lines) if pause_after is None else pause_after
    process.stdin.write(b"".join(lines[:split]))
    process.stdin.flush()
    time.sleep(pause)
    process.stdin.write(b"".join(lines[split:]))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    return out, err.decode()


def test_not_on_a_terminal_the_log_alone():
    recorded = RECORDED.read_bytes()
    out, err = progress(recorded, "0", "2161", "compiling vmlinux")
    assert out == recorded  # every line reaches the build log
    assert err == ""


def test_on_a_terminal_a_line_that_moves():
    recorded = RECORDED.read_bytes()
    cc_lines = [i for i, line in enumerate(recorded.splitlines()) if line.startswith(b"  CC ")]
    # Half the objects, a pause (the clock has a second's grain), then the rest.
    half = cc_lines[300]
    out, err = progress(recorded, "1", "2161", "compiling vmlinux", "1", pause_after=half, pause=2.2)
    assert out == recorded
    states = [state.removesuffix("\x1b[K") for state in err.split("\r")]
    assert states[0] == "  compiling vmlinux: 1/2161 objects (0%)"  # at the first object
    counted = [re.match(r"  compiling vmlinux: (\d+)/2161 objects \((\d+)%\)(.*)", s) for s in states[:-1]]
    assert all(counted), states
    # Redrawn after the pause, with 301 objects compiled, and a time left from the rate.
    assert counted[-1].group(1) == "301" and counted[-1].group(2) == str(100 * 301 // 2161)
    assert re.fullmatch(r", (about \d+ min|less than a minute) left", counted[-1].group(3))
    assert states[-1] == ""  # erased at the end: the next stage line starts clean
    assert err.endswith("\r\x1b[K")


def test_past_the_total_the_link():
    _, err = progress(RECORDED.read_bytes(), "1", "1", "compiling vmlinux")
    assert err.split("\r")[0] == "  compiling vmlinux: 1 objects compiled, linking\x1b[K"


def test_without_a_total_the_count_alone():
    _, err = progress(RECORDED.read_bytes(), "1", "0", "compiling vmlinux")
    assert err.split("\r")[0] == "  compiling vmlinux: 1 objects\x1b[K"


def build_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "build.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)  # absolute: image._run's BUILD_DIR / script is this path


SCRIPT = """printf 'terminal=%s\\n' "${ALEPH_RUNTIME_PROGRESS:-0}" >&2
printf '  one\\r  two\\r' >&2
echo /the/output
"""


def test_relayed_to_a_terminal_with_its_carriage_returns(tmp_path):
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        assert image._run(build_script(tmp_path, SCRIPT), [], terminal, None) == Path("/the/output")
    shown = b""
    with contextlib.suppress(OSError):  # EIO: everything written was read
        while select.select([master], [], [], 0.5)[0]:
            shown += os.read(master, 4096)
    os.close(master)
    shown = shown.decode()
    assert "terminal=1" in shown
    assert "  one\r  two\r" in shown


def test_relayed_elsewhere_told_it_is_no_terminal(tmp_path):
    captured = io.StringIO()
    image._run(build_script(tmp_path, SCRIPT), [], captured, None)
    assert captured.getvalue() == "terminal=0\n  one\r  two\r"


def test_a_failed_build_shows_its_last_lines_as_a_terminal_did(tmp_path):
    script = build_script(
        tmp_path, "printf 'step one\\n  1/9\\033[K\\r  2/9\\033[K\\r\\033[Kerror: broken\\n' >&2\nexit 1\n"
    )
    with pytest.raises(image.BuildError) as failure:
        image._run(script, [], io.StringIO(), None)
    assert str(failure.value).splitlines()[1:] == ["step one", "error: broken"]
