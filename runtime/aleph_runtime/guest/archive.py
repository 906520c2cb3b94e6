"""Safe extraction of the program's zip and tar archives, with Python's own modules.

A program's code and its input data come from whoever published the message, so an
archive is hostile until proven otherwise: entries with absolute paths or `..`, links
pointing out of the tree, writes through a link, device files and FIFOs are refused,
and so is an archive that unpacks to more than a size limit (a zip bomb). Nothing is
ever written outside the destination directory.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from aleph_runtime.guest.config import ConfigError
from aleph_runtime.guest.settings import DEFAULT_MAX_UNPACKED_BYTES

#: Unpacked bytes allowed in one archive when the caller gives no limit (see settings.py).
DEFAULT_MAX_UNPACKED = DEFAULT_MAX_UNPACKED_BYTES
_COPY_CHUNK = 1 << 20


class ArchiveError(ConfigError):
    """The archive is hostile or broken; the message names the entry."""


def _member_path(name: str) -> PurePosixPath:
    """The entry's path relative to dest, or ArchiveError for anything that could escape."""
    if "\x00" in name:
        raise ArchiveError(f"archive entry {name!r} has a NUL byte in its name")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive entry {name!r} has an absolute path")
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive entry {name!r} points outside the archive ('..')")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Extraction:
    """Writes one archive's entries under dest, refusing anything that would leave it."""

    def __init__(self, dest: str | os.PathLike, max_unpacked: int):
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.root = self.dest.resolve()
        self.max_unpacked = max_unpacked
        self.unpacked = 0
        # Links this archive created: later entries must not be written through them.
        self.links: set[PurePosixPath] = set()

    def target(self, relative: PurePosixPath, name: str) -> Path:
        for parent in [relative, *relative.parents]:
            if parent in self.links:
                raise ArchiveError(f"archive entry {name!r} would be written through the link {str(parent)!r}")
        path = self.dest / relative
        # A link that already existed in dest (e.g. a squashfs-mounted tree) must not redirect us either.
        if not str(path.parent.resolve()).startswith(str(self.root)):
            raise ArchiveError(f"archive entry {name!r} resolves outside the destination")
        return path

    def count(self, size: int, name: str) -> None:
        self.unpacked += size
        if self.unpacked > self.max_unpacked:
            raise ArchiveError(
                f"archive unpacks to more than {self.max_unpacked} bytes (stopped at entry {name!r})"
            )

    def directory(self, relative: PurePosixPath, name: str, mode: int | None) -> None:
        path = self.target(relative, name)
        path.mkdir(parents=True, exist_ok=True)
        if mode:
            os.chmod(path, (mode & 0o7777) | 0o700)

    def file(self, relative: PurePosixPath, name: str, source: io.BufferedIOBase, mode: int | None) -> None:
        path = self.target(relative, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_dir():
            raise ArchiveError(f"archive entry {name!r} would replace an existing link or directory")
        with open(path, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                self.count(len(chunk), name)
                out.write(chunk)
        if mode:
            os.chmod(path, mode & 0o777)

    def symlink(self, relative: PurePosixPath, name: str, link_target: str) -> None:
        if link_target.startswith("/") or "\x00" in link_target:
            raise ArchiveError(f"archive link {name!r} points to an absolute path {link_target!r}")
        resolved = PurePosixPath(os.path.normpath(str(relative.parent / link_target)))
        if resolved.parts[:1] == ("..",) or str(resolved) == "..":
            raise ArchiveError(f"archive link {name!r} points outside the archive ({link_target!r})")
        path = self.target(relative, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            raise ArchiveError(f"archive link {name!r} would replace an existing entry")
        os.symlink(link_target, path)
        self.links.add(relative)


def extract_zip(data: bytes, dest: str | os.PathLike, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
    """Unpack a zip held in memory into dest."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as error:
        raise ArchiveError(f"not a valid zip archive: {error}") from None
    extraction = _Extraction(dest, max_unpacked)
    with archive:
        for info in archive.infolist():
            relative = _member_path(info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise ArchiveError(f"archive entry {info.filename!r} is a device, FIFO or socket")
            if info.is_dir() or kind == stat.S_IFDIR:
                extraction.directory(relative, info.filename, mode & 0o7777 if kind else None)
            elif kind == stat.S_IFLNK:
                if info.file_size > 4096:
                    raise ArchiveError(f"archive link {info.filename!r} has an oversized target")
                extraction.symlink(relative, info.filename, archive.read(info).decode("utf-8", "replace"))
            else:
                try:
                    with archive.open(info) as source:
                        extraction.file(relative, info.filename, source, mode & 0o777 if kind else None)
                except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as error:
                    raise ArchiveError(f"archive entry {info.filename!r} cannot be read: {error}") from None


#: Compressions tarfile reads, by their magic bytes.
_TAR_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


def tar_compression(data: bytes) -> str:
    """'gz', 'bz2', 'xz' or '' (uncompressed), from the bytes rather than a name."""
    for magic, name in _TAR_MAGIC:
        if data.startswith(magic):
            return name
    return ""


def extract_tar(data: bytes, dest: str | os.PathLike, max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
    """Unpack a tar (gzip, bzip2, xz or uncompressed, told from its bytes) into dest."""
    compression = tar_compression(data)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode=f"r:{compression}")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"not a valid tar archive: {error}") from None
    extraction = _Extraction(dest, max_unpacked)
    extracted: set[PurePosixPath] = set()
    with archive:
        try:
            for member in archive:
                relative = _member_path(member.name)
                if member.isdir():
                    extraction.directory(relative, member.name, member.mode)
                elif member.isreg():
                    source = archive.extractfile(member)
                    extraction.file(relative, member.name, source, member.mode)
                elif member.issym():
                    extraction.symlink(relative, member.name, member.linkname)
                elif member.islnk():
                    # A hard link: a copy of an entry already extracted from this archive.
                    link_source = _member_path(member.linkname)
                    if link_source not in extracted:
                        raise ArchiveError(
                            f"archive hard link {member.name!r} points to {member.linkname!r}, "
                            "which is not a file of this archive"
                        )
                    with open(extraction.dest / link_source, "rb") as source:
                        extraction.file(relative, member.name, source, member.mode)
                else:
                    raise ArchiveError(f"archive entry {member.name!r} is a device, FIFO or socket")
                extracted.add(relative)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ArchiveError(f"the tar archive is broken: {error}") from None
