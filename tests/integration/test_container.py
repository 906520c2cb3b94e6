"""Dev mode's container (host/container/): every door of issue 25 closed, as root inside.

Each escape is tried twice by the same probe (container_probe.py), as root: in the
chroot layout dev mode used before the container (`LEGACY_CHROOT`, kept here verbatim so
the probe shows it can find the door open), and in a container of the real runtime image
running the image's own Python. The host checks the effect itself where it can see one
(a file written, a process signalled, a connection accepted). Then the limits (an OOM
kill, the CPU quota), the network (the VM's address, an outside server reached, the host's
loopback not), the fallback without a user namespace, and a non-root user.

The "outside" is a network namespace made here, joined by a veth pair whose host end is
203.0.113.1 (TEST-NET-3) and whose far end serves at 203.0.113.2: no traffic leaves this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from aleph_runtime.host.container.network import NetworkSpec
from aleph_runtime.host.container.rootfs import IdMap, image_tree
from aleph_runtime.host.container.spawn import Bind, Container, ContainerSpec
from tests import outside_network
from tests.outside_network import OUTSIDE_HOST, OUTSIDE_SERVER, LoopbackServer

pytestmark = [pytest.mark.root, pytest.mark.image]

HERE = Path(__file__).resolve().parent
PROBE = HERE / "container_probe.py"
IMAGE_PYTHON = "/usr/bin/python3"
TEST_NETWORK = NetworkSpec(ip="203.0.113.10/24", gateway=OUTSIDE_HOST)

# Dev mode's layout before the container (machines/dev.py's _NAMESPACE_SCRIPT at 479404c):
# a mount namespace, the host's / as an overlay's lower layer, the host's /proc /sys /dev,
# chroot. Kept to show each probe finds its door open there.
LEGACY_CHROOT = r"""
set -eu
M=$1; shift
mount -t tmpfs -o mode=0755 aleph-dev "$M"
mkdir "$M/upper" "$M/work" "$M/root"
mount -t overlay overlay -o "${ALEPH_DEV_OVERLAY_OPTIONS:-}lowerdir=/,upperdir=$M/upper,workdir=$M/work" "$M/root"
R=$M/root
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
while [ "$1" != "--" ]; do
  src=$1; dst=$2; mode=$3; shift 3
  if [ -d "$src" ]; then mkdir -p "$R$dst"; else mkdir -p "$R$(dirname "$dst")"; : > "$R$dst"; fi
  mount --bind "$src" "$R$dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$R$dst"; fi
done
shift
exec chroot "$R" /bin/sh -c 'cd / && exec "$@"' sh "$@"
"""


def _find_image() -> Path | None:
    """$ALEPH_ROOTFS, or the newest lean image in the cache (never built from here: tests/image does)."""
    from aleph_runtime.host.container.rootfs import cached_images

    override = os.environ.get("ALEPH_ROOTFS")
    if override:
        return Path(override)
    found = cached_images("lean")
    return found[0] if found else None


@pytest.fixture(scope="session")
def tree() -> Path:
    found = _find_image()
    if found is None:
        pytest.skip("no runtime image built yet (rootfs-build/build-rootfs.sh)")
    return image_tree(found, IdMap.for_caller())


@pytest.fixture(scope="session")
def host_root_tree() -> Path:
    """The tree for a container without a user namespace: the image's own IDs."""
    found = _find_image()
    if found is None:
        pytest.skip("no runtime image built yet (rootfs-build/build-rootfs.sh)")
    return image_tree(found, IdMap.host_root())


#: The outside server: a TCP greeting on port 8000, and a stand-in for a DNS resolver on port
#: 53 that answers each datagram with its echo.
OUTSIDE_SERVER_CODE = """
import socket, threading
server = socket.create_server((sys.argv[1], 8000))
resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
resolver.bind((sys.argv[1], 53))
def answer():
    while True:
        data, peer = resolver.recvfrom(512)
        resolver.sendto(b"answer:" + data, peer)
threading.Thread(target=answer, daemon=True).start()
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    with connection:
        connection.sendall(b"outside\\n")
"""


@pytest.fixture(scope="module")
def outside():
    """A server at 203.0.113.2:8000 in a network namespace of its own, through a veth pair."""
    with outside_network.outside(OUTSIDE_SERVER_CODE):
        yield OUTSIDE_SERVER, 8000


