"""`--watch`: notice when a file of the program changes, as `uvicorn --reload` does, with the
same library (watchfiles: inotify here, polling where inotify cannot watch the tree).

Waits until the files have been quiet for a moment (an editor's save is several writes;
a `git checkout` many), then reports what changed. Python's caches, version control
directories and editors' swap and backup files are ignored. `snapshot` records the
program's files before it is packed, so an edit made while the machine starts is not missed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

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
#: Above this many files, the rest is not snapshot (a program is not a home directory).
MAX_FILES = 20_000
#: How long the files must be quiet before a burst of edits is reported, and the longest burst.
QUIET_MS = 300
LONGEST_BURST_MS = 1600

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


def _program_filter(path: Path):
    """watchfiles' filter for the program at `path`: its files (or the file itself), not the ignored."""
    from watchfiles import DefaultFilter

    class ProgramFilter(DefaultFilter):
        ignore_dirs = tuple(IGNORED_DIRECTORIES)
        ignore_entity_patterns = (
            r"^\.#",
            r"^4913$",
            *(re.escape(suffix) + "$" for suffix in IGNORED_SUFFIXES),
        )

        def __call__(self, change, changed: str) -> bool:
            if not path.is_dir() and changed != str(path):
                return False  # a single file is watched through its directory (editors replace it)
            return super().__call__(change, changed)

    return ProgramFilter()


def _describe(root: Path, events: set) -> list[str]:
    """watchfiles' (change, path) events of one burst as `name changed|added|removed`, by name."""
    from watchfiles import Change

    kinds: dict[str, set] = {}
    for change, changed in events:
        kinds.setdefault(changed, set()).add(change)
    described = []
    for changed in sorted(kinds):
        name = os.path.relpath(changed, root) if root.is_dir() else Path(changed).name
        seen = kinds[changed]
        if not os.path.lexists(changed):
            if seen != {Change.added}:  # a file made and removed within the burst was never there
                described.append(f"{name} removed")
        elif seen == {Change.added}:
            described.append(f"{name} added")
        else:
            described.append(f"{name} changed")
    return described


async def watch(
    path: Path,
    on_change: Callable[[list[str]], Awaitable[None]],
    initial: Snapshot | None = None,
    force_polling: bool | None = None,
) -> None:
    """Call `on_change(changes)` after each burst of edits under `path`, until cancelled.
    Edits made while `on_change` runs are seen afterwards, not lost; so are those made
    since `initial` was taken (before the code was packed, say)."""
    from watchfiles import awatch

    path = Path(path).resolve()
    directory = path if path.is_dir() else path.parent
    try:
        # yield_on_timeout: the first (empty) answer says the watcher runs: then `initial` is compared.
        async for events in awatch(
            directory, watch_filter=_program_filter(path), debounce=LONGEST_BURST_MS, step=QUIET_MS,
            rust_timeout=QUIET_MS, yield_on_timeout=True, recursive=path.is_dir(), force_polling=force_polling,
        ):  # fmt: skip
            if initial is not None:
                changes = describe_changes(initial, snapshot(path))
                initial = None
            else:
                changes = _describe(path, events)
            if changes:
                await on_change(changes)
    except OSError as error:
        if force_polling:
            raise
        # Too many directories for inotify's watches (fs.inotify.max_user_watches), say.
        log.warning("cannot watch %s with inotify (%s): polling it instead", path, error)
        await watch(path, on_change, initial, force_polling=True)
