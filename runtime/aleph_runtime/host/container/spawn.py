"""Start a command (the image's init) as PID 1 of a container of the runtime image.

A first mount namespace stages each bind's source under a tmpfs (`_STAGE0`: the
container's root could not reach a source under /root by its path), the read-only ones
made read-only there: the container's mount namespace, owned by another user namespace,
gets them locked so. As root, that first namespace is of the host's user namespace; as a
user, of a user namespace of their own that maps them alone. Then `unshare` makes the
container's namespaces in one call: user, mount, PID, IPC, UTS, network and cgroup; its
child, PID 1 of the new PID namespace, runs `_SETUP_SCRIPT` with the host's bash and
tools. The child first waits on a pipe (the `GATE` descriptor) while the host:

1. writes its ID maps, as root (`rootfs.IdMap`: the container's 0-65535 are an unused
   host range, so its root is no one on the host; a user's container maps that user alone,
   itself, with unshare's --map-root-user);
2. attaches pasta to its network namespace (network.py), when there is one to give.

Then the script becomes the namespace's root (setpriv), and builds the root filesystem as
init0.sh does in a VM: a tmpfs overlay over the image tree (read-only lower, writes in
RAM), a fresh /proc, /sys read-only, a minimal /dev (null zero full random urandom tty,
its own pts and shm), tmpfs /tmp and /run, the binds (the program's code and volumes,
the socket directory, the checkout's init if asked), then pivot_root into it and detaches
the host's root: nothing of the host is left to reach. It execs the command with a clean
environment, still PID 1. `command_line` is that command; the test sandbox
(machines/sandbox.py) runs it too, on this machine's / with root's every capability.

Its capabilities are the user namespace's: they act on its own mounts, hostname, network
and processes, and on nothing of the host (no module, no device, no host mount, no host
process). Where the kernel refuses user namespaces, root still gets every other
namespace, with the capabilities a container needs only (`BOUNDING_SET`), and
`warnings` says so; a user cannot start one then.

The container's first process joins its cgroups (cgroups.py) before making the
namespaces. Killing it kills the namespace's PID 1, and the kernel ends everything in
it and unmounts everything it mounted; `kill()` then ends pasta and removes the cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aleph_runtime.host.children import OwnsProcess, die_with_parent
from aleph_runtime.host.container.cgroups import Limits
from aleph_runtime.host.container.network import NetworkSpec, Pasta
from aleph_runtime.host.container.network import missing as network_missing
from aleph_runtime.host.container.rootfs import IdMap
from aleph_runtime.host.errors import SetupError

#: What the container's root may do without a user namespace (root only): Docker's
#: default set, plus NET_ADMIN (the init configures eth0) and SYS_BOOT (its power-off
#: ends the PID namespace). No SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, MKNOD.
BOUNDING_SET = (
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap", "net_bind_service",
    "net_raw", "sys_chroot", "audit_write", "setfcap", "net_admin", "sys_boot",
)  # fmt: skip

# First in a mount namespace of the host's user namespace (as root) or of the user's own
# (as a user): each bind's source is bound under the staging tmpfs, where the container's
# root can reach it (a source under /root, say, it could not reach by its path), read-only
# ones read-only. Then the container's namespaces.
# Arguments: the mount directory, then those of _SETUP_SCRIPT from the image tree on.
# Environment: INNER, the unshare command that makes the container's namespaces.
_STAGE0 = r"""
set -eu
M=$1; shift
mount -t tmpfs -o mode=0755,size=64k aleph-stage "$M"
mkdir "$M/src" "$M/box"
args=("$1" "$2" "$3"); shift 3
i=0
while [ "$1" != "--" ]; do
  src=$1; dst=$2; how=$3; shift 3
  if [ "$how" != mask ]; then
    if [ -d "$src" ]; then mkdir "$M/src/$i"; else : > "$M/src/$i"; fi
    mount --bind "$src" "$M/src/$i"
    # Read-only here, in the host's user namespace: the container's copy of this mount is
    # then locked read-only, and its root cannot remount it writable.
    if [ "$how" = ro ]; then mount -o remount,bind,ro "$M/src/$i"; fi
    src=$M/src/$i; i=$((i + 1))
  fi
  args+=("$src" "$dst" "$how")
