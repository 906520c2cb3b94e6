"""Safe extraction of the program's zip and tar archives, with Python's own modules.

A program's code and its input data come from whoever published the message, so an
archive is hostile until proven otherwise. Archives as people make them are accepted
(`tar -C dir -czf code.tar.gz .` writes `./` and `./main.py`); everything that could
reach outside the destination is refused, judged as the kernel resolves paths rather
than lexically:

- entries are written by walking from a descriptor of the destination, one component
  at a time with O_NOFOLLOW, so no symlink (the archive's own or one already there,
  e.g. a volume) is ever followed, and modes are set with fchmod on what was opened;
- a symlink the archive creates must resolve (realpath, chains included) inside the
  destination, checked when it is made and again once every entry is out;
- a hard link may only name a regular file this archive extracted;
- absolute paths, `..`, devices, FIFOs and sockets are refused.

Bombs are bounded by what the machine has: the bytes written (rounded up to the
filesystem's blocks) stay under its free space less a margin, and the entry count under
both a limit and its free inodes. Declared sizes are checked before anything is written
(a zip's total, each tar entry's), a zip's entries are counted before zipfile parses its
central directory, and the tar headers tarfile reads whole inside next() (extended
headers, long names) are bounded before it reads them and counted against the byte
limit. Sparse tar members are refused as their header is read: tarfile would read their
map whole, and a few KB of gzip make hundreds of MB of it. On any failure, what the
extraction created is removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import lzma
import os
import shutil
import stat
import struct
import zipfile
import zlib

from aleph_runtime.guest.config import ConfigError
from aleph_runtime.guest.settings import DEFAULT_MAX_UNPACKED_BYTES

#: Unpacked bytes allowed in one archive when the caller gives no limit (the init passes
#: its setting, see settings.py); the target filesystem's free space decides when smaller.
DEFAULT_MAX_UNPACKED = DEFAULT_MAX_UNPACKED_BYTES
#: Entries allowed in one archive (fewer when the target filesystem has fewer free inodes):
#: each costs PID 1 memory and the kernel an inode, and extraction time grows with them.
MAX_ARCHIVE_ENTRIES = 100_000
#: Share of the free space an archive may not take: the program needs room to run.
FREE_SPACE_MARGIN_DIVISOR = 16
#: The most header bytes tarfile may read whole for one entry (extended headers, GNU
#: long names), and for the archive's global headers, refused before it reads them: a
#: path is at most 4 KiB, and a compressed header can expand to GiBs. tarfile parses
#: them into a dict of about 25 bytes per byte in the worst case (distinct keys).
MAX_TAR_HEADER_BYTES = 256 << 10
MAX_LINK_TARGET_BYTES = 4096
#: The kernel's PATH_MAX; deeper nesting than this also keeps the walk and the cleanup cheap.
MAX_NAME_BYTES = 4096
MAX_DEPTH = 256
_COPY_CHUNK = 1 << 20


class ArchiveError(ConfigError):
    """The archive is hostile or broken; the message names the entry."""


#: What reading a broken archive raises, from zipfile and the decompressors (bz2 raises
#: OSError, so a read's OSError is not a write's); tar adds tarfile.TarError (_tar()).
_READ_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)


def _read(source: io.BufferedIOBase, name: str, size: int = -1) -> bytes:
    try:
        return source.read(size)
    except _READ_ERRORS as error:
        raise ArchiveError(f"archive entry {name!r} cannot be read: {error}") from None


def _member_parts(name: str) -> tuple[str, ...]:
    """The entry's path components under dest (`.` and `./x` normalised; () for the
    destination itself), or ArchiveError for anything that could escape."""
    if not name:
        raise ArchiveError("archive has an entry without a name")
    if "\x00" in name:
        raise ArchiveError(f"archive entry {name!r} has a NUL byte in its name")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive entry {name!r} has an absolute path")
    parts = tuple(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"archive entry {name!r} points outside the archive ('..')")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ArchiveError(f"archive entry {name[:64]!r}... has a name longer than {MAX_NAME_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"archive entry {name[:64]!r}... is nested more than {MAX_DEPTH} directories deep")
    return parts


def _show(parts: tuple[str, ...]) -> str:
    return "/".join(parts) or "."


class _Extraction:
    """Writes one archive's entries under dest without following any symlink.

    Use as a context manager: on an exception, what this extraction created is removed.
    """

    def __init__(self, dest: str | os.PathLike, max_unpacked: int | None, max_entries: int):
        os.makedirs(dest, exist_ok=True)
        # dest itself is the init's choice, so it may be reached through a link; nothing under it may.
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root_real = os.path.realpath(dest)
        space = os.fstatvfs(self.root_fd)
        self.block = max(space.f_frsize, 512)
        free = space.f_bavail * space.f_frsize
        self.max_unpacked = free - free // FREE_SPACE_MARGIN_DIVISOR
        self.limit_reason = "the target filesystem's free space less a margin"
        if max_unpacked is not None and max_unpacked < self.max_unpacked:
            self.max_unpacked, self.limit_reason = max_unpacked, "the limit"
        self.max_entries = max_entries
        self.entries_reason = "the limit"
        # Filesystems without an inode count (f_files == 0) report nothing to bound.
        if space.f_files and space.f_favail < self.max_entries:
            self.max_entries, self.entries_reason = space.f_favail, "the target filesystem's free inodes"
        self.unpacked = 0
        self.entries = 0
        # Regular files this archive wrote: the only ones a hard link may name.
        self.files: set[tuple[str, ...]] = set()
        self.links: list[tuple[str, ...]] = []
        # Cleanup on failure: the roots of what was created, inside directories that were already there.
        self.created_dirs: set[tuple[str, ...]] = set()
        self.created: list[tuple[str, ...]] = []
        self._cached: tuple[tuple[str, ...], int] | None = None

    # --- bookkeeping ---

    def __enter__(self) -> _Extraction:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is not None:
                self._remove_created()
        finally:
            self._drop_cache()
            os.close(self.root_fd)

    def entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(
                f"archive has more than {self.max_entries} entries, {self.entries_reason} (stopped at entry {name!r})"
            )

    def count(self, size: int, name: str) -> None:
        # What the filesystem spends, not the content's length: 100,000 one-byte files take 400 MB
        # (directories and links, a few hundred bytes of kernel memory each, are bounded by the count).
        self.count_exact(-(-size // self.block) * self.block, name)

    def count_exact(self, size: int, name: str) -> None:
        """Count `size` bytes as they are (a tar header's, which costs memory, not blocks)."""
        self.unpacked += size
        if self.unpacked > self.max_unpacked:
            raise ArchiveError(
                f"archive unpacks to more than {self.max_unpacked} bytes, {self.limit_reason} "
                f"(stopped at entry {name!r})"
            )

    def room_for(self, size: int, name: str) -> None:
        """Refuse an entry whose declared size does not fit, before a byte of it is written
        (the stream is still counted: a declared size is only what tarfile and zipfile stop at)."""
        if self.unpacked + -(-size // self.block) * self.block > self.max_unpacked:
            raise ArchiveError(
                f"archive unpacks to more than {self.max_unpacked} bytes, {self.limit_reason} "
                f"(stopped at entry {name!r}, {size} bytes)"
            )

    def _record(self, parts: tuple[str, ...]) -> None:
        if parts[:-1] not in self.created_dirs:
            self.created.append(parts)

    def _remove_created(self) -> None:
        self._drop_cache()
        for parts in reversed(self.created):
            with contextlib.suppress(OSError, ArchiveError):
                parent = self._open_dir(parts[:-1], parts[:-1], create=False)
                try:
                    info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        shutil.rmtree(parts[-1], dir_fd=parent)
                    else:
                        os.unlink(parts[-1], dir_fd=parent)
                finally:
                    os.close(parent)

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    # --- walking without following links ---

    def _open_dir(self, parts: tuple[str, ...], name: object, create: bool = True) -> int:
        """A new descriptor of dest/parts, each component opened with O_NOFOLLOW (and
        made when missing and `create`); ArchiveError when one is a link or not a directory."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._record(parts[:depth])
                    self.created_dirs.add(parts[:depth])
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as error:
                    if error.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = (
                            "link" if os.path.islink(os.path.join(self.root_real, *parts[:depth])) else "file"
                        )
                        raise ArchiveError(
                            f"archive entry {name!r} would be written through the {kind} {_show(parts[:depth])!r}"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent(self, parts: tuple[str, ...], name: str) -> int:
        """A descriptor of the entry's parent directory, owned by the extraction (do not close)."""
        wanted = parts[:-1]
        if self._cached is not None and self._cached[0] == wanted:
            return self._cached[1]
        fd = self._open_dir(wanted, name)
        self._drop_cache()
        self._cached = (wanted, fd)
        return fd

    def _make_room(self, parent: int, parts: tuple[str, ...], name: str) -> None:
        """Remove a regular file or link the entry replaces (tar appends updates); refuse
        to replace a directory or anything else that is there."""
        try:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise ArchiveError(f"archive entry {name!r} would replace a directory")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            raise ArchiveError(f"archive entry {name!r} would replace a device, FIFO or socket")
        os.unlink(parts[-1], dir_fd=parent)
        self.files.discard(parts)

    # --- entries ---

    def directory(self, parts: tuple[str, ...], name: str, mode: int | None) -> None:
        if not parts:
            return  # `./`: the destination is the init's, its mode stays
        parent = self.parent(parts, name)
        existed = True
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            existed = False
        except FileExistsError:
            pass
        if not existed:
            self._record(parts)
            self.created_dirs.add(parts)
        fd = self._open_dir(parts, name)
        try:
            if mode is not None or not existed:
                # Owner keeps full access (the init must write into it); setuid/setgid never come from an archive.
                os.fchmod(fd, ((mode if mode is not None else 0o755) & 0o1777) | 0o700)
        finally:
            os.close(fd)

    def file(self, parts: tuple[str, ...], name: str, source: io.BufferedIOBase, mode: int | None) -> None:
        if not parts:
            raise ArchiveError(f"archive entry {name!r} is a file without a name")
        parent = self.parent(parts, name)
        self._make_room(parent, parts, name)
        fd = os.open(
            parts[-1],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=parent,
        )
        self._record(parts)
        with open(fd, "wb", closefd=True) as out:
            while chunk := _read(source, name, _COPY_CHUNK):
                self.count(len(chunk), name)
                out.write(chunk)
            os.fchmod(out.fileno(), (mode if mode is not None else 0o644) & 0o777)
        self.files.add(parts)

    def symlink(self, parts: tuple[str, ...], name: str, link_target: str) -> None:
        if not parts:
            raise ArchiveError(f"archive link {name!r} has no name")
        if not link_target or link_target.startswith("/") or "\x00" in link_target:
            raise ArchiveError(f"archive link {name!r} points to an absolute or empty path {link_target!r}")
        if len(link_target.encode("utf-8", "surrogateescape")) > MAX_LINK_TARGET_BYTES:
            raise ArchiveError(f"archive link {name!r} has an oversized target")
        lexical = os.path.normpath(os.path.join(*parts[:-1], link_target) if parts[:-1] else link_target)
        if lexical == ".." or lexical.startswith("../"):
            raise ArchiveError(f"archive link {name!r} points outside the archive ({link_target!r})")
        parent = self.parent(parts, name)
        self._make_room(parent, parts, name)
        os.symlink(link_target, parts[-1], dir_fd=parent)
        self._record(parts)
        self.links.append(parts)
        self._check_link(parts, name)

    def hard_link(self, parts: tuple[str, ...], name: str, source_name: str) -> None:
        """A hard link to a regular file this archive wrote; never to a link or anything else."""
        source = _member_parts(source_name)
        if source not in self.files:
            raise ArchiveError(
                f"archive hard link {name!r} points to {source_name!r}, which is not a file of this archive"
            )
        if not parts:
            raise ArchiveError(f"archive hard link {name!r} has no name")
        if source == parts:
            raise ArchiveError(f"archive hard link {name!r} points to itself")
        source_parent = self._open_dir(source[:-1], name, create=False)
        try:
            parent = self.parent(parts, name)
            self._make_room(parent, parts, name)
            os.link(source[-1], parts[-1], src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
            self._record(parts)
            self.files.add(parts)
        finally:
            os.close(source_parent)

    def _check_link(self, parts: tuple[str, ...], name: str) -> None:
        """The link as the kernel resolves it (a chain of the archive's links included) stays inside."""
        resolved = os.path.realpath(os.path.join(self.root_real, *parts))
        if resolved != self.root_real and not resolved.startswith(self.root_real.rstrip("/") + "/"):
            raise ArchiveError(f"archive link {name!r} resolves outside the destination")

    def finish(self) -> None:
        """Links made early can resolve elsewhere once later ones exist: check them all again."""
        for parts in self.links:
            self._check_link(parts, _show(parts))


def _errors_named(name: str, error: OSError) -> ArchiveError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArchiveError(f"no space left on the target filesystem (stopped at entry {name!r})")
    return ArchiveError(f"archive entry {name!r} cannot be written: {error.strerror or error}")


# --- zip ---

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


_CENTRAL_HEADER = struct.Struct("<4s24x3H12x")


def zip_entry_count(data: bytes, limit: int) -> int | None:
    """How many entries a zip has, at least: the larger of the count its end record
    declares (zip64's when present) and the central directory headers walked (at most
    limit + 1), as zipfile will walk them. Read before zipfile parses that directory
    into hundreds of bytes per entry; a lying end record does not hide millions of them.
    None when there is no end record."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if end < 0 or end + _EOCD.size > len(data):
        return None
    _, _, _, _, count, directory_size, _, _ = _EOCD.unpack_from(data, end)
    directory_end = end
    # As zipfile: a zip64 end record sits right before its locator, right before the end record.
    record_at = end - _EOCD64_LOCATOR.size - _EOCD64.size
    if (
        record_at >= 0
        and data[end - _EOCD64_LOCATOR.size : end - 16] == b"PK\x06\x07"
        and data[record_at : record_at + 4] == b"PK\x06\x06"
    ):
        fields = _EOCD64.unpack_from(data, record_at)
        count, directory_size, directory_end = max(count, fields[7]), fields[8], record_at
    position, walked = max(0, directory_end - directory_size), 0
    while walked <= limit and position + _CENTRAL_HEADER.size <= directory_end:
        signature, name, extra, comment = _CENTRAL_HEADER.unpack_from(data, position)
        if signature != b"PK\x01\x02":
            break
        position += _CENTRAL_HEADER.size + name + extra + comment
        walked += 1
    return max(count, walked)


def extract_zip(
    data: bytes,
    dest: str | os.PathLike,
    max_unpacked: int | None = DEFAULT_MAX_UNPACKED,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> None:
    """Unpack a zip held in memory into dest."""
    counted = zip_entry_count(data, max_entries)
    if counted is not None and counted > max_entries:
        raise ArchiveError(f"archive has more than {max_entries} entries, the limit ({counted} counted)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _READ_ERRORS as error:
        raise ArchiveError(f"not a valid zip archive: {error}") from None
    with archive, _Extraction(dest, max_unpacked, max_entries) as extraction:
        infos = archive.infolist()
        if len(infos) > extraction.max_entries:
            raise ArchiveError(
                f"archive has more than {extraction.max_entries} entries, {extraction.entries_reason}"
            )
        declared_bytes = sum(info.file_size for info in infos)
        if declared_bytes > extraction.max_unpacked:
            # zipfile reads no more than the declared sizes: a bomb is refused before a byte is written.
            raise ArchiveError(
                f"archive unpacks to more than {extraction.max_unpacked} bytes, {extraction.limit_reason} "
                f"({declared_bytes} declared)"
            )
        for info in infos:
            name = info.filename
            extraction.entry(name)
            parts = _member_parts(name)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise ArchiveError(f"archive entry {name!r} is a device, FIFO or socket")
            try:
                if info.is_dir() or kind == stat.S_IFDIR:
                    extraction.directory(parts, name, mode & 0o7777 if kind else None)
                elif kind == stat.S_IFLNK:
                    if info.file_size > MAX_LINK_TARGET_BYTES:
                        raise ArchiveError(f"archive link {name!r} has an oversized target")
                    with archive.open(info) as source:
                        link_target = _read(source, name, MAX_LINK_TARGET_BYTES + 1)
                    extraction.symlink(parts, name, link_target.decode("utf-8", "replace"))
                else:
                    with archive.open(info) as source:
                        extraction.file(parts, name, source, mode & 0o777 if kind else None)
            except ArchiveError:
                raise
            except OSError as error:  # reads raise ArchiveError (see _read): this is a write's
                raise _errors_named(name, error) from None
            except _READ_ERRORS as error:  # opening the entry: its header, its compression
                raise ArchiveError(f"archive entry {name!r} cannot be read: {error}") from None
        extraction.finish()


# --- tar ---

#: Compressions tarfile reads, by their magic bytes.
_TAR_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_TAR_BLOCK = 512
#: tarfile's XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE, GNUTYPE_LONGNAME and GNUTYPE_LONGLINK.
_HEADERS_READ_WHOLE = (b"x", b"g", b"X", b"L", b"K")
_GLOBAL_HEADER = b"g"
#: tarfile's GNUTYPE_SPARSE: the old GNU sparse format, its map in extension blocks.
_OLD_GNU_SPARSE = b"S"
#: Headers before one entry: a long name, a long link and a pax header are three.
MAX_TAR_HEADERS_PER_ENTRY = 16


class _TarHeaderBudget:
    """What one archive's headers may cost PID 1 while tarfile parses them.

    tarfile reads an extended header or a GNU long name whole, then the next header,
    recursively, before next() returns: the headers before one entry are held at once
    (bounded together), global headers are kept for the whole archive (bounded
    together), and every one of them is counted against the extraction's byte limit.
    """

    def __init__(self, extraction: _Extraction):
        self.extraction = extraction
        self.chain_bytes = 0
        self.chain_headers = 0
        self.global_bytes = 0

    def header(self, size: int, kind: bytes, offset: int) -> None:
        cost = _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK
        self.chain_bytes += cost
        self.chain_headers += 1
        if kind == _GLOBAL_HEADER:
            self.global_bytes += cost
        if self.chain_headers > MAX_TAR_HEADERS_PER_ENTRY:
            raise ArchiveError(
                f"archive has more than {MAX_TAR_HEADERS_PER_ENTRY} headers before one entry (at byte {offset})"
            )
        if self.chain_bytes > MAX_TAR_HEADER_BYTES or self.global_bytes > MAX_TAR_HEADER_BYTES:
            raise ArchiveError(
                f"archive has more than {MAX_TAR_HEADER_BYTES} bytes of extended headers "
                f"{'in global headers' if self.global_bytes > MAX_TAR_HEADER_BYTES else 'before one entry'} "
                f"(at byte {offset})"
            )
        self.extraction.count_exact(cost, f"(the header at byte {offset})")

    def entry(self) -> None:
        self.chain_bytes = self.chain_headers = 0


def _sparse_refused(name: object) -> ArchiveError:
    return ArchiveError(f"archive entry {name!r} is a sparse file (a GNU tar format), which is not supported")


def _sparse_name(member, arguments: tuple) -> object:
    """The name a sparse member's pax headers give it, else its header's."""
    for argument in arguments:
        if isinstance(argument, dict) and "GNU.sparse.name" in argument:
            return argument["GNU.sparse.name"]
    return member.name


@functools.cache
def _tar():
    """tarfile, a TarInfo that bounds what tarfile reads whole, and the read errors with tar's.

    Imported by the first tar to unpack, not at boot: most programs come as zip or
    squashfs, and PID 1 keeps what it imports (tarfile: 0.3 MB, and its import time).
    """
    import tarfile

    class BoundedTarInfo(tarfile.TarInfo):
        """Checks every header as tarfile has parsed its 512 bytes, before it reads what
        follows: an extended header or a long name is bounded (`budget`, set by each
        extraction on its own subclass), a sparse file's map is never read.

        A sparse map is refused rather than bounded: tarfile reads the old format's
        extension blocks and version 1.0's map whole inside next(), a few KB of gzip
        expanding to hundreds of MB of tuples, and sparse members (`tar --sparse`) are
        disk images, not code.
        """

        budget: _TarHeaderBudget

        def _proc_member(self, tarfile_):
            if self.size < 0:
                # A base-256 size field can be negative: tarfile would read the rest of
                # the stream, or step back onto this header for ever.
                raise ArchiveError(f"archive entry {self.name!r} has a negative size (at byte {self.offset})")
            if self.type == _OLD_GNU_SPARSE:
                raise _sparse_refused(self.name)
            if self.type in _HEADERS_READ_WHOLE:
                self.budget.header(self.size, self.type, self.offset)
            else:
                self.budget.entry()
            return super()._proc_member(tarfile_)

        # tarfile calls these on the pax header that announces a sparse file, before
        # version 1.0's map (in the member's data) is read; their other arguments differ
        # between Python releases.
        def _proc_gnusparse_00(self, next_, *arguments):
            raise _sparse_refused(_sparse_name(next_, arguments))

        def _proc_gnusparse_01(self, next_, *arguments):
            raise _sparse_refused(_sparse_name(next_, arguments))

        def _proc_gnusparse_10(self, next_, *arguments):
            raise _sparse_refused(_sparse_name(next_, arguments))

        def _apply_pax_info(self, pax_headers, encoding, errors):
            # Any GNU.sparse key (in an extended or a global header) announces one, even
            # when its version is one tarfile does not handle.
            if any(key.startswith("GNU.sparse.") for key in pax_headers):
                raise _sparse_refused(pax_headers.get("GNU.sparse.name", self.name))
            super()._apply_pax_info(pax_headers, encoding, errors)
            if self.size < 0:  # a pax `size` record, read after _proc_member's check
                raise ArchiveError(f"archive entry {self.name!r} has a negative size")

    return tarfile, BoundedTarInfo, (tarfile.TarError, *_READ_ERRORS)


def tar_compression(data: bytes) -> str:
    """'gz', 'bz2', 'xz' or '' (uncompressed), from the bytes rather than a name."""
    for magic, name in _TAR_MAGIC:
        if data.startswith(magic):
            return name
    return ""


def extract_tar(
    data: bytes,
    dest: str | os.PathLike,
    max_unpacked: int | None = DEFAULT_MAX_UNPACKED,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> None:
    """Unpack a tar (gzip, bzip2, xz or uncompressed, told from its bytes) into dest."""
    compression = tar_compression(data)
    tarfile, bounded_tarinfo, read_errors = _tar()
    with _Extraction(dest, max_unpacked, max_entries) as extraction:
        # Its own subclass, so its own budget: tarfile.open() already parses the first entry.
        tarinfo = type("ArchiveTarInfo", (bounded_tarinfo,), {"budget": _TarHeaderBudget(extraction)})
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode=f"r:{compression}", tarinfo=tarinfo)
        except ArchiveError:
            raise  # a ValueError, as read errors are: BoundedTarInfo's refusal of the first entry
        except read_errors as error:
            raise ArchiveError(f"not a valid tar archive: {error}") from None
        with archive:
            _extract_tar_members(archive, extraction, read_errors)


def _extract_tar_members(archive, extraction: _Extraction, read_errors: tuple[type[Exception], ...]) -> None:
    name = "(the first entry)"
    while True:
        try:
            member = archive.next()
        except ArchiveError:
            raise  # BoundedTarInfo's refusal, which names what it refused
        except read_errors as error:
            raise ArchiveError(f"the tar archive is broken after entry {name!r}: {error}") from None
        if member is None:
            break
        # tarfile keeps every member it read; 100,000 of them are 100 MB of PID 1's memory.
        archive.members.clear()
        name = member.name
        extraction.entry(name)
        parts = _member_parts(name)
        if member.sparse is not None:  # refused as its header was read (BoundedTarInfo): never reached
            raise _sparse_refused(name)
        try:
            if member.isdir():
                extraction.directory(parts, name, member.mode)
            elif member.isreg():
                extraction.room_for(member.size, name)
                source = archive.extractfile(member)
                extraction.file(parts, name, source, member.mode)
            elif member.issym():
                extraction.symlink(parts, name, member.linkname)
            elif member.islnk():
                extraction.hard_link(parts, name, member.linkname)
            else:
                raise ArchiveError(f"archive entry {name!r} is a device, FIFO or socket")
        except ArchiveError:
            raise
        except OSError as error:  # reads raise ArchiveError (see _read): this is a write's
            raise _errors_named(name, error) from None
        except read_errors as error:
            raise ArchiveError(f"the tar archive is broken at entry {name!r}: {error}") from None
    extraction.finish()
