"""eth0 (one end of a veth pair), loopback, routes and resolv.conf, checked with the kernel's view."""

from __future__ import annotations

import json

import pytest

from tests.integration.nsguest import host_file_snapshot, python_sandbox, run_python

pytestmark = pytest.mark.root

SCRIPT = r"""
import ipaddress, sys, time
from aleph_runtime.guest.config import Network
from aleph_runtime.guest.network import configure_network
network = Network(
    ipaddress.IPv4Interface("10.77.0.5/24"), ipaddress.IPv4Address("10.77.0.1"),
    ipaddress.IPv6Interface("fc00:77::5/64"), ipaddress.IPv6Address("fc00:77::1"), ("10.77.0.1", "fc00:77::1"),
)
configure_network(network)
print("READY", flush=True)
time.sleep(60)
"""


def _addresses(box, name):
    links = json.loads(box.run(["ip", "-j", "addr", "show", "dev", name]).stdout)
    return links[0], {(info["local"], info["prefixlen"]) for info in links[0]["addr_info"]}


def test_eth0_addresses_routes_and_resolv_conf():
    before = host_file_snapshot()
    box = python_sandbox(SCRIPT, veth=True)
    with box:
        line = box.process.stdout.readline()
        assert line == b"READY\n", box.process.stderr.read1().decode()
        eth0, addresses = _addresses(box, "eth0")
        assert "UP" in eth0["flags"]
        assert ("10.77.0.5", 24) in addresses
        assert ("fc00:77::5", 64) in addresses
        ipv6 = next(info for info in eth0["addr_info"] if info["local"] == "fc00:77::5")
        assert not ipv6.get("tentative"), "no duplicate address detection delay"
        lo, lo_addresses = _addresses(box, "lo")
        assert "UP" in lo["flags"] and ("127.0.0.1", 8) in lo_addresses
        routes = json.loads(box.run(["ip", "-j", "route"]).stdout)
        assert {"dst": "default", "gateway": "10.77.0.1", "dev": "eth0"}.items() <= routes[0].items()
        routes6 = json.loads(box.run(["ip", "-j", "-6", "route"]).stdout)
        assert any(
            r["dst"] == "default" and r.get("gateway") == "fc00:77::1" and r["dev"] == "eth0" for r in routes6
        )
        assert box.read_file("/etc/resolv.conf") == "nameserver 10.77.0.1\nnameserver fc00:77::1\n"
    assert host_file_snapshot() == before


def test_no_eth0_is_logged_and_not_fatal():
    before = host_file_snapshot()
    code = r"""
import ipaddress, logging, socket
logging.basicConfig(level=logging.INFO)
from aleph_runtime.guest.config import Network
from aleph_runtime.guest.network import configure_network
configure_network(Network(ipaddress.IPv4Interface("10.77.0.5/24"), ipaddress.IPv4Address("10.77.0.1"), dns_servers=("10.77.0.1",)))
print(open("/etc/resolv.conf").read(), end="")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "no eth0 interface" in result.stderr
    assert result.stdout == "nameserver 10.77.0.1\n"
    assert host_file_snapshot() == before


def test_gateway_outside_the_prefix_is_added_on_link():
    code = r"""
import ipaddress, json, subprocess
from aleph_runtime.guest.config import Network
from aleph_runtime.guest.network import configure_network
configure_network(Network(ipaddress.IPv4Interface("10.77.0.5/24"), ipaddress.IPv4Address("10.78.0.1")))
print(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True).stdout)
"""
    result = run_python(code, veth=True)
    assert result.returncode == 0, result.stderr
    routes = json.loads(result.stdout)
    default = next(route for route in routes if route["dst"] == "default")
    assert default["gateway"] == "10.78.0.1" and "onlink" in default["flags"]
