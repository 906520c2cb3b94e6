"""Thin ctypes wrappers around the libc calls PID 1 needs: mount, umount, reboot,
sethostname, sync, prctl. Each raises OSError with the call's errno on failure. Also the
links a devtmpfs lacks, and PID 1's orphan reaper with the record of the children this
process created, which the reaper must leave to their creator.

ctypes is imported and libc loaded on first use, so importing this module costs next
to nothing: the init's start (no volumes) never needs either (sethostname is the socket
module's).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

# mount(2) flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

# umount2(2) flags
MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

# reboot(2) commands (linux/reboot.h). RB_AUTOBOOT restarts: Firecracker has no power
# management and exits on it (so does `qemu -no-reboot`), which is how a VM halts.
RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC
RB_ENABLE_CAD = 0x89ABCDEF
RB_DISABLE_CAD = 0

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        import ctypes

        # The interpreter is linked against libc: its own symbols are libc's.
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = (
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        )
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
        lib.umount2.restype = ctypes.c_int
        lib.reboot.argtypes = (ctypes.c_int,)
        lib.reboot.restype = ctypes.c_int
        lib.sync.argtypes = ()
        lib.sync.restype = None
        _libc = lib
    return _libc


def _check(result: int, what: str, *paths: object) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}", *[os.fsdecode(p) for p in paths[:1]])


def _bytes(value: str | bytes | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | bytes | os.PathLike | None,
    target: str | bytes | os.PathLike,
    fstype: str | bytes | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2). `data` is the filesystem's option string (e.g. "mode=0755")."""
    data_bytes = _bytes(data)
    result = libc().mount(_bytes(source), _bytes(target), _bytes(fstype), flags, data_bytes)
    _check(result, f"mount {os.fsdecode(source) if source is not None else 'none'} ({fstype})", target)


def umount(target: str | bytes | os.PathLike, flags: int = 0) -> None:
    """umount2(2)."""
    _check(libc().umount2(_bytes(target), flags), "umount", target)


def reboot(cmd: int) -> None:
    """reboot(2), e.g. reboot(RB_AUTOBOOT). Returns only on failure (raises OSError)."""
    # ctypes wants a signed int: the magic numbers above 2**31 are negative in C.
    signed = cmd & 0xFFFFFFFF
    signed = signed - (1 << 32) if signed >= 1 << 31 else signed
    _check(libc().reboot(signed), "reboot")


def sethostname(name: str | bytes) -> None:
    try:
        socket.sethostname(name)
    except OSError as error:
        raise OSError(error.errno, f"sethostname: {os.strerror(error.errno)}") from None


def sync() -> None:
    libc().sync()


#: What udev would add to a devtmpfs, and programs expect: bash's process substitution
#: opens /dev/fd/N, programs log to /dev/stdout. Made here rather than copied by init0:
#: one `cp` is one exec at every boot, a symlink(2) costs microseconds.
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)


