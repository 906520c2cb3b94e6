"""Run a command (normally the init) as PID 1 of private namespaces, as a VM would run it.

The sandbox is dev mode's container (host/container/spawn.py) with this machine's / as
its image and root's every capability: new mount, PID, IPC, UTS, network and cgroup
namespaces, and a private root pivoted into (the host's detached, so no chroot escape
leads back to it): an overlay of the machine's / whose writes land in a tmpfs that
vanishes with the sandbox, so everything the init and the program write
(/etc/resolv.conf, /etc/hostname, /root/.ssh, /etc/ssh host keys, /opt, /data, mount
points...) stays private. /proc is fresh, /sys read-only; /tmp, /run and /dev are fresh
tmpfs; /dev holds only the usual character devices plus the sandbox's volumes: loop
devices bind-mounted as /dev/vdX (the init mounts them: hence real root, no user
namespace). The work directory (where the dev-mode vsock sockets live) is bind-mounted
at the same path inside, so both sides reach `<base>_<port>`.

Optionally a veth pair gives the sandbox an `eth0` (the `dummy` link type is not
available everywhere; veth is). Stopping kills the namespace's PID 1 (the kernel then
kills everything in it), detaches the loop devices and removes the host end of the
veth and the work directory: no leftovers.

Used by the integration tests and the benchmarks (scripts/bench_dev.py); needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aleph_runtime.host.container.spawn import Bind, ContainerSpec, command_line
from aleph_runtime.host.machines.base import Machine


def require_root() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the sandbox needs root (namespaces, mounts, loop devices)"
    for tool in ("unshare", "nsenter", "losetup", "ip", "chroot"):
        if shutil.which(tool) is None:
            return f"the sandbox needs `{tool}`, which is not installed"
    return None


@dataclass
class LoopDevice:
    image: str
    device: str
    """/dev/loopN on the host."""
    name: str
    """vdX inside the sandbox."""


def attach_loop(image: str | os.PathLike, read_only: bool = False) -> str:
    args = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else []) + [os.fspath(image)]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def detach_loop(device: str, timeout: float = 5.0) -> None:
    """Detach a loop device; wait until the kernel has let it go (a mount inside a dying
    namespace may hold it a little longer: detach then happens on last close)."""
    subprocess.run(["losetup", "-d", device], capture_output=True)
    backing = Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file")
    deadline = time.monotonic() + timeout
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
        subprocess.run(["losetup", "-d", device], capture_output=True)


class Sandbox:
    """`with Sandbox([...]) as box:` runs the command as PID 1 of private namespaces.

    - `volumes`: {"vdc": "/path/to/image"}, attached to loop devices, seen as /dev/vdc.
      Names ending in ":ro" as values ("img:ro") are attached read-only.
    - `veth`: give the sandbox an eth0 (the host end is `box.host_veth`, up, no address).
    - `binds`: host paths bind-mounted at the same path inside (read-write).
    - `workdir`: where the sockets live (created and removed when not given);
      `box.base` is a ready-made dev-mode vsock base path inside it.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        workdir: str | os.PathLike | None = None,
        volumes: Mapping[str, str | os.PathLike] | None = None,
        veth: bool = False,
        binds: Sequence[str | os.PathLike] = (),
        stdout=None,
        stderr=None,
    ):
        self.command = list(command)
        self.env = (
            dict(env)
            if env is not None
            else {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        )
        self.cwd = cwd
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="aleph-sandbox-", dir="/var/tmp"))
        )
        self.volumes = dict(volumes or {})
        self.veth = veth
        self.binds = [os.path.abspath(os.fspath(path)) for path in binds]
        self.stdout = stdout
        self.stderr = stderr
        (self.workdir / "sock").mkdir(parents=True, exist_ok=True)
        self.base = str(self.workdir / "sock" / "v.sock")
        self.loops: list[LoopDevice] = []
        self.host_veth: str | None = None
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    # --- lifecycle ---

    def start(self) -> Sandbox:
        reason = require_root()
        if reason:
            raise RuntimeError(reason)
        try:
            self._start()
        except BaseException:
            self.stop(timeout=0)
            raise
        return self

    def _start(self) -> None:
        (self.workdir / "mnt").mkdir(parents=True, exist_ok=True)
        (self.workdir / "sock").mkdir(parents=True, exist_ok=True)
        for name, image in self.volumes.items():
            image = os.fspath(image)
            read_only = image.endswith(":ro")
            image = image[:-3] if read_only else image
            self.loops.append(LoopDevice(image, attach_loop(image, read_only), name))
        binds = [Bind(Path(loop.device), f"/dev/{loop.name}", "rw") for loop in self.loops]
        binds += [Bind(Path(path), path, "rw") for path in self.binds]
        binds.append(
            Bind(self.workdir, str(self.workdir), "rw")
        )  # the sockets, at the same path on both sides
        # The container's own setup (host/container/spawn.py) on this machine's / as its image:
        # every capability kept (the init mounts loop devices), no user namespace, no pasta.
        spec = ContainerSpec(Path("/"), self.command, env=self.env, binds=binds, network=None,
                             user_namespace=False, all_capabilities=True, cwd=self.cwd)  # fmt: skip
        gate_read, gate_write = os.pipe()
        args, env = command_line(spec, self.workdir / "mnt", gate_read)
        try:
            self.process = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr,
                pass_fds=(gate_read,),
            )  # fmt: skip
        finally:
            os.close(gate_read)
        try:
            if self.veth:
                self._wait_for_namespace()
                self._add_veth()
        finally:
            with contextlib.suppress(OSError):
                os.write(gate_write, b"go\n")
            os.close(gate_write)

    def _wait_for_namespace(self, timeout: float = 10) -> None:
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{self.process.pid}/ns/net") != ours:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"the sandbox exited during its setup (status {self.process.returncode})")
            time.sleep(0.005)
        raise RuntimeError("the sandbox's network namespace did not appear")

    def _add_veth(self) -> None:
        self.host_veth = "alsb" + secrets.token_hex(4)
        subprocess.run(
            ["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0", "netns", str(self.process.pid)],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["ip", "link", "set", self.host_veth, "up"], check=True, capture_output=True)

    @property
    def pid(self) -> int | None:
        """The host PID of the sandbox's PID 1 (the command), once it runs."""
        if self.process is None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(children.read_text().split()[0])
        return None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for PID 1 to exit; its status as unshare reports it (negative: a signal).

        reboot(2) by the PID 1 of a PID namespace ends the namespace instead of the
        machine: RB_AUTOBOOT shows here as -SIGHUP, RB_POWER_OFF/RB_HALT_SYSTEM as -SIGINT.
        """
        self.returncode = self.process.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM to PID 1, SIGKILL after `timeout`; then remove every trace."""
        try:
            if self.process is not None and self.process.poll() is None:
                pid = self.pid
                if pid is not None and timeout > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(timeout)
                if self.process.poll() is None:
                    # --kill-child: PID 1 dies with unshare, and the kernel kills the rest.
                    self.process.kill()
                    self.process.wait(10)
            if self.process is not None:
                self.returncode = self.process.returncode
        finally:
            self._cleanup()
        return self.returncode

    def _cleanup(self) -> None:
        if self.host_veth:
            subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True)
            self.host_veth = None
        for loop in self.loops:
            detach_loop(loop.device)
        self.loops = []
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- looking inside ---

    def run(self, command: Sequence[str] | str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside the sandbox (its namespaces and root), e.g. `ip -j addr`."""
        if isinstance(command, str):
            command = ["/bin/sh", "-c", command]
        pid = self.pid
        if pid is None:
            raise RuntimeError("the sandbox is not running")
        args = [
            "nsenter",
            "--target",
            str(pid),
            "--mount",
            "--uts",
            "--net",
            "--pid",
            "--root",
            "--wd",
            *command,
        ]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(args, check=check, **kwargs)

    def read_file(self, path: str) -> str:
        return self.run(["cat", path]).stdout


class SandboxMachine(Machine):
    """The init as PID 1 of a `Sandbox`, driven through the `<uds>` layout at `box.base`.

    The box's command must run the init in dev transport mode on `box.base`
    (`ALEPH_VSOCK_UDS` is set for it here); the host services go on `<box.base>_53`.
    """

    def __init__(self, box: Sandbox):
        super().__init__(box.base)
        self.box = box
        box.env["ALEPH_VSOCK_UDS"] = box.base

    async def _launch(self) -> None:
        # Attaching loop devices and setting up the veth take a few blocking calls.
        await asyncio.to_thread(self.box.start)

    @property
    def running(self) -> bool:
        return self.box.process is not None and self.box.process.poll() is None

    async def wait(self) -> int | None:
        if self.box.process is None:
            return None
        # A Popen has no awaitable exit; poll it, a few milliseconds apart.
        while self.box.process.poll() is None:
            await asyncio.sleep(0.01)
        self.box.returncode = self.box.process.returncode
        return self.box.returncode

    async def kill(self) -> None:
        await asyncio.to_thread(self.box.stop, 0)
