"""The init's knobs: read once, from the environment and the kernel command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aleph_runtime.guest.settings import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_UNPACKED_BYTES,
    Settings,
    SettingsError,
    read_kernel_cmdline,
)


def test_defaults_without_variables():
    settings = Settings.read({})
    assert settings == Settings()
    assert settings.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert settings.uds is None and not settings.debug


def test_variables_are_read():
    settings = Settings.read(
        {
            "ALEPH_VSOCK_UDS": "/run/x/v.sock",
            "ALEPH_INIT_ROOT": "/srv/root",
            "ALEPH_EVENT_LOOP": "asyncio",
            "ALEPH_LOG_LEVEL": "debug",
            "ALEPH_MAX_REQUEST_BYTES": "1024",
            "ALEPH_LIFESPAN_STARTUP_TIMEOUT": "2.5",
            "ALEPH_MAX_UNPACKED_BYTES": "4096",
        }
    )
    assert settings == Settings(
        uds="/run/x/v.sock",
        root="/srv/root",
        event_loop="asyncio",
        debug=True,
        max_request_bytes=1024,
        lifespan_startup_timeout=2.5,
        max_unpacked_bytes=4096,
    )


def test_arguments_win_over_variables():
    settings = Settings.read({"ALEPH_VSOCK_UDS": "/a", "ALEPH_INIT_ROOT": "/b"}, uds="/c", root="/d")
    assert (settings.uds, settings.root) == ("/c", "/d")


def test_debug_from_the_kernel_command_line():
    assert Settings.read({}, "console=ttyS0 aleph.debug quiet").debug
    assert not Settings.read({}, "console=ttyS0 aleph.debugger").debug


@pytest.mark.parametrize("value", ["lots", "-1", "0"])
def test_a_bad_number_is_named(value):
    with pytest.raises(SettingsError, match="ALEPH_MAX_REQUEST_BYTES"):
        Settings.read({"ALEPH_MAX_REQUEST_BYTES": value})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().debug = True  # type: ignore[misc]


def test_missing_cmdline_reads_as_empty(tmp_path):
    assert read_kernel_cmdline(str(tmp_path / "absent")) == ""
    (tmp_path / "cmdline").write_text("aleph.debug\n")
    assert read_kernel_cmdline(str(tmp_path / "cmdline")) == "aleph.debug\n"


#: What int() and float() take and no limit should be: NaN (a NaN lifespan timeout failed
#: every ASGI start), infinities, Unicode digits, underscores, and numbers past 2**63.
UNUSABLE = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e999",
    "١٢٣",
    "\uff11\uff12",
    "1_000",
    "9" * 20,
    "1e19",
    "0x10",
    "+5",
]


@pytest.mark.parametrize("value", UNUSABLE)
@pytest.mark.parametrize("name", ["ALEPH_MAX_REQUEST_BYTES", "ALEPH_LIFESPAN_STARTUP_TIMEOUT"])
def test_an_unusable_number_is_refused(name, value):
    if name == "ALEPH_LIFESPAN_STARTUP_TIMEOUT" and value == "+5":
        value = "-5"  # float's sign: refused as not positive
    with pytest.raises(SettingsError, match=name):
        Settings.read({name: value})


@pytest.mark.parametrize(("value", "expected"), [("2.5", 2.5), (" 30 ", 30.0), ("1e3", 1000.0), (".5", 0.5)])
def test_decimal_timeouts_as_people_write_them(value, expected):
    assert Settings.read({"ALEPH_LIFESPAN_STARTUP_TIMEOUT": value}).lifespan_startup_timeout == expected


def test_the_largest_setting_is_accepted():
    assert Settings.read({"ALEPH_MAX_UNPACKED_BYTES": str(2**63 - 1)}).max_unpacked_bytes == 2**63 - 1


def test_with_a_problem_list_an_unusable_knob_takes_its_default_and_the_others_stay():
    problems = []
    settings = Settings.read(
        {"ALEPH_LIFESPAN_STARTUP_TIMEOUT": "nan", "ALEPH_MAX_REQUEST_BYTES": "1024", "ALEPH_VSOCK_UDS": "/u"},
        problems=problems,
    )
    assert settings == Settings(uds="/u", max_request_bytes=1024)
    assert problems == [
        "ALEPH_LIFESPAN_STARTUP_TIMEOUT must be a number in ASCII digits, not 'nan': using its default, 50.0"
    ]


def test_the_process_settings_warn_on_stderr_and_keep_the_usable_knobs():
    script = (
        "from aleph_runtime.guest import settings; s = settings.from_process();"
        "print(s.lifespan_startup_timeout, s.max_request_bytes, s.max_unpacked_bytes)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "runtime"),
        "ALEPH_LIFESPAN_STARTUP_TIMEOUT": "1e400",
        "ALEPH_MAX_REQUEST_BYTES": "2048",
        "ALEPH_MAX_UNPACKED_BYTES": "99999999999999999999",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["50.0", "2048", str(DEFAULT_MAX_UNPACKED_BYTES)]
    assert "init1: ALEPH_LIFESPAN_STARTUP_TIMEOUT must be at most" in result.stderr
    assert "init1: ALEPH_MAX_UNPACKED_BYTES must be at most" in result.stderr


def test_the_orphan_grace_is_a_setting():
    assert Settings.read({}).orphan_grace == 10.0
    assert Settings.read({"ALEPH_ORPHAN_GRACE": "0.5"}).orphan_grace == 0.5
    with pytest.raises(SettingsError, match="ALEPH_ORPHAN_GRACE"):
        Settings.read({"ALEPH_ORPHAN_GRACE": "nan"})