def add_dev_links(dev_dir: str) -> list[str]:
    """Create the DEV_LINKS missing from `dev_dir` (an existing entry is left as it is);
    what could not be created, one sentence each."""
    problems = []
    for name, target in DEV_LINKS:
        try:
            os.symlink(target, os.path.join(dev_dir, name))
        except FileExistsError:
            pass
        except OSError as error:
            problems.append(f"cannot create {os.path.join(dev_dir, name)} -> {target}: {error.strerror}")
    return problems


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Adopt our descendants' orphans, as PID 1 does: a dev-mode init must reap the
    zombies its program leaves (a shell script's daemonised server, say)."""
    _check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


#: Children whose exit status someone else waits for (asyncio's child watcher, for the
#: executable program): PID 1's zombie reaper leaves them alone at once, whatever their age.
MANAGED_CHILDREN: set[int] = set()

#: The children this process created through Python, pid -> start time (clock ticks
#: since boot, /proc/<pid>/stat's 22nd field, which tells the child from a later
#: process given its pid): their creator collects them, never the orphan reaper.
CREATED_CHILDREN: dict[int, int] = {}

#: How long a zombie child may wait for its owner before PID 1 reaps it as an orphan.
ORPHAN_GRACE = 10.0

#: Where Python creates processes: (module name, function); each returns the pid, or
#: (pid, fd). subprocess binds _posixsubprocess.fork_exec at import as _fork_exec;
#: multiprocessing's spawn calls _posixsubprocess's; os.spawn*, pty and multiprocessing's
#: fork call os.fork (or os.forkpty) through the module, so every path meets a wrapper.
_CREATORS = (
    ("os", "fork"),
    ("os", "forkpty"),
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("_posixsubprocess", "fork_exec"),
    ("subprocess", "_fork_exec"),
)
_recording = False


def record_created_children() -> None:
    """From now on, record in CREATED_CHILDREN every child this process creates (once).

    The kernel keeps no trace of who forked a process: a child this process forked and
    an orphan re-parented to it have the same ppid, session and thread-group parent, and
    the original parent's pid is gone with it. What the kernel cannot tell, the creator
    can: Python's process-creating functions are wrapped to note each pid they return.
    A process created by C code in this process (a C extension's fork()) is not seen;
    for it the reaper's grace remains.
    """
    global _recording
    if _recording:
        return
    _recording = True
    import importlib

    for module_name, name in _CREATORS:
        module = importlib.import_module(module_name)
        create = getattr(module, name, None)
        if create is not None and not getattr(create, "_records_children", False):
            setattr(module, name, _recording_wrapper(create))
    # A child is not PID 1, and its own children are not ours.
    os.register_at_fork(after_in_child=CREATED_CHILDREN.clear)


def _recording_wrapper(create):
    import functools

    @functools.wraps(create)
    def create_and_record(*args, **kwargs):
        result = create(*args, **kwargs)
        pid = result[0] if isinstance(result, tuple) else result
        if isinstance(pid, int) and pid > 0:
            started = _start_time(pid)
            if started is not None:  # else another thread of its creator already collected it
                CREATED_CHILDREN[pid] = started
        return result

    create_and_record._records_children = True
    return create_and_record


class OrphanReaper:
    """Reaps the zombies nobody waits for, and only those.

    PID 1 (or a subreaper) adopts every orphan, and its zombie stays until PID 1 waits
    for it. An in-process ASGI program's own children (subprocess.Popen,
    multiprocessing, asyncio's subprocesses) are PID 1's children too, and reaping one
    steals its status from the program: Popen.wait() then answers 0, multiprocessing's
    is_alive() stays True for ever, asyncio answers 255. So a zombie is reaped only when
    this process did not create it (record_created_children, which the reaper starts)
    and is not MANAGED_CHILDREN, and only once it has waited `grace` seconds: a child
    whose creator has not recorded it yet is recorded by then, and one created by C
    code (not recorded) has that long to be collected by its owner.
    """

    def __init__(self, grace: float = ORPHAN_GRACE):
        self.grace = grace
        self.first_seen: dict[int, float] = {}
        # The records are pruned when more than this many are left (the peek below
        # skips /proc while no zombie waits): they stay in proportion to live children.
        self.prune_above = 64
        record_created_children()

    def sweep(self, now: float) -> list[tuple[int, int]]:
        """Reap the orphans' zombies seen for `grace` seconds; [(pid, wait status)]."""
        try:
            # One cheap peek (WNOWAIT reaps nothing) before reading /proc.
            waiting = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            waiting = None
        if waiting is None or waiting.si_pid == 0:
            self.first_seen.clear()
            if len(CREATED_CHILDREN) > self.prune_above:
                self._prune(dict(CREATED_CHILDREN), _children())
            return []
        recorded = dict(CREATED_CHILDREN)  # before the scan: each of these is in it, unless collected
        children = _children()
        self._prune(recorded, children)
        zombies = {
            pid
            for pid, (state, started) in children.items()
            if state == b"Z" and CREATED_CHILDREN.get(pid) != started and pid not in MANAGED_CHILDREN
        }
        # A pid is not reused while it is a zombie: one seen again is the same child.
        self.first_seen = {pid: self.first_seen.get(pid, now) for pid in zombies}
        reaped = []
        for pid, since in list(self.first_seen.items()):
            if now - since < self.grace:
                continue
            del self.first_seen[pid]
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # its owner collected it meanwhile
            if got:
                reaped.append((got, status))
        return reaped

    def _prune(self, recorded: dict[int, int], children: dict[int, tuple[bytes, int]]) -> None:
        """Forget the recorded children their creator collected (or whose pid is another's now)."""
        for pid, started in recorded.items():
            if children.get(pid, (b"", None))[1] != started and CREATED_CHILDREN.get(pid) == started:
                del CREATED_CHILDREN[pid]
        self.prune_above = max(64, 2 * len(CREATED_CHILDREN))


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/<pid>/stat's fields after the command name (state first), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _children() -> dict[int, tuple[bytes, int]]:
    """Our children, pid -> (state, start time), from /proc."""
    me = str(os.getpid()).encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is not None and len(fields) > 19 and fields[1] == me:
            found[int(name)] = (fields[0], int(fields[19]))
    return found
