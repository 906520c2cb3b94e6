"""guest/record.py: frozen value classes without dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest

from aleph_runtime.guest.code import Paths
from aleph_runtime.guest.config import Network, Volume
from aleph_runtime.guest.record import Record
from aleph_runtime.guest.settings import Settings


class Point(Record):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int = 0):
        self._fill(locals())


def test_fields_equality_hash_and_repr():
    assert (Point(1).x, Point(1).y) == (1, 0)
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert len({Point(1, 2), Point(1, 2), Point(3)}) == 2
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    # Another type with the same fields is not equal.
    assert Volume("/a", "vdb", True) != Point(1, 2)
    assert Paths() == Paths(Path("/")) and Paths(Path("/x")).code == Path("/x/opt/code")


def test_frozen():
    point = Point(1)
    with pytest.raises(AttributeError, match="Point is frozen: x cannot change"):
        point.x = 2
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del point.y
    with pytest.raises(AttributeError):
        point.z = 3  # no __dict__ either
    with pytest.raises(AttributeError, match="read once"):
        Settings().debug = True
    assert Point(1) == point


def test_the_init_imports_no_dataclasses():
    """The point of Record: importing the init, and parsing a config, pulls in neither."""
    import subprocess
    import sys

    code = (
        "import sys; from aleph_runtime.guest import serve, volumes, asgi; "
        "from aleph_runtime.guest.config import parse_config; "
        "print(sorted(m for m in ('dataclasses', 'copy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_default_argument_is_the_field_value():
    assert Point(1).y == 0
    assert Network().dns_servers == () and Network().ipv4 is None
