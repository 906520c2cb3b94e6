"""`scripts/bench.sh vm --floor`: the least any init could do, passed on the kernel's
command line. The kernel's rules for that line are easy to break silently (a word with a
dot vanishes, one with `=` becomes an environment variable), so they are checked here,
and the code it carries is run (all but its final reboot) with this machine's Python."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench_vm():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_vm

        yield bench_vm
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize("program", ["hello", "fastapi"])
def test_cmdline_survives_the_kernel(bench_vm, program: str):
    words = bench_vm.floor_cmdline(bench_vm.cold_sources()[program])
    environment = [word for word in words if "=" in word]
    arguments = [word for word in words if "=" not in word]
    # NAME=value reaches init's environment only when NAME has no dot.
    assert all("." not in word.split("=", 1)[0] for word in environment)
    assert {word.split("=", 1)[0] for word in environment} == {"PYTHONPATH", "TMPDIR", "ALEPH_FLOOR"}
    # The rest are init's arguments: none may hold a dot, and quotes hold no newline.
    assert arguments[:2] == ["-OO", "-c"]
    assert not any("." in word or "\n" in word for word in arguments)
    assert len(" ".join(words)) < 1600


@pytest.mark.parametrize("program", ["hello", "fastapi"])
def test_code_imports_and_prints_its_marker(bench_vm, program: str):
    source = bench_vm.cold_sources()[program]
    words = bench_vm.floor_cmdline(source)
    code = bytes.fromhex(next(w for w in words if w.startswith("ALEPH_FLOOR=")).split("=", 1)[1])
    assert code == bench_vm.floor_source(source)
    # Everything but the reboot (this is no VM); the program's own imports are there.
    before_reboot, reboot = code.decode().split("import ctypes\n")
    assert reboot.startswith("ctypes.CDLL(None).reboot(")
    for module in bench_vm.FLOOR_MODULES:
        assert module in before_reboot.splitlines()[0]
    if program == "fastapi":
        assert "from aleph.sdk.vm.app import AlephApp" in before_reboot
    run = words[-1].strip('"')
    env = {**os.environ, "ALEPH_FLOOR": before_reboot.encode().hex()}
    result = subprocess.run(
        [sys.executable, "-OO", "-c", run], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(bench_vm.FLOOR_MARKER)
    assert float(line.split()[-2]) > 0  # the uptime, as floor_start reads it
