"""The VM's network, configured over rtnetlink from Python: no `ip` process, no pyroute2.

One NETLINK_ROUTE socket, one batch of requests (link up, addresses, default routes)
sent in a single write and acknowledged one by one: a few hundred microseconds in all,
against tens of milliseconds for spawning `ip` once per step (see scripts/bench_network.py).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct

from aleph_runtime.guest.config import ConfigError, Network

logger = logging.getLogger(__name__)

INTERFACE = "eth0"

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFF_UP = 0x1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4

#: What the kernel answers IPv6 requests when it was built or booted without IPv6.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT)

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


class _Request:
    """One rtnetlink request (a plain class: a dataclass costs a millisecond to import)."""

    __slots__ = ("body", "flags", "kind", "what")

    def __init__(self, what: str, kind: int, flags: int, body: bytes):
        self.what = what
        self.kind = kind
        self.flags = flags
        self.body = body


def link_up(index: int, name: str) -> _Request:
    return _Request(
        f"setting {name} up", RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    )


def add_address(
    index: int, name: str, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> _Request:
    packed = interface.ip.packed
    if interface.version == 4:
        body = _IFADDRMSG.pack(
            socket.AF_INET, interface.network.prefixlen, IFA_F_PERMANENT, RT_SCOPE_UNIVERSE, index
        )
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    else:
        # No duplicate address detection: the supervisor assigns the address, and DAD
        # would keep it "tentative" (unusable) for a second or more after boot.
        flags = IFA_F_PERMANENT | IFA_F_NODAD
        body = _IFADDRMSG.pack(socket.AF_INET6, interface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_ADDRESS, packed)
    return _Request(f"adding {interface} to {name}", RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)


def add_default_route(
    index: int, name: str, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address, onlink: bool = False
) -> _Request:
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        RTNH_F_ONLINK if onlink else 0,
    )
    body += _attr(RTA_GATEWAY, gateway.packed) + _attr(RTA_OIF, struct.pack("=I", index))
    return _Request(
        f"adding the default route via {gateway} on {name}", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body
    )


def netlink_transaction(requests: list[_Request]) -> list[int]:
    """Send the requests in one write, in order; return each one's errno (0 on success)."""
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    ) as sock:
        sock.bind((0, 0))
        batch = bytearray()
        for seq, request in enumerate(requests, start=1):
            batch += _NLMSGHDR.pack(
                _NLMSGHDR.size + len(request.body),
                request.kind,
                NLM_F_REQUEST | NLM_F_ACK | request.flags,
                seq,
                0,
            )
            batch += request.body
        sock.sendto(bytes(batch), (0, 0))
        results: dict[int, int] = {}
        while len(results) < len(requests):
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    results[seq] = -error
                elif kind == NLMSG_DONE:
                    results.setdefault(seq, 0)
                offset += (length + 3) & ~3
    return [results.get(seq, 0) for seq in range(1, len(requests) + 1)]


def _run(requests: list[_Request]) -> list[int]:
    errors = netlink_transaction(requests)
    for request, error in zip(requests, errors, strict=True):
        if error:
            logger.debug("%s failed: %s", request.what, os.strerror(error))
    return errors


def _fail(request: _Request, error: int) -> ConfigError:
    return ConfigError(f"the network cannot be configured: {request.what} failed ({os.strerror(error)})")


def configure_network(network: Network, resolv_conf: str = "/etc/resolv.conf") -> None:
    """Loopback up; eth0 up with its IPv4 and IPv6 addresses and default routes;
    resolv.conf from the DNS servers. Without eth0 it logs and returns.

    Raises ConfigError naming the step that the kernel refused.
    """
    requests = [link_up(socket.if_nametoindex("lo"), "lo")] if _has_interface("lo") else []
    try:
        index = socket.if_nametoindex(INTERFACE)
    except OSError:
        index = None
        logger.warning("no %s interface: the program runs without network", INTERFACE)

    routes: list[_Request] = []
    if index is not None:
        requests.append(link_up(index, INTERFACE))
        if network.ipv4 is not None:
            requests.append(add_address(index, INTERFACE, network.ipv4))
        if network.ipv6 is not None:
            requests.append(add_address(index, INTERFACE, network.ipv6))
        if network.ipv4_gateway is not None:
            routes.append(add_default_route(index, INTERFACE, network.ipv4_gateway))
        if network.ipv6_gateway is not None:
            routes.append(add_default_route(index, INTERFACE, network.ipv6_gateway))

    if requests or routes:
        all_requests = requests + routes
        errors = _run(all_requests)
        # `errors` goes on with the routes' answers, handled below.
        for request, error in zip(requests, errors, strict=False):
            if error in _NO_IPV6 and request.kind == RTM_NEWADDR and ":" in request.what:
                logger.warning("%s failed: this kernel has no IPv6 (%s)", request.what, os.strerror(error))
            elif error:
                raise _fail(request, error)
        retry = []
        for request, error in zip(routes, errors[len(requests) :], strict=True):
            if error in _NO_IPV6 and ":" in request.what:
                logger.warning("%s failed: this kernel has no IPv6 (%s)", request.what, os.strerror(error))
            elif error == errno.ENETUNREACH:
                # The gateway is outside the assumed prefix: it is on the link all the same.
                gateway = ipaddress.ip_address(request.what.split(" via ")[1].split(" ")[0])
                retry.append(add_default_route(index, INTERFACE, gateway, onlink=True))
            elif error:
                raise _fail(request, error)
        if retry:
            for request, error in zip(retry, _run(retry), strict=True):
                if error:
                    raise _fail(request, error)
        if index is not None:
            logger.info(
                "%s: %s",
                INTERFACE,
                ", ".join(str(x) for x in (network.ipv4, network.ipv6) if x) or "no address",
            )

    if network.dns_servers:
        write_resolv_conf(network.dns_servers, resolv_conf)


def _has_interface(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def write_resolv_conf(servers: tuple[str, ...] | list[str], path: str = "/etc/resolv.conf") -> None:
    """Written in place (not renamed over): resolv.conf may be a bind mount or a symlink.

    A symlink whose target cannot be written (systemd-resolved's stub, absent in a VM)
    is replaced by a plain file.
    """
    content = "".join(f"nameserver {server}\n" for server in servers)
    try:
        with open(path, "w") as file:
            file.write(content)
    except FileNotFoundError:
        if not os.path.islink(path):
            raise
        os.unlink(path)
        with open(path, "w") as file:
            file.write(content)
    logger.info("DNS servers: %s", ", ".join(servers))
