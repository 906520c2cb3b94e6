"""The init's command line, read by hand (argparse costs milliseconds at every boot)."""

import pytest

from aleph_runtime.guest.main import _parse_arguments


def test_every_option_in_both_spellings():
    arguments = _parse_arguments(["--uds", "/run/v.sock", "--vsock", "--root=/srv/r"])
    assert (arguments.uds, arguments.vsock, arguments.root) == ("/run/v.sock", True, "/srv/r")
    assert _parse_arguments(["--uds=/x"]).uds == "/x"
    assert _parse_arguments([]).uds is None


@pytest.mark.parametrize("argv", [["--bogus"], ["--uds"], ["stray"]])
def test_a_bad_command_line_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse_arguments(argv)
    assert exit_info.value.code == 2
    assert "usage: init1" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse_arguments(["--help"])
    assert exit_info.value.code == 0
    assert "--uds PATH" in capsys.readouterr().out