class Doors:
    """What the escapes aim at, on the host, and what the host sees of them afterwards."""

    def __init__(self, base: Path, outside: tuple[str, int]):
        self.marker_dir = base / "host-side"
        self.marker_dir.mkdir()
        self.marker = self.marker_dir / "host-marker"
        self.marker.write_text("the host")
        self.shm_name = f"aleph-test-{secrets.token_hex(6)}"
        self.victim = subprocess.Popen(["sleep", "300"])
        self.server = LoopbackServer()
        state = base / "state"
        state.mkdir()
        self.key = state / "signing.key"
        self.key.write_bytes(os.urandom(32))
        self.key.chmod(0o600)
        # Behind a directory only the host's root may enter (as a checkout in /root is).
        private = base / "private"
        private.mkdir(mode=0o700)
        self.probe_dir = private / "probe"
        self.probe_dir.mkdir()
        shutil.copy(PROBE, self.probe_dir / "probe.py")
        disk = os.stat(self.probe_dir).st_dev
        self.disk = [os.major(disk), os.minor(disk)]
        self.outside = outside

    def asked(self) -> dict[str, list]:
        return {
            "proc_root_write": [str(self.marker_dir)],
            "dev_shm": [self.shm_name],
            "kill": [self.victim.pid],
            "connect": ["127.0.0.1", self.server.port],
            "connect2": [OUTSIDE_HOST, self.server.port],
            "connect3": list(self.outside),
            "read_file": [str(self.key)],
            "chroot_escape": [str(self.marker)],
            "module_load": [],
            "capabilities": [],
            "mknod_device": self.disk,
            "mount_device": self.disk,
            "file_handle": ["/probe"],
            "mount_tmpfs": [],
            "open_fds": [],
        }

    def seen_from_host(self) -> dict[str, bool]:
        """Door -> whether the host saw it opened."""
        time.sleep(0.1)  # the loopback server's thread counts its last connection
        return {
            "proc_root_write": any(p.name.startswith("escaped-via-") for p in self.marker_dir.iterdir()),
            "dev_shm": Path(f"/dev/shm/{self.shm_name}").exists(),
            "kill": self.victim.poll() is not None,
            "connect": self.server.accepted > 0,
        }

    def close(self) -> None:
        self.victim.kill()
        self.victim.wait()
        self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{self.shm_name}")


def parse_probe(output: str) -> dict[str, dict]:
    for line in output.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise AssertionError(f"the probe printed no result:\n{output[-3000:]}")


