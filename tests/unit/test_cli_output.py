"""The CLI's console filter (what an author sees by default) and `--env-file` parsing,
on lines and files as the VM console, the dev init's log and dotenv users write them."""

from __future__ import annotations

import pytest

from aleph_runtime.host.errors import NodeError
from aleph_runtime.host.node.output import OutputFilter
from aleph_runtime.host.node.volumes import MAX_ENV_FILE_BYTES, parse_env_file

VM_CONSOLE = [
    "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)",
    "Booting from ROM...",
    "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)",
    "1.52 initramfs: mounting the root filesystem",
    "2.01 init0: starting init1",
    "[    2.512345] init1 INFO: aleph-runtime init starting (PID 1, vsock, root /)",
    "[    3.000001] init1 INFO: Ready signal sent",
    "program output on stdout",
    "[    3.100000] virtio_net virtio1 eth0: renamed",
    "[    4.000000] init1 WARNING: the program does not accept connections on port 8080 yet",
    "[    5.000000] init1 ERROR: Unhandled error in the event loop: Task exception was never retrieved"
    ' | Traceback (most recent call last): |   File "/opt/main.py", line 9, in app |     sys.exit(1) | SystemExit: 1',
    "[    5.100000] init1 ERROR: Configuration failed: the program's module 'main' failed to import",
    "1.23 is a number a program may print",
]


def test_a_vm_console_shows_the_program_and_the_init_s_warnings_only():
    keep = OutputFilter(vm=True)
    shown = [line for line in map(keep, VM_CONSOLE) if line is not None]
    assert shown == [
        "program output on stdout",
        "init warning: the program does not accept connections on port 8080 yet",
        "init error: Unhandled error in the event loop: Task exception was never retrieved (SystemExit: 1)",
        "1.23 is a number a program may print",
    ]


def test_each_boot_is_hidden_and_dev_mode_has_none():
    keep = OutputFilter(vm=True)
    list(map(keep, VM_CONSOLE))
    keep.new_boot()
    assert keep("SeaBIOS (version 1.16.2-debian-1.16.2-1)") is None
    assert keep("[    2.5] init1 INFO: starting") is None
    assert keep("after the boot") == "after the boot"
    dev = OutputFilter(vm=False)
    dev.new_boot()
    assert dev("the program's first line, before the init's") == "the program's first line, before the init's"


def test_env_file_errors(tmp_path):
    path = tmp_path / "bad.env"
    path.write_text('GOOD=1\nQUOTED="never closed\n')
    with pytest.raises(
        NodeError, match=r"""line 2: expected KEY=VALUE \(its quotes closed\), not 'QUOTED="never closed'"""
    ):
        parse_env_file(path)
    path.write_text("KEY='value' trailing\n")
    with pytest.raises(NodeError, match=r"line 1: expected KEY=VALUE .*, not \"KEY='value' trailing\""):
        parse_env_file(path)
    path.write_text("ALONE\n")
    with pytest.raises(NodeError, match="line 1: expected KEY=VALUE"):
        parse_env_file(path)
    path.write_text("1KEY=x\n")
    with pytest.raises(NodeError, match="line 1: expected KEY=VALUE"):
        parse_env_file(path)
    path.write_bytes(b"A=" + b"x" * MAX_ENV_FILE_BYTES)
    with pytest.raises(NodeError, match="larger than"):
        parse_env_file(path)
    with pytest.raises(NodeError, match="no such file"):
        parse_env_file(tmp_path / "missing.env")


def test_env_file_values(tmp_path):
    path = tmp_path / "ok.env"
    path.write_text(
        "# comment\n\nexport A=1\nB = spaced value   # comment\nC='single # kept \\n'\n"
        'D="escaped \\" quote\\tand tab"\nE="first\nsecond"\nF=\nG=a#b\nA=2\nH=${A}\n'
    )
    assert parse_env_file(path) == {
        "A": "2", "B": "spaced value", "C": "single # kept \\n", "D": 'escaped " quote\tand tab',
        "E": "first\nsecond", "F": "", "G": "a#b", "H": "${A}",
    }  # fmt: skip
