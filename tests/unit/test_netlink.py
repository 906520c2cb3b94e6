"""rtnetlink message encoding and resolv.conf, without root (the kernel's side is in tests/integration)."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from aleph_runtime.guest import network


def test_resolv_conf_written_in_place(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("old\n")
    inode = path.stat().st_ino
    network.write_resolv_conf(("10.0.0.1", "fc00::1"), str(path))
    assert path.read_text() == "nameserver 10.0.0.1\nnameserver fc00::1\n"
    assert path.stat().st_ino == inode  # a bind-mounted file stays the same file


def test_dangling_resolv_conf_symlink_is_replaced(tmp_path):
    path = tmp_path / "resolv.conf"
    os.symlink(tmp_path / "missing" / "stub-resolv.conf", path)
    network.write_resolv_conf(("9.9.9.9",), str(path))
    assert not path.is_symlink()
    assert path.read_text() == "nameserver 9.9.9.9\n"


def test_symlink_to_a_writable_file_is_followed(tmp_path):
    target = tmp_path / "real"
    target.write_text("")
    os.symlink(target, tmp_path / "resolv.conf")
    network.write_resolv_conf(("9.9.9.9",), str(tmp_path / "resolv.conf"))
    assert target.read_text() == "nameserver 9.9.9.9\n"


def _attrs(body: bytes, offset: int) -> dict[int, bytes]:
    attrs = {}
    while offset < len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        attrs[kind] = body[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def test_ipv4_address_request():
    request = network.add_address(7, "eth0", ipaddress.IPv4Interface("10.1.2.3/24"))
    family, prefix, _flags, _scope, index = struct.unpack_from("=BBBBI", request.body)
    assert (family, prefix, index) == (socket.AF_INET, 24, 7)
    attrs = _attrs(request.body, 8)
    assert attrs[network.IFA_LOCAL] == attrs[network.IFA_ADDRESS] == bytes([10, 1, 2, 3])


def test_ipv6_address_request_skips_dad():
    request = network.add_address(7, "eth0", ipaddress.IPv6Interface("fc00::5/64"))
    family, prefix, flags, _scope, _index = struct.unpack_from("=BBBBI", request.body)
    assert (family, prefix) == (socket.AF_INET6, 64)
    assert flags & network.IFA_F_NODAD


def test_default_route_request():
    request = network.add_default_route(7, "eth0", ipaddress.IPv4Address("10.1.2.1"), onlink=True)
    fields = struct.unpack_from("=BBBBBBBBI", request.body)
    assert fields[0] == socket.AF_INET and fields[1] == 0  # default: dst_len 0
    assert fields[4] == network.RT_TABLE_MAIN and fields[8] == network.RTNH_F_ONLINK
    attrs = _attrs(request.body, 12)
    assert attrs[network.RTA_GATEWAY] == bytes([10, 1, 2, 1])
    assert struct.unpack("=I", attrs[network.RTA_OIF])[0] == 7
    assert request.flags & network.NLM_F_REPLACE
