"""Dev mode's container, the parts that need no namespace: ID maps, pasta's command line,
this machine's resolvers."""

from __future__ import annotations

from pathlib import Path

from aleph_runtime.host.container.network import NetworkSpec, host_resolvers, pasta_command
from aleph_runtime.host.container.rootfs import ROOT_ID_BASE, IdMap


def test_ids_shift_into_the_range_and_clamp_outside_it():
    ids = IdMap(ROOT_ID_BASE, ROOT_ID_BASE, 65536)
    assert (ids.host_uid(0), ids.host_uid(33), ids.host_gid(65534)) == (
        ROOT_ID_BASE,
        ROOT_ID_BASE + 33,
        ROOT_ID_BASE + 65534,
    )
    # An ID the range does not hold becomes the container's root, never a host ID.
    assert ids.host_uid(70000) == ROOT_ID_BASE
    assert IdMap(1000, 1000, 1).host_uid(5) == 1000


def test_pasta_closes_the_host_loopback_and_takes_nothing_inbound(tmp_path):
    command = pasta_command(NetworkSpec("172.16.0.2/24", "172.16.0.1"), 4242, tmp_path / "pid")
    assert command[-1] == "4242"
    for option in ("--no-map-gw", "--ipv4-only", "--no-dhcp"):
        assert option in command
    for option in ("--tcp-ports", "--udp-ports", "--tcp-ns", "--udp-ns"):
        assert command[command.index(option) + 1] == "none"
    assert command[command.index("--address") + 1 : command.index("--address") + 4] == [
        "172.16.0.2",
        "--netmask",
        "24",
    ]
    assert command[command.index("--gateway") + 1] == "172.16.0.1"
    # The init configures eth0 itself; a bare command (a pip build) has pasta do it.
    assert "--config-net" not in command
    bare = pasta_command(NetworkSpec("172.16.0.2/24", "172.16.0.1", configure=True), 4242, tmp_path / "pid")
    assert "--config-net" in bare and bare[-1] == "4242"


def test_host_resolvers_split_off_the_loopback_ones(tmp_path: Path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver 2001:db8::1\n"
        "nameserver not-an-address\nsearch example\n"
    )
    assert host_resolvers(str(resolv)) == (["192.0.2.53"], ["127.0.0.53"])
    assert host_resolvers(str(tmp_path / "missing")) == ([], [])


def test_prune_removes_the_trees_unused_for_days(tmp_path: Path):
    import os
    import time

    from aleph_runtime.host.container.rootfs import COMPLETE, prune

    old, recent, partial, current = (tmp_path / name for name in ("old", "recent", ".x.1.partial", "current"))
    for tree in (old, recent, current):
        (tree / "usr").mkdir(parents=True)
        (tree / COMPLETE).write_text("sha")
    (partial / "usr").mkdir(parents=True)
    long_ago = time.time() - 10 * 86400
    os.utime(old / COMPLETE, (long_ago, long_ago))
    os.utime(partial, (long_ago, long_ago))
    os.utime(current / COMPLETE, (long_ago, long_ago))  # in use now: kept whatever its stamp
    assert sorted(prune(tmp_path, keep=current)) == sorted([old, partial])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "recent"]
