#!/usr/bin/env python3
"""Benchmark: configuring the guest's network with our rtnetlink code, pyroute2, or `ip`.

Each variant runs in a fresh Python process inside a new network namespace with a veth
eth0 (as root): import cost, first configuration (what a boot pays), and the mean of
further configurations. Prints JSON. Usage: scripts/bench_network.py [repeats]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANT = r"""
import ipaddress, json, os, resource, subprocess, sys, time
variant, repeats = sys.argv[1], int(sys.argv[2])
subprocess.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"], check=True)
def cpu():
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime
# The init has its config (and ipaddress, socket, struct, logging) loaded before the network step.
import logging, socket, struct
import aleph_runtime.guest.config
IP4, GW4, IP6, GW6 = "10.77.0.5/24", "10.77.0.1", "fc00:77::5/64", "fc00:77::1"
wall0, cpu0 = time.perf_counter(), cpu()
if variant == "netlink":
    from aleph_runtime.guest.config import Network
    from aleph_runtime.guest.network import configure_network
    network = Network(ipaddress.IPv4Interface(IP4), ipaddress.IPv4Address(GW4), ipaddress.IPv6Interface(IP6),
                      ipaddress.IPv6Address(GW6), ("10.77.0.1",))
    def configure():
        configure_network(network, resolv_conf="/dev/null")
elif variant == "pyroute2":
    from pyroute2 import IPRoute
    def configure():
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("set", index=index, state="up")
            ipr.addr("replace", index=index, address="10.77.0.5", prefixlen=24)
            ipr.addr("replace", index=index, address="fc00:77::5", prefixlen=64, family=10, flags=0x02)
            ipr.route("replace", dst="default", gateway=GW4, oif=index)
            ipr.route("replace", dst="default", gateway=GW6, oif=index, family=10)
else:
    def configure():
        for args in (["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
                     ["addr", "replace", IP4, "dev", "eth0"], ["addr", "replace", IP6, "dev", "eth0", "nodad"],
                     ["route", "replace", "default", "via", GW4, "dev", "eth0"],
                     ["-6", "route", "replace", "default", "via", GW6, "dev", "eth0"]):
            subprocess.run(["ip", *args], check=True)
wall1, cpu1 = time.perf_counter(), cpu()
configure()
wall2, cpu2 = time.perf_counter(), cpu()
for _ in range(repeats):
    configure()
wall3, cpu3 = time.perf_counter(), cpu()
print(json.dumps({
    "import_ms": round((wall1 - wall0) * 1000, 2),
    "first_configure_wall_ms": round((wall2 - wall1) * 1000, 2),
    "first_configure_cpu_ms": round((cpu2 - cpu1) * 1000, 2),
    "boot_total_cpu_ms": round((cpu2 - cpu0) * 1000, 2),
    "configure_wall_ms_mean": round((wall3 - wall2) * 1000 / repeats, 3),
    "configure_cpu_ms_mean": round((cpu3 - cpu2) * 1000 / repeats, 3),
}))
"""


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    env = {**os.environ, "PYTHONPATH": os.path.join(REPOSITORY, "runtime")}
    results = {}
    for variant in ("netlink", "pyroute2", "ip"):
        output = subprocess.run(
            ["unshare", "--net", sys.executable, "-c", VARIANT, variant, str(repeats)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[variant] = json.loads(output)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