done
exec $INNER /bin/bash -c "$SETUP" aleph-container "$M/box" "${args[@]}" "$@"
"""

# Runs as PID 1 of the new namespaces with the host's bash, until it execs the command.
# Arguments: the mount directory, the image tree, "ns" or "root" (user namespace or not),
# the setgroups mode, then "SOURCE TARGET ro|rw|mask" triples ("-" for a mask's source),
# "--", the command (which starts with `env -i KEY=VALUE...`: the image's env, so nothing
# of the host's leaks in). Environment: GATE, the descriptor to wait on.
_SETUP_SCRIPT = r"""
set -eu
# The host writes the ID maps and attaches the network, then says go.
read -r _ <&"$GATE" || exit 111
eval "exec $GATE<&-"
if [ "$3" = ns ]; then
  # Root of the user namespace from here on: the mapped ID 0, with its capabilities.
  # The kernel forgets the parent-death signal (unshare --kill-child's) at a change of
  # user: set it again, or the container would outlive unshare killed outright.
  exec setpriv --reuid=0 --regid=0 "--$4-groups" --pdeathsig KILL /bin/bash -c "$STAGE2" stage2 "$@"
fi
exec /bin/bash -c "$STAGE2" stage2 "$@"
"""

_STAGE2 = r"""
set -eu
M=$1; T=$2; MODE=$3; shift 4
mount -t tmpfs -o mode=0755 aleph-container "$M"
mkdir "$M/upper" "$M/work" "$M/root"
userxattr=
[ "$MODE" = ns ] && userxattr=userxattr,
mount -t overlay overlay -o "${userxattr}lowerdir=$T,upperdir=$M/upper,workdir=$M/work" "$M/root"
R=$M/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys" || echo "aleph-container: /sys is not mounted" >&2
mount -t tmpfs -o mode=0755,nosuid,size=1m dev "$R/dev"
for node in null zero full random urandom tty; do
  : > "$R/dev/$node"; mount --bind "/dev/$node" "$R/dev/$node"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
while [ "$1" != "--" ]; do
  src=$1; dst=$2; how=$3; shift 3
  if [ "$how" = mask ]; then
    mount -t tmpfs -o ro,mode=0755,size=4k mask "$R$dst"
    continue
  fi
  if [ -d "$src" ]; then mkdir -p "$R$dst"; else mkdir -p "$R$(dirname "$dst")"; [ -e "$R$dst" ] || : > "$R$dst"; fi
  mount --bind "$src" "$R$dst"
  if [ "$how" = ro ]; then mount -o remount,bind,ro "$R$dst"; fi
done
shift
# The host's root is stacked over the new one by pivot_root, then detached: gone for good.
cd "$R"
pivot_root . .
umount -l .
cd "$CWD"
if [ "$MODE" = ns ] || [ -z "$BOUNDING" ]; then exec "$@"; fi
exec setpriv --bounding-set="-all,$BOUNDING" "$@"
"""


@dataclass(frozen=True)
class Bind:
    """`source` seen at `target` inside: "ro", "rw", or "mask" (an empty read-only directory)."""

    source: Path | None
    target: str
    mode: str = "ro"


@dataclass
class ContainerSpec:
    tree: Path
    """The image tree (rootfs.image_tree), owned as `ids` maps it."""
    command: list[str]
    ids: IdMap = field(default_factory=IdMap.for_caller)
    env: dict[str, str] = field(default_factory=dict)
    binds: list[Bind] = field(default_factory=list)
    network: NetworkSpec | None = field(default_factory=NetworkSpec)
    """None: loopback only."""
    memory_mb: int | None = None
    vcpus: int | None = None
    user_namespace: bool = True
    """False (root only): no user namespace, a bounded capability set instead."""
    all_capabilities: bool = False
    """Without a user namespace, keep every capability (the test sandbox: its init mounts
    loop devices). Not a boundary then: only pivot_root and the namespaces remain."""
    cwd: str = "/"
    """Where the command starts."""


#: The host's tools the container is made with (util-linux and bash, on every Debian).
TOOLS = ("unshare", "setpriv", "pivot_root", "mount", "bash")


def missing_tool() -> str | None:
    """One sentence naming the tool that is missing and the fix, or None."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: dev mode needs util-linux and bash (scripts/setup.sh installs them)"
    return None


def user_namespaces_unavailable() -> str | None:
    """Why this kernel refuses us a user namespace, or None (read from its settings)."""
    checks = [("/proc/sys/user/max_user_namespaces", "0")]
    if os.geteuid() != 0:
        checks.append(("/proc/sys/kernel/unprivileged_userns_clone", "0"))
    for path, refused in checks:
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == refused:
                return f"{path} is {refused}"
    return None


