"""When a program fails to import because it was written for a newer Python: which Python
it needs, which one runs it, and the runtime that has it.

The runtimes (rootfs-build/, `--runtime`) and their Pythons: debian-12, the network's,
runs 3.11; debian-13 runs 3.13. `hint(error)` reads an import-time SyntaxError (the
syntax of a later Python: PEP 695's `type` statements and generic `def f[T]()`, PEP 696's
defaults for them) or ImportError (a standard library name or module of a later Python)
and returns a parenthesised sentence to append to the error, or "" when the failure does
not look like one.
"""

from __future__ import annotations

import platform
import re
import sys

#: Each runtime's Python (major, minor), oldest first.
RUNTIME_PYTHONS = (("debian-12", (3, 11)), ("debian-13", (3, 13)))

#: Names later Pythons added to standard modules a program imports from (`from M import N`).
NEWER_STDLIB_NAMES: dict[tuple[str, str], tuple[int, int]] = {
    ("inspect", "markcoroutinefunction"): (3, 12),  # Django 6 imports it
    ("itertools", "batched"): (3, 12),
    ("typing", "override"): (3, 12),
    ("typing", "TypeAliasType"): (3, 12),
    ("typing", "get_protocol_members"): (3, 13),
    ("typing", "is_protocol"): (3, 13),
    ("typing", "ReadOnly"): (3, 13),
    ("typing", "TypeIs"): (3, 13),
    ("typing", "NoDefault"): (3, 13),
    ("warnings", "deprecated"): (3, 13),
    ("copy", "replace"): (3, 13),
    ("calendar", "Month"): (3, 12),
    ("calendar", "Day"): (3, 12),
    ("pathlib", "UnsupportedOperation"): (3, 13),
}

#: Standard modules later Pythons added (`import M` fails before them).
NEWER_STDLIB_MODULES = {"annotationlib": (3, 14), "compression": (3, 14)}

# PEP 695 (3.12): `type X = ...`, `def f[T](...)`, `class C[T]:`; PEP 696 (3.13): `[T = int]`.
_TYPE_STATEMENT = re.compile(r"^\s*type\s+[A-Za-z_]\w*\s*(\[.*\])?\s*=")
_GENERIC_DEF = re.compile(r"^\s*(async\s+def|def|class)\s+[A-Za-z_]\w*\s*\[(?P<params>.*)\]\s*[(:]")
_PARAM_DEFAULT = re.compile(r"[A-Za-z_]\w*\s*(:[^=,\]]*)?=")


def needed_python(error: BaseException) -> tuple[int, int] | None:
    """The Python version the failure shows the program needs, if it shows one."""
    if isinstance(error, SyntaxError):
        text = error.text or ""
        generic = _GENERIC_DEF.match(text)
        if generic:
            return (3, 13) if _PARAM_DEFAULT.search(generic.group("params")) else (3, 12)
        type_statement = _TYPE_STATEMENT.match(text)
        if type_statement:
            params = type_statement.group(1) or ""
            return (3, 13) if _PARAM_DEFAULT.search(params.strip("[]")) else (3, 12)
        return None
    if isinstance(error, ModuleNotFoundError):
        return NEWER_STDLIB_MODULES.get((error.name or "").split(".")[0])
    if isinstance(error, ImportError) and error.name:
        match = re.match(r"cannot import name '([^']+)'", str(error))
        if match:
            return NEWER_STDLIB_NAMES.get((error.name, match.group(1)))
    return None


def _runtime_for(version: tuple[int, int]) -> str | None:
    """The oldest runtime whose Python is at least `version`."""
    return next((name for name, python in RUNTIME_PYTHONS if python >= version), None)


def hint(error: BaseException) -> str:
    """A parenthesised sentence naming the Python the program needs, the one it has and
    the runtime to choose; "" when the error does not look like a newer Python's."""
    has = f"the runtime runs Python {platform.python_version()}"
    needed = needed_python(error)
    if needed is None:
        if isinstance(error, SyntaxError) or (
            isinstance(error, ImportError)
            and not isinstance(error, ModuleNotFoundError)
            and error.name
            and error.name.split(".")[0] in sys.stdlib_module_names
        ):
            newer = [(name, python) for name, python in RUNTIME_PYTHONS if python > sys.version_info[:2]]
            choose = "".join(
                f": `--runtime {name}` runs Python {_dotted(python)}" for name, python in newer[-1:]
            )
            return f" ({has}; this package may need a newer Python{choose})"
        return ""
    if sys.version_info[:2] >= needed:
        return ""
    runtime = _runtime_for(needed)
    if runtime is None:
        choose = "; no runtime offers it yet"
    else:
        choose = f": choose `--runtime {runtime}` (Python {_dotted(dict(RUNTIME_PYTHONS)[runtime])})"
    return f" ({has}; this package may need a newer Python: it needs Python {_dotted(needed)}{choose})"


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))
