"""`--memory` and `--vcpus` as the container's cgroup limits, as a VM's RAM and vCPUs bound it.

One cgroup per container, made below the caller's own (so outer limits still hold):

- cgroup v2 (a unified hierarchy whose root offers `memory` and `cpu`): `memory.max`,
  `memory.swap.max` 0, `cpu.max` "<vcpus x period> <period>"; OOM kills in `memory.events`;
- cgroup v1 (separate `memory` and `cpu` hierarchies, as on this project's CI machine):
  `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, no swap beyond it),
  `cpu.cfs_quota_us`; OOM kills in `memory.oom_control`.

The container's first process joins it before it makes its namespaces (`join`), so the
cgroup namespace's root is this cgroup. A limit that cannot be set (no controller, a
user without a delegated subtree) is not fatal: `missing` says which guarantee is gone
and why, in one sentence, and the container runs without it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CPU_PERIOD_US = 100_000


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, type, options) of every cgroup filesystem."""
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                found.append((fields[1].replace("\\040", " "), fields[2], set(fields[3].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Our cgroup in each hierarchy: {"memory": "/a/b", ..., "": "/x"} (v2 under "")."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


class Limits:
    """The cgroup(s) of one container; `create()` makes them, `remove()` takes them away."""

    def __init__(self, name: str, memory_mb: int | None, vcpus: int | None):
        self.name = name
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.directories: list[Path] = []
        """Every cgroup made, in every hierarchy (joined by the container, removed at the end)."""
        self.missing: list[str] = []
        """One sentence per limit that could not be set."""
        self.version: int | None = None
        self._memory: Path | None = None
        self._oom_before = 0

    def create(self) -> Limits:
        if self.memory_mb is None and self.vcpus is None:
            return self
        mounts = _mounts()
        own = _own_paths()
        unified = next((m for m in mounts if m[1] == "cgroup2"), None)
        if unified is not None and {"memory", "cpu"} & set(
            _read(Path(unified[0]) / "cgroup.controllers").split()
        ):
            self.version = 2
            self._create_v2(Path(unified[0]), own.get("", "/"))
        else:
            self.version = 1
            self._create_v1(mounts, own)
        if self._memory is not None:
            self._oom_before = self.oom_kills()
        return self

    # --- v2 ---

    def _create_v2(self, mount: Path, own: str) -> None:
        parent = mount / own.lstrip("/")
        wanted = [c for c, asked in (("memory", self.memory_mb), ("cpu", self.vcpus)) if asked is not None]
        # Controllers must be enabled in the parent's subtree_control: refused while the
        # parent itself holds processes (a non-root cgroup), unless it is delegated to us.
        enabled = set(_read(parent / "cgroup.subtree_control").split())
        for controller in wanted:
            if controller not in enabled:
                with contextlib.suppress(OSError):
                    (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        _remove_stale(parent)
        directory = parent / self.name
        try:
            directory.mkdir()
        except OSError as error:
            self._lost(wanted, f"cannot make a cgroup in {parent} ({error.strerror})")
            return
        self.directories.append(directory)
        available = set(_read(directory / "cgroup.controllers").split())
        if self.memory_mb is not None:
            if "memory" not in available:
                self._lost(["memory"], f"the memory controller is not enabled in {parent}")
            elif _write(directory / "memory.max", str(self.memory_mb << 20)):
                _write(directory / "memory.swap.max", "0")
                self._memory = directory
            else:
                self._lost(["memory"], f"{directory}/memory.max cannot be written")
        if self.vcpus is not None:
            if "cpu" not in available:
                self._lost(["cpu"], f"the cpu controller is not enabled in {parent}")
            elif not _write(directory / "cpu.max", f"{self.vcpus * CPU_PERIOD_US} {CPU_PERIOD_US}"):
                self._lost(["cpu"], f"{directory}/cpu.max cannot be written")

    # --- v1 ---

    def _create_v1(self, mounts: list[tuple[str, str, set[str]]], own: dict[str, str]) -> None:
        def hierarchy(controller: str) -> Path | None:
            for point, kind, options in mounts:
                if kind == "cgroup" and controller in options:
                    return Path(point) / own.get(controller, "/").lstrip("/")
            return None

        if self.memory_mb is not None:
            parent = hierarchy("memory")
            directory = self._make(parent, "memory")
            if directory is not None:
                limit = str(self.memory_mb << 20)
                if _write(directory / "memory.limit_in_bytes", limit):
                    # Without swap accounting the file is absent: nothing to swap beyond.
                    if (directory / "memory.memsw.limit_in_bytes").exists():
                        _write(directory / "memory.memsw.limit_in_bytes", limit)
                    self._memory = directory
                else:
                    self._lost(["memory"], f"{directory}/memory.limit_in_bytes cannot be written")
        if self.vcpus is not None:
            parent = hierarchy("cpu")
            directory = self._make(parent, "cpu")
            if directory is not None and not (
                _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                and _write(directory / "cpu.cfs_quota_us", str(self.vcpus * CPU_PERIOD_US))
            ):
                self._lost(["cpu"], f"{directory}/cpu.cfs_quota_us cannot be written")

    def _make(self, parent: Path | None, controller: str) -> Path | None:
        if parent is None:
            self._lost([controller], f"no cgroup hierarchy has the {controller} controller")
            return None
        _remove_stale(parent)
        directory = parent / self.name
        try:
            directory.mkdir()
        except OSError as error:
            self._lost([controller], f"cannot make a cgroup in {parent} ({error.strerror})")
            return None
        self.directories.append(directory)
        return directory

    # --- common ---

    def _lost(self, controllers: list[str], why: str) -> None:
        what = {"memory": f"--memory {self.memory_mb} MiB", "cpu": f"--vcpus {self.vcpus}"}
        limits = " and ".join(what[c] for c in controllers)
        fix = (
            "run as root, or delegate a cgroup v2 subtree to this user"
            if os.geteuid()
            else "check the kernel's cgroup controllers"
        )
        self.missing.append(f"{limits} not enforced: {why} ({fix})")

    @property
    def procs_files(self) -> list[Path]:
        """What the container's first process writes its PID into, to join."""
        return [directory / "cgroup.procs" for directory in self.directories]

    def join(self, pid: int | None = None) -> None:
        """Move `pid` (default: the calling process) into every cgroup made."""
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                procs.write_text(str(pid or os.getpid()))

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in the container so far."""
        if self._memory is None:
            return 0
        for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            for line in _read(self._memory / name).splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[0] == key:
                    return int(fields[1]) - self._oom_before
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroups once their processes are gone (the kernel ends them shortly
        after the namespace's PID 1)."""
        deadline = time.monotonic() + timeout
        for directory in reversed(self.directories):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        self.directories = []


def _remove_stale(parent: Path) -> None:
    """The empty cgroups of containers whose command is gone (killed outright, say): named
    `aleph-dev-<pid>-...` by spawn.py, and removable only once empty."""
    for directory in parent.glob("aleph-dev-*"):
        fields = directory.name.split("-")
        if len(fields) > 2 and fields[2].isdigit() and not Path(f"/proc/{fields[2]}").exists():
            with contextlib.suppress(OSError):
                directory.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True
