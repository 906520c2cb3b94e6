"""From a PATH to a program as a node would receive it: encoding, entrypoint, interface
and its code (a .py file or any single file, a directory, a zip or tar archive, a
squashfs image)."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

from aleph_runtime.host.errors import NodeError, SetupError
from aleph_runtime.protocol import INTERFACE_NAMES, Encoding, Interface, interface_for

#: Names of an executable program's launcher in a directory or archive, in order of preference.
LAUNCHERS = ("run.sh", "run", "start.sh", "start", "entrypoint.sh")


@dataclasses.dataclass
class Program:
    """A program as a node would receive it: encoding, entrypoint, interface and its code."""

    source: Path
    encoding: Encoding | None
    entrypoint: str
    interface: Interface | None
    code: bytes | None = None
    """The code (plain, zip, tar); None for squashfs, which is a drive."""
    image: Path | None = None
    """A squashfs image of the code, when PATH is one."""
    directory: Path | None = None
    """PATH when it is a directory (packed per `encoding`)."""
    why: str = ""
    """How encoding and entrypoint were chosen, for the progress output."""

    def describe(self) -> str:
        return f"{self.source}: {self.encoding}, {self.interface}, entrypoint {self.entrypoint!r}"


def is_squashfs(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"hsqs"


def _listing_directory(directory: Path) -> dict[str, bool]:
    """Relative path -> executable, for the files of a directory (no __pycache__)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        files[path.relative_to(directory).as_posix()] = os.access(path, os.X_OK)
    return files


def _listing_zip(data: bytes) -> dict[str, bool]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename: bool((info.external_attr >> 16) & 0o111)
            for info in archive.infolist()
            if not info.is_dir()
        }


def _listing_tar(path: Path) -> dict[str, bool]:
    with tarfile.open(path) as archive:
        return {
            member.name.removeprefix("./"): bool(member.mode & 0o111)
            for member in archive.getmembers()
            if member.isfile()
        }


def _listing_squashfs(image: Path) -> dict[str, bool]:
    try:
        out = subprocess.run(
            ["unsquashfs", "-lls", "-d", "R", str(image)], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        raise SetupError(
            "unsquashfs is not installed (Debian's squashfs-tools; scripts/setup.sh installs it)"
        ) from None
    except subprocess.CalledProcessError as error:
        raise NodeError(f"{image} is not a readable squashfs image: {error.stderr.strip()}") from None
    files = {}
    for line in out.splitlines():
        if not line.startswith("-"):
            continue  # directories, links, the header
        name = line.split(None, 5)[-1]
        if name.startswith("R/"):
            files[name[2:]] = "x" in line[1:10]
    return files


def entrypoint_from_listing(files: dict[str, bool]) -> tuple[str, str]:
    """(entrypoint, why) from a program's file listing (path -> executable).

    The rules, at the top level, or inside the only top-level directory when there is
    exactly one and no top-level file:
    1. `main.py` -> `main:app` (ASGI)
    2. an executable launcher, the first of run.sh, run, start.sh, start, entrypoint.sh
       -> that path (executable)
    3. `app.py` -> `app:app` (ASGI)
    4. exactly one `.py` file -> `<its name>:app` (ASGI)
    """
    top = {name.split("/", 1)[0] for name in files}
    prefix = ""
    if len(top) == 1 and all("/" in name for name in files):
        prefix = next(iter(top)) + "/"
    level = {name[len(prefix):]: executable for name, executable in files.items()
             if name.startswith(prefix) and "/" not in name[len(prefix):]}  # fmt: skip
    module_prefix = prefix.rstrip("/").replace("/", ".") + "." if prefix else ""
    where = f" in {prefix.rstrip('/')}/" if prefix else ""
    if "main.py" in level:
        return f"{module_prefix}main:app", f"main.py{where} -> ASGI `app`"
    for launcher in LAUNCHERS:
        if level.get(launcher):
            return f"{prefix}{launcher}", f"executable {launcher}{where}"
    if "app.py" in level:
        return f"{module_prefix}app:app", f"app.py{where} -> ASGI `app`"
    python = [name for name in level if name.endswith(".py") and name[:-3].isidentifier()]
    if len(python) == 1:
        return (
            f"{module_prefix}{python[0][:-3]}:app",
            f"the only Python file, {python[0]}{where} -> ASGI `app`",
        )
    raise NodeError(
        "cannot tell how to run this program: no main.py, no executable run.sh/run/start.sh/start/entrypoint.sh, "
        "no app.py and not exactly one .py file at its top level; give --entrypoint "
        "(`module:app` for Python ASGI, a file path for an executable)"
    )


def infer_program(
    path: str | os.PathLike,
    entrypoint: str | None = None,
    encoding: str | None = None,
    interface: str | None = None,
) -> Program:
    """Read PATH (a .py file or any single file, a directory, a zip or tar archive, a
    squashfs image) the way a node would receive it. Options override what is inferred."""
    source = Path(path).expanduser()
    if not source.exists():
        raise NodeError(f"{source} does not exist")
    source = source.resolve()
    if encoding is not None:
        if encoding not in list(Encoding):
            raise NodeError(f"unknown encoding {encoding!r}: one of {', '.join(Encoding)}")
        encoding = Encoding(encoding)
    if interface is not None:
        if interface not in INTERFACE_NAMES:
            raise NodeError(f"unknown interface {interface!r}: one of {', '.join(INTERFACE_NAMES)}")
        interface = Interface.named(interface)
    program = Program(source=source, encoding=None, entrypoint="", interface=None)
    why = []
    if source.is_dir():
        program.directory = source
        program.encoding = encoding or Encoding.ZIP
        if program.encoding is Encoding.PLAIN:
            raise NodeError("a directory cannot be sent as plain code: use zip, tar or squashfs")
        why.append(f"a directory, packed as {program.encoding}")
        files = _listing_directory(source)
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(files)
            why.append(reason)
    elif zipfile.is_zipfile(source) and source.suffix != ".py":
        program.encoding = encoding or Encoding.ZIP
        program.code = source.read_bytes()
        why.append("a zip archive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_zip(program.code))
            why.append(reason)
    elif is_squashfs(source):
        program.encoding = encoding or Encoding.SQUASHFS
        program.image = source
        why.append("a squashfs image, given as the code drive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_squashfs(source))
            why.append(reason)
    elif source.suffix != ".py" and tarfile.is_tarfile(source):
        program.encoding = encoding or Encoding.TAR
        program.code = source.read_bytes()
        why.append("a tar archive")
        if not entrypoint:
            entrypoint, reason = entrypoint_from_listing(_listing_tar(source))
            why.append(reason)
    else:
        program.encoding = encoding or Encoding.PLAIN
        program.code = source.read_bytes()
        if not entrypoint:
            if source.suffix == ".py":
                module = source.stem if source.stem.isidentifier() else "main"
                entrypoint = f"{module}:app"
                why.append(f"a Python file -> plain code, ASGI `app` of module {module}")
            else:
                entrypoint = re.sub(r"[^\w.-]", "_", source.name)
                why.append("a single non-Python file -> plain code, run as an executable")
    if program.encoding is Encoding.SQUASHFS and program.image is None and program.directory is None:
        raise NodeError(f"--encoding squashfs needs a directory or a squashfs image, not {source.name}")
    if program.encoding is not Encoding.SQUASHFS and program.image is not None:
        raise NodeError(f"{source.name} is a squashfs image: its encoding can only be squashfs")
    program.entrypoint = entrypoint
    program.interface = interface or interface_for(entrypoint)
    program.why = "; ".join(why)
    return program
