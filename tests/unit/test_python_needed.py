"""A program written for a newer Python than its runtime's: the error names the Python
it needs, the one it has and the runtime to choose (guest/python_needed.py), also through
the real import of a program module (the `program` fixture: guest/code.py's
load_asgi_app, as the init loads an app)."""

from __future__ import annotations

import platform
import sys

import pytest

from aleph_runtime.guest import python_needed
from aleph_runtime.guest.config import ConfigError

ON_311 = sys.version_info[:2] == (3, 11)


def syntax_error(line: str) -> SyntaxError:
    """The SyntaxError Python 3.11 raises on `line` (built as it would be, so the test
    runs under any Python: 3.12+ compiles these lines)."""
    return SyntaxError("invalid syntax", ("main.py", 1, 6, line + "\n", 1, 7))


@pytest.mark.parametrize(
    ("line", "needed"),
    [
        ("type Vector = list[float]", (3, 12)),
        ("type Pair[T] = tuple[T, T]", (3, 12)),
        ("def first[T](items: list[T]) -> T:", (3, 12)),
        ("async def fetch[T](url: str) -> T:", (3, 12)),
        ("class Box[T]:", (3, 12)),
        ("class Box[T = int]:", (3, 13)),
        ("def first[T: int = int](items: list[T]) -> T:", (3, 13)),
        ("type Pair[T = int] = tuple[T, T]", (3, 13)),
        ("def broken(:", None),
        ("typed = 1 +", None),
    ],
)
def test_the_python_a_syntax_needs(line: str, needed):
    assert python_needed.needed_python(syntax_error(line)) == needed


def test_the_python_an_import_needs():
    def import_error(module: str, name: str) -> ImportError:
        return ImportError(f"cannot import name '{name}' from '{module}' (/usr/lib/...)", name=module)

    assert python_needed.needed_python(import_error("inspect", "markcoroutinefunction")) == (3, 12)
    assert python_needed.needed_python(import_error("warnings", "deprecated")) == (3, 13)
    assert python_needed.needed_python(import_error("inspect", "no_such_name")) is None
    assert python_needed.needed_python(
        ModuleNotFoundError("No module named 'annotationlib'", name="annotationlib")
    ) == (
        3,
        14,
    )
    assert (
        python_needed.needed_python(ModuleNotFoundError("No module named 'requests'", name="requests"))
        is None
    )
    assert python_needed.needed_python(ValueError("no good")) is None


@pytest.mark.skipif(not ON_311, reason="the runtime choice is told on debian-12's Python, 3.11")
def test_the_hint_names_both_pythons_and_the_runtime():
    assert python_needed.hint(syntax_error("type Vector = list[float]")) == (
        f" (the runtime runs Python {platform.python_version()}; this package may need a newer Python:"
        " it needs Python 3.12: choose `--runtime debian-13` (Python 3.13))"
    )
    assert python_needed.hint(
        ModuleNotFoundError("No module named 'annotationlib'", name="annotationlib")
    ) == (
        f" (the runtime runs Python {platform.python_version()}; this package may need a newer Python:"
        " it needs Python 3.14; no runtime offers it yet)"
    )
    # A syntax error it cannot date still points at the newer runtime.
    assert python_needed.hint(syntax_error("def broken(:")).endswith(
        "may need a newer Python: `--runtime debian-13` runs Python 3.13)"
    )
    assert python_needed.hint(ModuleNotFoundError("No module named 'requests'", name="requests")) == ""


@pytest.mark.skipif(not ON_311, reason="3.12+ compiles a type statement")
@pytest.mark.parametrize(
    "source",
    ["type Vector = list[float]\napp = None\n", "def first[T](items: list[T]) -> T:\n    return items[0]\n"],
)
def test_a_program_with_newer_syntax_is_told_its_runtime(program, source: str):
    with pytest.raises(ConfigError) as caught:
        program(source)
    message = str(caught.value)
    assert "SyntaxError" in message
    assert f"the runtime runs Python {platform.python_version()}" in message
    assert "it needs Python 3.12: choose `--runtime debian-13` (Python 3.13)" in message


@pytest.mark.skipif(not ON_311, reason="itertools.batched exists from Python 3.12")
def test_a_program_importing_a_newer_standard_name_is_told_its_runtime(program):
    with pytest.raises(ConfigError) as caught:
        program("from itertools import batched\napp = None\n")
    assert "it needs Python 3.12: choose `--runtime debian-13` (Python 3.13)" in str(caught.value)
