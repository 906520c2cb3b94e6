"""The init's command line, read by hand (argparse costs milliseconds at every boot)."""

import pytest

from aleph_runtime.guest.main import _parse_arguments


def test_every_option_in_both_spellings():
    arguments, ignored = _parse_arguments(["--uds", "/run/v.sock", "--vsock", "--root=/srv/r"], pid1=False)
    assert (arguments.uds, arguments.vsock, arguments.root, ignored) == ("/run/v.sock", True, "/srv/r", [])
    assert _parse_arguments(["--uds=/x"], pid1=False)[0].uds == "/x"
    assert _parse_arguments([], pid1=False)[0].uds is None


@pytest.mark.parametrize("argv", [["--bogus"], ["--uds"], ["stray"]])
def test_a_bad_command_line_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse_arguments(argv, pid1=False)
    assert exit_info.value.code == 2
    assert "usage: init1" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse_arguments(["--help"], pid1=False)
    assert exit_info.value.code == 0
    assert "--uds PATH" in capsys.readouterr().out


def test_pid1_ignores_the_kernels_words_and_never_exits():
    arguments, ignored = _parse_arguments(["nomodule", "--vsock", "--help", "noapic"], pid1=True)
    assert arguments.vsock and ignored == ["nomodule", "--help", "noapic"]
    arguments, ignored = _parse_arguments(["--root=/r", "--uds"], pid1=True)  # malformed: the defaults
    assert (arguments.root, arguments.uds, ignored) == (None, None, ["--root=/r", "--uds"])
