"""Package a program and build the configuration the supervisor would send for it.

Shared by the tests, the benchmark and the CLI, so all of them send the init exactly
the V2 configuration a node sends (see aleph-vm's ProgramConfiguration).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from aleph_runtime.protocol import Encoding, Interface, interface_for


def program_config(
    code: bytes | None,
    entrypoint: str,
    encoding: Encoding | str = Encoding.PLAIN,
    interface: Interface | str | None = None,
    vm_hash: str | None = None,
    volumes: list[dict] | None = None,
    variables: dict[str, str] | None = None,
    input_data: bytes | None = None,
    ip: str | None = None,
    route: str | None = None,
    ipv6: str | None = None,
    ipv6_gateway: str | None = None,
    dns_servers: list[str] | None = None,
    authorized_keys: list[str] | None = None,
) -> dict:
    """A V2 configuration, with every key the supervisor sends."""
    return {
        "input_data": input_data,
        "interface": interface or interface_for(entrypoint),
        "vm_hash": vm_hash or hashlib.sha256(code or entrypoint.encode()).hexdigest(),
        "encoding": encoding,
        "entrypoint": entrypoint,
        "code": code,
        "ip": ip,
        "ipv6": ipv6,
        "route": route,
        "ipv6_gateway": ipv6_gateway,
        "dns_servers": dns_servers or [],
        "volumes": volumes or [],
        "variables": variables,
        "authorized_keys": authorized_keys,
    }


#: Bytecode levels written beside a program's sources and into a packages volume: 0 for a
#: plain `python3`, 2 for the init's `python3 -OO` (`*.opt-2.pyc`).
BYTECODE_LEVELS = (0, 2)
#: Every file time in a packed squashfs (reproducible: the same files give the same image).
SQUASHFS_EPOCH = 0


def _files(directory: Path):
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        yield path, path.relative_to(directory).as_posix()


def compile_bytecode_command(
    directory: str | os.PathLike, guest_path: str, python: str = "python3"
) -> list[str]:
    """`compileall` writing unchecked-hash bytecode at BYTECODE_LEVELS for every .py under
    `directory`, which the guest sees at `guest_path` (the name tracebacks show): valid
    whatever the files' times (a read-only volume never recompiles), and the same bytes at
    every build (no timestamp in the header, no build directory in the code)."""
    levels = [item for level in BYTECODE_LEVELS for item in ("-o", str(level))]
    return [python, "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode", "unchecked-hash",
            *levels, "-s", os.fspath(directory), "-p", guest_path, os.fspath(directory)]  # fmt: skip


@functools.lru_cache(maxsize=4096)
def bytecode_files(name: str, source: bytes) -> tuple[tuple[str, bytes], ...]:
    """(archive name, .pyc bytes) of `name`'s unchecked-hash bytecode at BYTECODE_LEVELS, compiled
    by this Python (whose cache tag and magic must be the runtime's: `bytecode_matches`); () for
    a source this Python cannot compile (it fails at import as it would anyway). Remembered:
    `--watch` packs again after each edit, and compiles only the files that changed."""
    from importlib import _bootstrap_external
    from importlib.util import source_hash

    directory, _, filename = name.rpartition("/")
    prefix = f"{directory}/__pycache__/" if directory else "__pycache__/"
    stem = filename[: -len(".py")]
    tag = sys.implementation.cache_tag
    files = []
    for level in BYTECODE_LEVELS:
        try:
            code = compile(source, name, "exec", dont_inherit=True, optimize=level)
        except (SyntaxError, ValueError):
            return ()
        pyc = _bootstrap_external._code_to_hash_pyc(code, source_hash(source), checked=False)
        suffix = f".opt-{level}" if level else ""
        files.append((f"{prefix}{stem}.{tag}{suffix}.pyc", bytes(pyc)))
    return tuple(files)


def bytecode_matches(python_version: str | None) -> bool:
    """Whether this Python writes bytecode the runtime's Python (`3.11.2`, say) loads: the
    same minor version (the pyc magic number and cache tag follow it)."""
    if not python_version:
        return False
    return python_version.split(".")[:2] == [str(part) for part in sys.version_info[:2]]


def _with_bytecode(directory: Path, bytecode: bool):
    """(name, data or path) of a directory's files, and with `bytecode` each .py's .pyc."""
    for path, name in _files(directory):
        if not path.is_file():
            yield path, name, None
            continue
        yield path, name, None
        if bytecode and name.endswith(".py"):
            for pyc_name, pyc in bytecode_files(name, path.read_bytes()):
                yield None, pyc_name, pyc


def zip_directory(directory: str | os.PathLike, bytecode: bool = False) -> bytes:
    """A directory as a zip; with `bytecode`, each .py's unchecked-hash .pyc (this Python's) in
    its __pycache__."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name, data in _with_bytecode(Path(directory), bytecode):
            if data is None:
                archive.write(path, name)
            else:
                archive.writestr(
                    zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED
                )
    return buffer.getvalue()


def tar_directory(directory: str | os.PathLike, compression: str = "gz", bytecode: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for path, name, data in _with_bytecode(Path(directory), bytecode):
            if data is None:
                archive.add(path, name, recursive=False)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def reproducible_squashfs(
    directory: str | os.PathLike, image: str | os.PathLike, compression: tuple[str, ...] = ("-comp", "zstd")
) -> Path:
    """`directory` packed as a squashfs whose bytes depend on its files only: owned by root, every
    time SQUASHFS_EPOCH, no extended attributes (rootfs-build/build-rootfs.sh packs the image
    with the same flags). zstd: every node kernel reads it, smaller than lz4, faster than gzip."""
    try:
        subprocess.run(
            ["mksquashfs", os.fspath(directory), os.fspath(image), "-noappend", "-quiet", "-no-progress",
             "-all-root", "-no-xattrs", "-reproducible", "-mkfs-time", str(SQUASHFS_EPOCH),
             "-all-time", str(SQUASHFS_EPOCH), *compression],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        raise RuntimeError("mksquashfs is not installed (squashfs-tools; scripts/setup.sh)") from None
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"mksquashfs {directory} failed: {error.stderr.decode(errors='replace').strip()}"
        ) from None
    return Path(image)


def squashfs_directory(
    directory: str | os.PathLike, image: str | os.PathLike, bytecode: bool = False
) -> Path:
    """A read-only volume image, as a node's immutable volumes (and squashfs code) are; with
    `bytecode`, each .py's unchecked-hash .pyc (this Python's) beside it, in __pycache__."""
    directory = Path(directory)
    if not bytecode:
        subprocess.run(
            ["mksquashfs", str(directory), str(image), "-noappend", "-quiet", "-all-root", "-comp", "gzip"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return Path(image)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aleph-code-", dir=Path(image).parent) as staging:
        root = Path(staging) / "code"
        for path, name, data in _with_bytecode(directory, True):
            target = root / name
            if data is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            elif path.is_dir() and not path.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target, follow_symlinks=False)
        root.mkdir(exist_ok=True)
        shutil.copystat(directory, root)
        return reproducible_squashfs(root, image, ("-comp", "gzip"))
