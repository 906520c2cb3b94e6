"""Unpack the program's code and find its entrypoint.

Where code goes follows today's runtime, since programs may read their own files by
absolute path: an ASGI program's zip or tar is unpacked into /opt (on sys.path); an
executable's into /opt/code; a squashfs drive is mounted at /opt/code by the volume
code. /opt/packages comes first on sys.path, the legacy `aleph_client` modules
(runtime/compat, next to aleph_runtime) last, so a program shipping its own wins.

Plain code runs as a real module: written to `<module>.py` and imported, so it is in
sys.modules, its top-level helpers are visible from the entrypoint, and tracebacks
show its lines (today's runtime exec()s it with separate globals and locals, and a
plain program calling its own helper function fails with NameError).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
import types
from pathlib import Path

from aleph_runtime import protocol
from aleph_runtime.guest import collector, python_needed
from aleph_runtime.guest.archive import DEFAULT_MAX_UNPACKED, extract_tar, extract_zip
from aleph_runtime.guest.config import Config, ConfigError, Encoding, Interface, is_ascii_identifier
from aleph_runtime.guest.record import Record

logger = logging.getLogger("aleph_runtime.code")

#: A plain ASGI program whose entrypoint names only an attribute is imported as this module.
PLAIN_MODULE = "main"
#: The legacy aleph_client API over aleph-sdk-python: runtime/compat in a checkout and
#: /opt/aleph/runtime/compat in the image, beside the aleph_runtime package either way.
COMPAT_DIRECTORY = Path(__file__).resolve().parents[2] / "compat"


class Paths(Record):
    """Where the init puts things. `root` is "/" in a VM; a private directory in dev mode."""

    __slots__ = ("root",)

    def __init__(self, root: Path = Path("/")):
        self._fill(locals())

    root: Path

    def inside(self, path: str | os.PathLike) -> Path:
        """An absolute guest path (e.g. a volume's mount point) placed under root."""
        return self.root / str(path).lstrip("/")

    @property
    def opt(self) -> Path:
        return self.inside("/opt")

    @property
    def code(self) -> Path:
        return self.inside("/opt/code")

    @property
    def packages(self) -> Path:
        return self.inside("/opt/packages")

    @property
    def data(self) -> Path:
        return self.inside("/data")

    @property
    def guest_api_socket(self) -> Path:
        return self.inside(protocol.GUEST_API_SOCKET)


def split_entrypoint(entrypoint: str, encoding: Encoding) -> tuple[str, str]:
    """(module, attribute path) from `module.sub:attr.sub`.

    Without a colon, a plain program's entrypoint names the attribute (of PLAIN_MODULE);
    an archive's or a squashfs's names the module, and the app is inferred as `app`
    (then `application`, load_asgi_app): aleph-vm passes the message's entrypoint as it
    is, and `main` is how people name the module that holds `app`.
    """
    if ":" in entrypoint:
        module, attribute = entrypoint.split(":", 1)
    elif encoding is Encoding.PLAIN:
        module, attribute = PLAIN_MODULE, entrypoint
    else:
        module, attribute = entrypoint, INFERRED_ATTRIBUTES[0]
    if not _is_dotted_name(module):
        raise ConfigError(f"the entrypoint's module {module!r} is not a valid Python module path")
    if not _is_dotted_name(attribute):
        raise ConfigError(f"the entrypoint's attribute {attribute!r} is not a valid attribute path")
    return module, attribute


def _is_dotted_name(name: str) -> bool:
    """`a.b.c`, each part an ASCII identifier: a module path, or an attribute path."""
    return all(is_ascii_identifier(part) for part in name.split("."))


def unpack_code(config: Config, paths: Paths, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> Path:
    """Put the code where its interface expects it; return the directory that holds it."""
    directory = paths.opt if config.interface is Interface.ASGI else paths.code
    if config.encoding is Encoding.SQUASHFS:
        return paths.code  # mounted as the first volume
    directory.mkdir(parents=True, exist_ok=True)
    if config.encoding is Encoding.ZIP:
        extract_zip(config.code, directory, max_unpacked)
    elif config.encoding is Encoding.TAR:
        extract_tar(config.code, directory, max_unpacked)
    elif config.interface is Interface.ASGI:
        module, _ = split_entrypoint(config.entrypoint, config.encoding)
        module_path = directory.joinpath(*module.split(".")).with_suffix(".py")
        module_path.parent.mkdir(parents=True, exist_ok=True)
        module_path.write_bytes(config.code)
    else:
        path = executable_path(config, paths)
        path.parent.mkdir(parents=True, exist_ok=True)  # an entrypoint such as bin/server
        path.write_bytes(config.code)
    return directory


def executable_path(config: Config, paths: Paths) -> Path:
    """The executable named by the entrypoint, which must stay inside the code directory."""
    relative = Path(config.entrypoint.lstrip("/"))
    if ".." in relative.parts or not relative.parts:
        raise ConfigError(f"the entrypoint {config.entrypoint!r} must be a path inside the code")
    return paths.code / relative


#: What `app` may also be found as: Django's convention (`asgi.py` exposes `application`).
#: The first is also the attribute of an entrypoint that names only a module.
INFERRED_ATTRIBUTES = ("app", "application")
#: At most this many names are listed in a missing-attribute error.
MAX_LISTED = 8


def _newer_python_hint(error: BaseException) -> str:
    """A hint when an import failure smells of a package written for a newer Python."""
    return python_needed.hint(error)


def is_asgi_callable(value: object) -> bool:
    """Whether a module attribute looks like an ASGI app: an async callable of (scope, receive, send)."""
    try:
        return _looks_like_asgi(value)
    except Exception:  # noqa: BLE001 - a hostile or exotic object is simply not listed
        return False


def _looks_like_asgi(value: object) -> bool:
    if isinstance(value, (type, types.ModuleType)) or not callable(value):
        return False
    function = value if inspect.isfunction(value) or inspect.ismethod(value) else type(value).__call__
    if not (inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(value)):
        return False
    parameters = list(inspect.signature(value).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) <= 3 <= len(positional) or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _missing_attribute(
    entrypoint: str, module_name: str, candidates: list[str], module: object
) -> ConfigError:
    try:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and is_asgi_callable(value)
        ]
    except Exception:  # noqa: BLE001 - vars() of a hostile module object
        names = []
    if names:
        listed = ", ".join(repr(name) for name in names[:MAX_LISTED]) + (
            ", ..." if len(names) > MAX_LISTED else ""
        )
        found = f"; its ASGI applications are {listed}: name one as '{module_name}:<name>'"
    else:
        found = "; it defines no ASGI application (an async callable taking scope, receive and send)"
    tried = " nor ".join(repr(candidate) for candidate in candidates)
    return ConfigError(f"the entrypoint {entrypoint!r}: module {module_name!r} has no {tried}{found}")


def load_asgi_app(config: Config, paths: Paths, code_directory: Path):
    """Import the entrypoint; a missing module or attribute is a ConfigError naming what was tried."""
    module_name, attribute = split_entrypoint(config.entrypoint, config.encoding)
    for directory in (code_directory, paths.packages):
        if str(directory) in sys.path:
            sys.path.remove(str(directory))
    # Packages the program ships take precedence over everything, its code next.
    sys.path[0:0] = [str(paths.packages), str(code_directory)]
    if COMPAT_DIRECTORY.is_dir() and str(COMPAT_DIRECTORY) not in sys.path:
        sys.path.append(str(COMPAT_DIRECTORY))
    importlib.invalidate_caches()
    paused = collector.pause()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(f"the entrypoint's module {module_name!r} was not found in the code") from None
        raise ConfigError(
            f"the program's module {module_name!r} failed to import: {error}", traceback.format_exc()
        ) from None
    except BaseException as error:  # noqa: BLE001 - the program's own import-time failure, SystemExit included
        raise ConfigError(
            f"the program's module {module_name!r} failed to import: {type(error).__name__}: {error}"
            + _newer_python_hint(error),
            traceback.format_exc(),
        ) from None
    finally:
        collector.resume(paused)
    candidates = list(INFERRED_ATTRIBUTES) if attribute == INFERRED_ATTRIBUTES[0] else [attribute]
    for candidate in candidates:
        target: object = module
        try:
            for part in candidate.split("."):
                target = getattr(target, part)
        except AttributeError:
            continue
        if candidate != attribute:
            logger.info(
                "The module %r has no %r: serving its %r (Django's convention)",
                module_name,
                attribute,
                candidate,
            )
        break
    else:
        raise _missing_attribute(config.entrypoint, module_name, candidates, module) from None
    if not callable(target):
        raise ConfigError(
            f"the entrypoint {config.entrypoint!r} is not callable (it is a {type(target).__name__})"
        )
    return target