def run_legacy(doors: Doors, work: Path) -> dict[str, dict]:
    mounts = work / "legacy-mnt"
    mounts.mkdir()
    command = [
        "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", LEGACY_CHROOT, "aleph-dev",
        str(mounts), str(doors.probe_dir), "/probe", "ro", "--",
        "/usr/bin/python3", "/probe/probe.py", json.dumps(doors.asked()),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return parse_probe(result.stdout + result.stderr)


@dataclasses.dataclass
class Outcome:
    status: int | None
    output: str
    box: Container
    oom_kills: int
    cpu_stat: dict[str, int]


def run_container(spec: ContainerSpec, work: Path, timeout: float = 120) -> Outcome:
    """Run the container to its end, then kill and clean it; what it said and did."""
    log = work / f"container-{secrets.token_hex(3)}.log"

    async def main() -> Outcome:
        with open(log, "wb") as output:
            box = Container(spec, work, stdout=output, stderr=output)
            status = None
            try:
                await box.start()
                status = await asyncio.wait_for(box.wait(), timeout)
            finally:
                oom_kills, cpu_stat = box.oom_kills(), _cpu_stat(box)
                await box.kill()
        return Outcome(status, log.read_text(errors="replace"), box, oom_kills, cpu_stat)

    return asyncio.run(main())


def _cpu_stat(box: Container) -> dict[str, int]:
    for directory in box.limits.directories:
        stat = directory / "cpu.stat"
        if stat.exists():
            return {k: int(v) for k, v in (line.split() for line in stat.read_text().splitlines())}
    return {}


#: What the init does with the config's network before the program starts (here with `ip`).
CONFIGURE_NETWORK = (
    "ip addr add 203.0.113.10/24 dev eth0 && ip link set eth0 up && ip route add default via 203.0.113.1"
)


def probe_spec(tree: Path, doors: Doors, **kwargs) -> ContainerSpec:
    return ContainerSpec(
        tree,
        [
            "/bin/sh",
            "-c",
            f'{CONFIGURE_NETWORK} || true; exec "$@"',
            "sh",
            IMAGE_PYTHON,
            "/probe/probe.py",
            json.dumps(doors.asked()),
        ],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        binds=[Bind(doors.probe_dir, "/probe", "ro")],
        network=TEST_NETWORK,
        **kwargs,
    )


@pytest.fixture(scope="module")
def work():
    path = Path(tempfile.mkdtemp(prefix="aleph-ct-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def legacy(work, outside):
    base = work / "legacy"
    base.mkdir()
    doors = Doors(base, outside)
    try:
        results = run_legacy(doors, base)
        return results, doors.seen_from_host()
    finally:
        doors.close()


def _contained(tree, work, outside, name: str, **kwargs):
    base = work / name
    base.mkdir()
    base.chmod(0o755)
    doors = Doors(base, outside)
    doors.probe_dir.chmod(0o755)
    try:
        outcome = run_container(probe_spec(tree, doors, **kwargs), base)
        return parse_probe(outcome.output), doors.seen_from_host(), outcome.box, outcome.status
    finally:
        doors.close()


@pytest.fixture(scope="module")
def contained(tree, work, outside):
    return _contained(tree, work, outside, "userns")


@pytest.fixture(scope="module")
def contained_without_userns(host_root_tree, work, outside):
    return _contained(host_root_tree, work, outside, "no-userns", user_namespace=False, ids=IdMap.host_root())


ESCAPES = [
    "proc_root_write",  # a host file written through /proc/<pid>/root
    "dev_shm",  # the host's /dev/shm
    "kill",  # a signal to a host process
    "connect",  # a host loopback port
    "read_file",  # the state directory's signing key
    "chroot_escape",  # chroot into a subdirectory, '..' out of it
    "mknod_device",  # a device node for the host's disk
    "file_handle",  # open_by_handle_at on a bound directory's filesystem
]


def _opened(results: dict, seen: dict, door: str) -> bool:
    """What the host saw where it can see it (a file, a signal, a connection), else what the probe says."""
    return seen[door] if door in seen else results[door]["ok"] is True


@pytest.mark.parametrize("door", ESCAPES)
def test_door_open_in_the_old_chroot_layout(legacy, door):
    results, seen = legacy
    assert _opened(results, seen, door), results[door]


@pytest.mark.parametrize("door", ESCAPES)
@pytest.mark.parametrize("variant", ["contained", "contained_without_userns"])
def test_door_closed_in_the_container(request, variant, door):
    results, seen, _, _ = request.getfixturevalue(variant)
    assert not _opened(results, seen, door), results[door]


def test_module_load_and_host_mount_refused(legacy, contained):
    results, *_ = contained
    old, _ = legacy
    # A module: refused for lack of the capability in the host's user namespace (this
    # project's kernel may have no module support at all: then the syscall says ENOSYS).
    assert results["module_load"]["ok"] is not True, results["module_load"]
    assert old["module_load"]["ok"] is not False, old["module_load"]
    # The host's disk: not even a device node for it; the old layout reached its filesystem.
    assert results["mount_device"]["ok"] is False, results["mount_device"]
    assert old["mount_device"]["ok"] is True, old["mount_device"]
    assert results["mount_device"]["detail"].startswith("mknod"), results["mount_device"]


def test_root_inside_holds_no_host_capability(legacy, contained):
    results, _, box, _ = contained
    old, _ = legacy
    cap_sys_module = 1 << 16
    # Same effective set on paper (all of them), but the container's are its user namespace's.
    assert int(old["capabilities"]["detail"], 16) & cap_sys_module
    assert box.spec.ids.uid != 0
    # Its own mounts are fine: the init mounts volumes, as in a VM.
    assert results["mount_tmpfs"]["ok"] is True, results["mount_tmpfs"]
    # The binds came through descriptors (the probe's directory is behind a 0700 one): none is left open.
    assert results["open_fds"] == {"ok": False, "detail": "none"}


def test_network_reaches_outside_not_host_loopback(contained, outside):
    results, seen, _, _ = contained
    assert results["connect3"] == {"ok": True, "detail": "outside\n"}
    assert results["connect"]["ok"] is False
    # The gateway is this machine (203.0.113.1): with pasta's gateway mapping it would be the
    # host's loopback, where the server listens.
    assert results["connect2"]["ok"] is False, results["connect2"]
    assert not seen["connect"]


def test_nothing_left_after_the_container(contained, work):
    _, _, box, _ = contained
    assert not any(d.exists() for d in box.limits.directories)
    assert box.pasta is not None and box.pasta.process.returncode is not None
    with open("/proc/self/mountinfo") as mountinfo:
        assert str(work) not in mountinfo.read()
    assert not Path(f"/proc/{box.pid1}").exists()


def test_fallback_without_user_namespace_says_so(contained_without_userns):
    results, _, box, status = contained_without_userns
    assert status == 0
    assert any("no user namespace" in warning for warning in box.warnings)
    # No CAP_SYS_ADMIN: not even its own mounts (the init's volumes are bound by the host).
    assert results["mount_tmpfs"]["ok"] is False


OOM_PROGRAM = "b = bytearray(300 << 20); print('survived', flush=True)"


def test_memory_limit_kills_as_in_a_vm(tree, work):
    spec = ContainerSpec(tree, [IMAGE_PYTHON, "-c", OOM_PROGRAM], memory_mb=96, network=None)
    outcome = run_container(spec, work)
    assert "survived" not in outcome.output
    # PID 1 was SIGKILLed (unshare cannot re-raise that one: it says so and exits 1).
    assert outcome.status != 0, outcome.output
    assert outcome.oom_kills >= 1
    # The same program within its limit.
    spec = ContainerSpec(tree, [IMAGE_PYTHON, "-c", OOM_PROGRAM], memory_mb=512, network=None)
    outcome = run_container(spec, work)
    assert (outcome.status, outcome.output.strip(), outcome.oom_kills) == (0, "survived", 0)


#: Root inside tries to make a read-only bind writable, then to write through it.
REMOUNT_PROGRAM = textwrap.dedent(
    """
    import subprocess
    remount = subprocess.run(["mount", "-o", "remount,bind,rw", "/bound"], capture_output=True)
    print("remount", remount.returncode)
    try:
        with open("/bound/shared", "w") as file:
            file.write("written from inside")
        print("written")
    except OSError as error:
        print("refused", error.errno)
    """
)


def test_a_read_only_bind_stays_read_only(tree, work):
    """Root's binds are made read-only before the container's user namespace exists: the
    kernel locks them so, and its root (who owns its mounts) cannot remount one writable,
    even over a file anyone may write."""
    bound = work / "bound-ro"
    bound.mkdir(mode=0o777)
    bound.chmod(0o777)
    (bound / "shared").write_text("the host's")
    (bound / "shared").chmod(0o666)
    spec = ContainerSpec(tree, [IMAGE_PYTHON, "-c", REMOUNT_PROGRAM], binds=[Bind(bound, "/bound", "ro")],
                         network=None)  # fmt: skip
    outcome = run_container(spec, work)
    assert outcome.status == 0, outcome.output
    assert outcome.output.split() == ["remount", "32", "refused", str(errno.EROFS)], outcome.output
    assert (bound / "shared").read_text() == "the host's"


CPU_PROGRAM = textwrap.dedent(
    """
    import os, time
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
            os._exit(0)
        children.append(pid)
    start = time.monotonic()
    for pid in children:
        os.waitpid(pid, 0)
    wall = time.monotonic() - start
    cpu = os.times().children_user + os.times().children_system
    print(f"{cpu / wall:.2f}", flush=True)
    """
)


def test_cpu_quota_is_the_vcpus(tree, work):
    spec = ContainerSpec(tree, [IMAGE_PYTHON, "-c", CPU_PROGRAM], vcpus=1, network=None)
    outcome = run_container(spec, work)
    assert outcome.status == 0, outcome.output
    # Two busy processes share one vCPU's quota: about one CPU's worth in all (two on an
    # idle machine without it; less when the machine is busy, which this cannot tell).
    assert outcome.cpu_stat.get("nr_periods", 0) > 0, outcome.cpu_stat
    assert float(outcome.output.split()[-1]) < 1.3, outcome.output


NETWORK_PROGRAM = textwrap.dedent(
    """
    import socket, subprocess, sys
    # As the init does from the config: address, route (here with the image's `ip`).
    for command in (["ip", "addr", "add", "203.0.113.10/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                    ["ip", "route", "add", "default", "via", "203.0.113.1"]):
        subprocess.run(command, check=True)
    print(subprocess.run(["ip", "-br", "addr", "show", "eth0"], capture_output=True, text=True).stdout.split()[2])
    with socket.create_connection(("203.0.113.2", 8000), timeout=5) as connection:
        print(connection.recv(64).decode().strip())
    # UDP too (a resolver's port, as the config's DNS servers are reached).
    query = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    query.settimeout(5)
    query.sendto(b"query", ("203.0.113.2", 53))
    print(query.recv(512).decode())
    """
)


def test_network_like_a_vm(tree, work, outside):
    spec = ContainerSpec(tree, [IMAGE_PYTHON, "-c", NETWORK_PROGRAM], network=TEST_NETWORK)
    outcome = run_container(spec, work)
    assert outcome.status == 0, outcome.output
    assert outcome.output.split()[:3] == ["203.0.113.10/24", "outside", "answer:query"], outcome.output
    assert not outcome.box.warnings


#: As a user's container's root: who it is, a file made in a writable bind, then
#: REMOUNT_PROGRAM's attempt on a read-only one.
USER_PROGRAM = "import os; print('inside', os.getuid(), os.getpid()); open('/made/here', 'w').close()\n"


def test_runs_as_a_user_in_a_user_namespace(tree, work):
    """A non-root user (nobody): their own copy of the image, mapped as the container's
    root (what it makes is nobody's on the host); their read-only binds locked so as
    root's are; no cgroup delegation here, so the limits are said to be missing."""
    home = work / "nobody"
    (home / "made").mkdir(parents=True)
    (home / "bound").mkdir()
    (home / "bound" / "shared").write_text("the host's")
    for path in (home, home / "made", home / "bound", home / "bound" / "shared"):
        os.chown(path, 65534, 65534)
    from aleph_runtime.host.vmm import image

    squashfs = _find_image()
    program = USER_PROGRAM + REMOUNT_PROGRAM
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        sys.path.insert(0, {str(HERE.parents[1] / "runtime")!r})
        from aleph_runtime.host.container.rootfs import IdMap, image_tree
        from aleph_runtime.host.container.spawn import Bind, Container, ContainerSpec
        ids = IdMap.for_caller()
        tree = image_tree(Path({str(squashfs)!r}), ids)
        home = Path({str(home)!r})
        async def main():
            spec = ContainerSpec(tree, ["/usr/bin/python3", "-c", {program!r}], ids=ids, memory_mb=256,
                                 network=None, binds=[Bind(home / "made", "/made", "rw"),
                                                      Bind(home / "bound", "/bound", "ro")])
            box = Container(spec, home)
            await box.start()
            status = await box.wait()
            await box.kill()
            print("status", status)
            print("warnings", box.warnings)
        asyncio.run(main())
        """
    )
    assert image.cache_dir()  # the image is root's; nobody reads it
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")},
        capture_output=True, text=True, timeout=600, cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:3] == ["inside 0 1", "remount 32", f"refused {errno.EROFS}"], result.stdout + result.stderr
    assert (home / "made" / "here").stat().st_uid == 65534
    assert (home / "bound" / "shared").read_text() == "the host's"
    assert "status 0" in result.stdout
    assert "--memory 256 MiB not enforced" in result.stdout


def _sleeper(tree: Path, work: Path) -> tuple[Container, asyncio.AbstractEventLoop]:
    spec = ContainerSpec(
        tree, [IMAGE_PYTHON, "-c", "import time; time.sleep(300)"], memory_mb=64, network=None
    )
    box = Container(spec, work)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(box.start())
    return box, loop


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not Path(f"/proc/{pid}").exists()


def test_kill_leaves_no_process_nor_cgroup(tree, work):
    box, loop = _sleeper(tree, work)
    try:
        pid1, cgroups = box.pid1, list(box.limits.directories)
        assert Path(f"/proc/{pid1}").exists() and cgroups
        loop.run_until_complete(box.kill())
        assert _gone(pid1)
        assert not any(directory.exists() for directory in cgroups)
    finally:
        loop.run_until_complete(box.kill())
        loop.close()


def test_the_container_dies_with_its_unshare_killed_outright(tree, work):
    """As when the command is SIGKILLed: the kernel's parent-death signal, set again after
    the change of user that clears it, takes PID 1 (and so the namespace) along."""
    box, loop = _sleeper(tree, work)
    try:
        pid1 = box.pid1
        os.kill(box.process.pid, signal.SIGKILL)
        assert _gone(pid1), "PID 1 outlived unshare"
    finally:
        loop.run_until_complete(box.kill())
        loop.close()
