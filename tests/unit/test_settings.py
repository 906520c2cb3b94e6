"""The init's knobs: read once, from the environment and the kernel command line."""

import pytest

from aleph_runtime.guest.settings import (
    DEFAULT_MAX_REQUEST_BYTES,
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
