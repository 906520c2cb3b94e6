"""The container's network, like a VM's: pasta (Debian's `passt` package) on its namespace.

pasta rather than slirp4netns: it gives the namespace the VM's own addresses (the
config's 172.16.0.2/24 via 172.16.0.1, which QEMU's user network also serves), where
slirp4netns imposes its gateway at .2 and its DNS at .3 of the subnet; it forwards
through ordinary host sockets (no emulated TCP stack, no copy through a second one);
it closes the host's loopback with two switches (`--no-map-gw`, and `-T none -U none`,
no loopback ports forwarded from the namespace) where slirp4netns has one
(`--disable-host-loopback`); and podman, Debian's rootless container tool, uses it.

The init configures eth0 itself from the config (address, route, resolv.conf), as in
a VM; pasta only provides the tap device and the translation. The config's DNS servers
are this machine's own resolvers (`host_resolvers`), reached through pasta like any
address; one on this machine's loopback (systemd-resolved's 127.0.0.53) is out of reach,
and the container goes without DNS (this pasta's --dns-forward answered nothing here).
Nothing inbound reaches the container (`-t none -u none`) but `tcp_forwards` (`--debug`'s
port, from the host's 127.0.0.1 only): the host talks to the init over its Unix sockets, as
the supervisor does over vsock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from aleph_runtime.host.children import die_with_parent

#: The interface the init configures (guest/network.py's INTERFACE).
INTERFACE = "eth0"


@dataclass(frozen=True)
class NetworkSpec:
    """What the config gives the guest: its IPv4 address (with prefix) and gateway."""

    ip: str = "172.16.0.2/24"
    gateway: str = "172.16.0.1"
    tcp_forwards: tuple[int, ...] = ()
    """Ports of the host's 127.0.0.1 forwarded to the same port of the namespace (`--debug`)."""
    configure: bool = False
    """pasta itself gives eth0 its address and default route: for a command that is not the
    init (pip building a packages volume), which would leave eth0 down."""


def host_resolvers(resolv_conf: str = "/etc/resolv.conf") -> tuple[list[str], list[str]]:
    """(this machine's IPv4 resolvers the container can reach, those on its loopback)."""
    reachable, loopback = [], []
    try:
        lines = Path(resolv_conf).read_text().splitlines()
    except OSError:
        return reachable, loopback
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if address.version == 4:
                (loopback if address.is_loopback else reachable).append(str(address))
    return reachable, loopback


def resolv_conf(resolv_conf: str = "/etc/resolv.conf") -> str:
    """A resolv.conf naming this machine's resolvers the container reaches (what the init
    writes from the config, for a command that is not the init)."""
    reachable, _ = host_resolvers(resolv_conf)
    return "".join(f"nameserver {address}\n" for address in reachable)


def missing() -> str | None:
    """Why the container cannot have a network here, or None."""
    if shutil.which("pasta") is None:
        return ("pasta is not installed: install Debian's passt package (scripts/setup.sh does); "
                "the program runs without network")  # fmt: skip
    return None


def pasta_command(spec: NetworkSpec, pid: int, pid_file: Path) -> list[str]:
    iface = ipaddress.ip_interface(spec.ip if "/" in spec.ip else f"{spec.ip}/24")
    command = [
        # Errors on stderr (to our log) rather than only to a syslog that may not be there.
        "pasta", "--quiet", "--stderr", "--ipv4-only",
        "--ns-ifname", INTERFACE, "--address", str(iface.ip), "--netmask", str(iface.network.prefixlen),
        "--gateway", spec.gateway,
        # The host's loopback stays out of reach: no gateway-to-loopback mapping, no port
        # forwarded from the namespace's loopback to the host's, and nothing inbound.
        "--no-map-gw", "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none",
        # Inbound, only what `tcp_forwards` names (--debug's port), on the host's loopback.
        "--tcp-ports", ",".join(f"127.0.0.1/{port}" for port in spec.tcp_forwards) or "none",
        "--no-dhcp", "--dns", "none",
        "--pid", str(pid_file),
    ]  # fmt: skip
    if spec.configure:
        command.append("--config-net")
    if os.geteuid() == 0:
        # Started by root, pasta would become `nobody`, who may not enter a namespace owned
        # by root; it drops its capabilities and seccomp-confines itself once attached.
        command += ["--runas", "0"]
    command.append(str(pid))
    return command


class Pasta:
    """One pasta process attached to a container's network namespace, in the foreground
    (this pasta, daemonized, dies at its first connection here), a child of ours."""

    def __init__(self, spec: NetworkSpec, pid_file: Path):
        self.spec = spec
        self.pid_file = pid_file
        self.log_file = pid_file.with_suffix(".log")
        self.process: asyncio.subprocess.Process | None = None

    async def attach(
        self, target_pid: int, join_user_namespace: bool = True, timeout: float = 10
    ) -> str | None:
        """Start pasta on `target_pid`'s network namespace; return once its tap device is
        there (pasta writes its PID file then), or why it failed."""
        command = pasta_command(self.spec, target_pid, self.pid_file)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        try:
            with open(self.log_file, "wb") as log:
                self.process = await asyncio.create_subprocess_exec(
                    *command, "--foreground",
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
                )  # fmt: skip
        except OSError as error:
            return f"pasta could not start ({error.strerror}): the program runs without network"
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.pid_file.exists():
            if self.process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                why = self._last_line()  # before stop() removes the log
                self.stop()
                if "tun" in why:
                    why += "; /dev/net/tun must be open to this user, as Debian makes it (mode 0666)"
                return f"pasta failed ({why}): the program runs without network"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.process.wait()), 0.002)
        return None

    def _last_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        lines = [line.strip() for line in lines if line.strip() and "syslog" not in line]
        if lines:
            return lines[-1]
        status = self.process.returncode if self.process is not None else None
        return f"status {status}" if status is not None else "no tap device in time"

    def stop(self) -> None:
        """pasta outlives the namespace it serves (it holds it): end it."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        for path in (self.pid_file, self.log_file):
            with contextlib.suppress(OSError):
                path.unlink()

    async def wait(self) -> None:
        if self.process is not None:
            await self.process.wait()
