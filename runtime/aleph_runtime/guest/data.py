"""The program's /data: `input_data` unpacked into it before the program starts, and
its zip returned as `output_data` after each call when it is not empty.

Zipping is the expensive part, so DataExport keeps a change marker: a walk of
(path, type, size, mtime_ns, ctime_ns, inode) for every entry, which costs one stat per
file. When the marker matches the previous call's, the previous zip is returned as is.
Directory mtimes alone would miss a file rewritten in place, hence the full walk.
Timestamps come from the kernel's coarse clock (one tick, up to 10 ms): an entry
changed within the last `RACY_WINDOW_NS` may change again with the same size and
timestamps, so a marker seen with such an entry is not trusted next time (git's "racy
clean" rule).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
import threading
import time

from aleph_runtime.guest.settings import DEFAULT_MAX_UNPACKED_BYTES

logger = logging.getLogger(__name__)

RACY_WINDOW_NS = 50_000_000


def unpack_input_data(
    data: bytes, data_dir: str = "/data", max_unpacked: int = DEFAULT_MAX_UNPACKED_BYTES
) -> None:
    """Extract the input_data zip into data_dir, refusing anything that would escape it.

    Raises ArchiveError (a ConfigError) for a hostile or broken archive.
    """
    from aleph_runtime.guest.archive import extract_zip

    os.makedirs(data_dir, exist_ok=True)
    extract_zip(data, data_dir, max_unpacked)
    logger.info("input data unpacked into %s", data_dir)


class DataExport:
    """`collect()` after each call: a zip of data_dir, or None when it is missing or empty."""

    def __init__(self, data_dir: str = "/data"):
        self.data_dir = data_dir
        self._marker: tuple | None = None
        self._zip: bytes | None = None
        self._lock = threading.Lock()
        self.zips_made = 0

    def is_empty(self) -> bool:
        """True when data_dir is missing or empty, the common case: checked after every call."""
        # A missing /data answers without an exception: scandir's FileNotFoundError (its
        # message formatted, its traceback built) cost more than the access(2) call.
        if not os.access(self.data_dir, os.F_OK):
            return True
        try:
            with os.scandir(self.data_dir) as entries:
                return next(entries, None) is None
        except (FileNotFoundError, NotADirectoryError):
            return True

    async def acollect(self) -> bytes | None:
        """collect() without blocking the event loop: an empty /data is answered inline,
        the walk and the zip (seconds for a large /data) run in a worker thread."""
        if self.is_empty():
            self._marker = self._zip = None
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self.collect)

    def collect(self) -> bytes | None:
        """The zip of data_dir, or None when it is missing or empty. Thread-safe."""
        with self._lock:
            return self._collect()

    def _collect(self) -> bytes | None:
        if self.is_empty():
            self._marker = self._zip = None
            return None
        started = time.time_ns()
        entries_seen: list[tuple] = []
        racy = self._walk(self.data_dir, "", entries_seen, started - RACY_WINDOW_NS)
        marker = tuple(entries_seen)
        if self._marker is not None and marker == self._marker and self._zip is not None:
            return self._zip
        self._zip = self._make_zip(entries_seen)
        self.zips_made += 1
        # A racy marker is kept out of the cache: the next call zips again.
        self._marker = None if racy else marker
        return self._zip

    def _walk(self, directory: str, prefix: str, out: list[tuple], racy_after: int) -> bool:
        racy = False
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as error:
            logger.warning("cannot list %s: %s", directory, error.strerror)
            return True
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # a dangling symlink, or removed under our feet
            relative = prefix + entry.name
            out.append(
                (relative, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
            )
            if info.st_mtime_ns >= racy_after or info.st_ctime_ns >= racy_after:
                racy = True
            if stat.S_ISDIR(info.st_mode) and not entry.is_symlink():
                racy |= self._walk(entry.path, relative + "/", out, racy_after)
        return racy

    def _make_zip(self, entries: list[tuple]) -> bytes:
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            for relative, mode, *_ in entries:
                path = os.path.join(self.data_dir, relative)
                try:
                    if stat.S_ISDIR(mode):
                        archive.write(path, relative + "/")
                    elif stat.S_ISREG(mode):
                        archive.write(path, relative)
                except OSError as error:
                    logger.warning("cannot add %s to the data export: %s", path, error.strerror)
        return buffer.getvalue()