def plan(user_namespace: bool = True) -> tuple[IdMap, bool, str | None]:
    """(the IDs the image tree must be owned as, whether to use a user namespace, why not).

    A user without user namespaces cannot have a container: SetupError, naming the fix.
    """
    why_not = user_namespaces_unavailable() if user_namespace else "not asked for"
    if why_not is None:
        return IdMap.for_caller(), True, None
    if os.geteuid() != 0:
        raise SetupError(f"dev mode needs a user namespace as a non-root user, and {why_not}: allow them "
                         "(sysctl user.max_user_namespaces=15000) or run as root")  # fmt: skip
    return IdMap.host_root(), False, why_not


def command_line(spec: ContainerSpec, mount_dir: Path, gate_fd: int) -> tuple[list[str], dict[str, str]]:
    """The command that makes the container and its environment: it waits on `gate_fd`
    (passed to it) for one line once its namespaces exist (the ID maps, the network)."""
    inner = ["unshare", "--mount", "--pid", "--ipc", "--uts", "--net", "--cgroup", "--fork", "--kill-child",
             "--propagation", "private"]  # fmt: skip
    if spec.user_namespace:
        inner[1:1] = ["--user", "--keep-caps"]
    groups = "clear" if os.geteuid() == 0 else "keep"
    words = [str(spec.tree), "ns" if spec.user_namespace else "root", groups]
    # Parents first: a bind at /a would otherwise hide one made before it at /a/b.
    for bind in sorted(spec.binds, key=lambda bind: len(Path(bind.target).parts)):
        words += [str(bind.source or "-"), bind.target, bind.mode]
    words += ["--", "env", "-i", *(f"{key}={value}" for key, value in spec.env.items())]
    stage = ["unshare", "--mount", "--propagation", "private", "/bin/bash", "-c", _STAGE0, "aleph-stage"]
    if os.geteuid() != 0:
        # A user stages as the root of a user namespace of their own, which maps them alone;
        # the container's is its child, and maps itself (a user may map their own ID): the
        # host cannot write the maps of a namespace two levels down.
        stage[1:1] = ["--user", "--map-root-user"]
        inner[1:1] = ["--map-root-user"]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "INNER": " ".join(inner),
        "SETUP": _SETUP_SCRIPT,
        "STAGE2": _STAGE2,
        "GATE": str(gate_fd),
        "CWD": spec.cwd,
        # Without a user namespace: the capabilities root keeps ("" : all of them).
        "BOUNDING": "" if spec.all_capabilities else ",".join("+" + c for c in BOUNDING_SET),
    }
    return [*stage, str(mount_dir), *words, *spec.command], env


