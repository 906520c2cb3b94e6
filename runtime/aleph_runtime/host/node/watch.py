"""`--watch`: notice when a file of the program changes, as `uvicorn --reload` does.

Polls modification times (no inotify: it works the same on every filesystem, and a
program is small), waits until the files have been quiet for a moment (an editor's
save is several writes; a `git checkout` many), then reports what changed. Python's
caches, version control directories and editors' swap and backup files are ignored.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

IGNORED_DIRECTORIES = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".venv",
        ".idea",
        ".vscode",
    }
)
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swo", ".swx", ".swpx", "~", ".tmp", ".kate-swp")
#: Above this many files, the rest is not watched (a program is not a home directory).
MAX_FILES = 20_000

Snapshot = dict[str, tuple[int, int]]


def ignored(name: str) -> bool:
    # vim writes "4913" to test a directory; emacs locks with ".#name"; many editors "name~".
    return name.endswith(IGNORED_SUFFIXES) or name.startswith(".#") or name == "4913"


def snapshot(path: Path, limit: int = MAX_FILES) -> Snapshot:
    """Relative path -> (mtime_ns, size) for the files under `path` (or `path` itself)."""
    files: Snapshot = {}
    try:
        info = path.stat()
    except OSError:
        return files
    if not path.is_dir():
        return {path.name: (info.st_mtime_ns, info.st_size)}
    pending = [path]
    while pending and len(files) < limit:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in IGNORED_DIRECTORIES:
                        pending.append(Path(entry.path))
                    continue
                stat = entry.stat()
            except OSError:
                continue
            files[os.path.relpath(entry.path, path)] = (stat.st_mtime_ns, stat.st_size)
            if len(files) >= limit:
                break
    return files


def describe_changes(before: Snapshot, after: Snapshot) -> list[str]:
    changes = [
        f"{name} changed" for name in sorted(after.keys() & before.keys()) if after[name] != before[name]
    ]
    changes += [f"{name} added" for name in sorted(after.keys() - before.keys())]
    changes += [f"{name} removed" for name in sorted(before.keys() - after.keys())]
    return changes


async def watch(
    path: Path,
    on_change: Callable[[list[str]], Awaitable[None]],
    interval: float = 0.25,
    quiet_for: float = 0.3,
    initial: Snapshot | None = None,
) -> None:
    """Call `on_change(changes)` after each burst of edits under `path`, until cancelled.
    Edits made while `on_change` runs are seen afterwards, not lost; so are those made
    since `initial` was taken (before the code was packed, say)."""
    current = initial if initial is not None else await asyncio.to_thread(snapshot, path)
    while True:
        await asyncio.sleep(interval)
        latest = await asyncio.to_thread(snapshot, path)
        if latest == current:
            continue
        # Debounce: wait until nothing has moved for `quiet_for`.
        while True:
            await asyncio.sleep(quiet_for)
            settled = await asyncio.to_thread(snapshot, path)
            if settled == latest:
                break
            latest = settled
        changes = describe_changes(current, latest)
        current = latest
        if changes:
            await on_change(changes)