class Container(OwnsProcess):
    """One container; `start()` returns once its command runs (network attached). `wait()`
    gives the exit status as unshare reports it (negative: a signal; -SIGINT for a power-off)."""

    def __init__(self, spec: ContainerSpec, workdir: Path, *, stdout=None, stderr=None):
        self.spec = spec
        self.workdir = Path(workdir)
        self.stdout = stdout
        self.stderr = stderr
        self.name = f"aleph-dev-{os.getpid()}-{secrets.token_hex(3)}"
        self.limits = Limits(self.name, spec.memory_mb, spec.vcpus)
        self.pasta: Pasta | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.pid1: int | None = None
        """PID 1's host PID."""
        self._pid1_fd: int | None = None
        self.warnings: list[str] = []
        """One sentence per guarantee this container lacks (and why)."""
        self.mount_dir = spec.tree.parent / ".mnt" / self.name
        """Where its root is put together (a tmpfs of its own mount namespace)."""

    # --- life ---

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.kill()
            raise

    async def _start(self) -> None:
        spec = self.spec
        if why := missing_tool():
            raise SetupError(why)
        use_userns = spec.user_namespace
        if not use_userns:
            bounded = "a bounded capability set (no mount, no device, no module, no ptrace)"
            if spec.all_capabilities:
                bounded = "every capability"
            self.warnings.append(
                f"no user namespace: the container's root is the host's root, with {bounded}"
            )
        self.limits.create()
        self.warnings += self.limits.missing
        network = spec.network
        if network is not None and (why := network_missing()):
            self.warnings.append(why)
            network = None
        if network is not None and not use_userns:
            # This pasta joins a namespace only through its owner's user namespace (its
            # --netns option is refused alongside --netns-only).
            self.warnings.append("no network: pasta cannot attach to a container without a user namespace")
            network = None
        # Beside the tree: the container's root must reach it by its path, as it reaches the tree.
        mounts = self.mount_dir
        mounts.mkdir(parents=True, exist_ok=True)
        gate_read, gate_write = os.pipe()
        procs_files = self.limits.procs_files
        die = die_with_parent()

        def preexec() -> None:
            # Into the cgroups before the namespaces: the cgroup namespace's root is ours.
            for procs in procs_files:
                with open(procs, "w") as file:
                    file.write(str(os.getpid()))
            die()

        argv, env = command_line(spec, mounts, gate_read)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr,
                pass_fds=(gate_read,), preexec_fn=preexec, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(gate_read)
        try:
            self.pid1 = await self._wait_for_namespaces()
            with contextlib.suppress(OSError):
                self._pid1_fd = os.pidfd_open(self.pid1)
            if use_userns and os.geteuid() == 0:  # a user's container mapped itself
                self._write_id_maps(self.pid1)
            if network is not None:
                self.pasta = Pasta(network, self.workdir / f"{self.name}.pasta.pid")
                problem = await self.pasta.attach(self.pid1)
                if problem:
                    self.warnings.append(problem)
            os.write(gate_write, b"go\n")
        finally:
            os.close(gate_write)

    async def _wait_for_namespaces(self, timeout: float = 10) -> int:
        """PID 1's host PID, once it is in its namespaces: the child in another PID namespace
        (the staging shell's own children, `mount` and the like, are in a user's staging user
        namespace, but in this PID namespace)."""
        assert self.process is not None
        kind = "pid"
        ours = os.readlink(f"/proc/self/ns/{kind}")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(children.read_text().split()[0])
                if os.readlink(f"/proc/{pid}/ns/{kind}") != ours:
                    return pid
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.001)
        status = await self.wait() if self.process.returncode is not None else None
        raise SetupError(
            "the container's namespaces could not be made"
            + (f" (unshare exited with status {status})" if status is not None else " in time")
            + ": see the log above"
        )

    def _write_id_maps(self, pid: int) -> None:
        ids = self.spec.ids
        try:
            Path(f"/proc/{pid}/uid_map").write_text(f"0 {ids.uid} {ids.count}\n")
            if os.geteuid() != 0:
                # A user maps only their own group, and only with setgroups(2) refused.
                Path(f"/proc/{pid}/setgroups").write_text("deny")
            Path(f"/proc/{pid}/gid_map").write_text(f"0 {ids.gid} {ids.count}\n")
        except OSError as error:
            raise SetupError(f"the container's user IDs could not be mapped ({error.strerror}): "
                             "dev mode needs user namespaces") from None  # fmt: skip

    def oom_kills(self) -> int:
        return self.limits.oom_kills()

    async def kill(self) -> None:
        """SIGKILL to PID 1 and to unshare: the kernel ends the rest of the namespace. Then
        pasta, the cgroups and the mount directory go."""
        if self._pid1_fd is not None:
            # PID 1 itself first (by its pidfd: never another process that took its number);
            # the kernel then ends everything in its namespace.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pid1_fd, signal.SIGKILL)
            os.close(self._pid1_fd)
            self._pid1_fd = None
        if self.process is not None:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        if self.pid1 is not None:
            # PID 1 dies with unshare: wait until the kernel has reaped it.
            deadline = time.monotonic() + 5
            while Path(f"/proc/{self.pid1}").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        if self.pasta is not None:
            self.pasta.stop()
            await self.pasta.wait()
        await asyncio.to_thread(self.limits.remove)
        with contextlib.suppress(OSError):
            self.mount_dir.rmdir()


@dataclass
class Ended:
    """How a command run to its end went (`run_to_end`)."""

    status: int | None
    """Its exit status; None when it was killed at its timeout."""
    output: str
    """Its last output (stdout and stderr together), at most `run_to_end`'s `keep` bytes."""
    warnings: list[str]
    """The container's missing guarantees (Container.warnings)."""


async def run_to_end(spec: ContainerSpec, workdir: Path, *, timeout: float, keep: int = 64 << 10) -> Ended:
    """Run `spec.command` in a container until it ends (or `timeout` s, then kill it); its
    output goes to a file of the host's (never a pipe it could fill), of which the last
    `keep` bytes are returned. Nothing of the container is left afterwards."""
    output_path = Path(workdir) / f".output-{os.getpid()}-{secrets.token_hex(3)}"
    status = None
    try:
        with open(output_path, "wb") as output:
            box = Container(spec, workdir, stdout=output, stderr=output)
            try:
                await box.start()
                with contextlib.suppress(asyncio.TimeoutError):
                    status = await asyncio.wait_for(box.wait(), timeout)
            finally:
                await box.kill()
        with open(output_path, "rb") as output:
            output.seek(max(0, output_path.stat().st_size - keep))
            text = output.read(keep).decode(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            output_path.unlink()
    return Ended(status, text, box.warnings)
