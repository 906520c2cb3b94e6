import ipaddress

import pytest

from aleph_runtime.guest.config import ConfigError, Encoding, Interface, parse_config
from aleph_runtime.host.program import program_config

VM_HASH = "a" * 64


def v1(**overrides):
    config = {
        "input_data": None,
        "interface": "asgi",
        "vm_hash": VM_HASH,
        "encoding": "plain",
        "entrypoint": "main:app",
        "code": b"app = None",
        "ip": "172.16.4.2",
        "route": "172.16.4.1",
        "dns_servers": ["9.9.9.9"],
        "volumes": [{"mount": "/opt/venv", "device": "vdc", "read_only": True}],
        "variables": {"A": "1"},
    }
    config.update(overrides)
    return config


def test_v1_config_gets_a_24_when_the_supervisor_sends_no_mask():
    config = parse_config(v1())
    assert config.interface is Interface.ASGI and config.encoding is Encoding.PLAIN
    assert config.network.ipv4 == ipaddress.IPv4Interface("172.16.4.2/24")
    assert config.network.ipv4_gateway == ipaddress.IPv4Address("172.16.4.1")
    assert config.volumes[0].mount == "/opt/venv" and config.volumes[0].read_only
    assert config.variables == {"A": "1"}
    assert config.authorized_keys == ()


def test_v2_config_adds_ipv6_and_keys_and_ignores_unknown_keys():
    config = parse_config(
        v1(
            ipv6="fc00:1:2:3::2/64",
            ipv6_gateway="fc00:1:2:3::1",
            authorized_keys=["ssh-ed25519 AAAA x"],
            future=1,
        )
    )
    assert config.network.ipv6 == ipaddress.IPv6Interface("fc00:1:2:3::2/64")
    assert config.authorized_keys == ("ssh-ed25519 AAAA x",)


def test_hostname_is_base32_of_the_hash():
    config = parse_config(program_config(b"x", "main:app", vm_hash="00" * 32))
    assert config.hostname == "a" * 52
    assert len(parse_config(v1()).hostname) <= 63


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"vm_hash": "xyz"}, "vm_hash"),
        ({"interface": "cgi"}, "interface"),
        ({"encoding": "rar"}, "encoding"),
        ({"entrypoint": 3}, "entrypoint"),
        ({"code": None}, "code"),
        ({"ip": "300.1.1.1"}, "ip"),
        ({"ipv6": "not-an-ip"}, "ipv6"),
        ({"dns_servers": ["dns.example"]}, "dns_servers[0]"),
        ({"volumes": [{"mount": "opt", "device": "vdc", "read_only": True}]}, "volumes[0].mount"),
        ({"volumes": [{"mount": "/x", "device": "../sda", "read_only": True}]}, "volumes[0].device"),
        ({"volumes": [{"mount": "/x", "device": "vdc"}]}, "read_only"),
        ({"variables": {"A": 1}}, "variables.A"),
        ({"encoding": "squashfs", "code": None}, "/opt/code"),
    ],
)
def test_bad_fields_are_named(overrides, field):
    with pytest.raises(ConfigError) as error:
        parse_config(v1(**overrides))
    assert field in str(error.value)


def test_missing_field_and_non_map():
    config = v1()
    del config["vm_hash"]
    with pytest.raises(ConfigError, match="'vm_hash'"):
        parse_config(config)
    with pytest.raises(ConfigError, match="must be a map"):
        parse_config([1, 2])


@pytest.mark.parametrize("name", ["tar", "tar.gz", "tar.gzip", "tgz"])
def test_tar_encoding_names(name):
    assert parse_config(v1(encoding=name)).encoding is Encoding.TAR


def test_binary_interface_is_executable():
    assert parse_config(v1(interface="binary")).interface is Interface.EXECUTABLE


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"vm_hash": VM_HASH + "\n"}, "vm_hash"),
        ({"variables": {"A\n": "1"}}, "variables"),
        ({"volumes": [{"mount": "/opt/venv", "device": "vdc\n", "read_only": True}]}, "device"),
    ],
)
def test_a_trailing_newline_is_not_accepted(overrides, field):
    """A regular expression ending in `$` would take a final newline; the checks do not."""
    with pytest.raises(ConfigError, match=field):
        parse_config(v1(**overrides))


@pytest.mark.parametrize("server", [134744072, b"8.8.8.8", None, ["8.8.8.8"], "8.8.8.8\nnameserver 6.6.6.6"])
def test_dns_servers_must_be_ip_address_strings(server):
    # ip_address(134744072) is 8.8.8.8: an int used to reach resolv.conf as a number.
    with pytest.raises(ConfigError, match=r"dns_servers\[1\]"):
        parse_config(v1(dns_servers=["9.9.9.9", server]))


def test_too_many_dns_servers_are_refused():
    with pytest.raises(ConfigError, match="dns_servers"):
        parse_config(v1(dns_servers=["9.9.9.9"] * 17))


@pytest.mark.parametrize("entrypoint", ["main\n:app", "main:app\n"])
def test_an_entrypoint_with_a_trailing_newline_is_refused(entrypoint):
    from aleph_runtime.guest.code import split_entrypoint

    with pytest.raises(ConfigError):
        split_entrypoint(entrypoint, Encoding.PLAIN)


def _device(name):
    return {"volumes": [{"mount": "/opt/venv", "device": name, "read_only": True}]}


@pytest.mark.parametrize(
    "overrides, accepted",
    [
        (_device("vdc"), True),
        (_device("vd1"), True),
        (_device("a" * 16), True),
        (_device("v"), False),
        (_device("a" * 17), False),
        (_device("1vd"), False),
        (_device("Vdc"), False),
        (_device("vd_c"), False),
        (_device("vdç"), False),
        (_device("vd²"), False),
        ({"vm_hash": "0123456789abcdefABCDEF" + "0" * 42}, True),
        ({"vm_hash": "g" * 64}, False),
        ({"vm_hash": "a" * 63}, False),
        ({"vm_hash": "a" * 65}, False),
        ({"vm_hash": "0x" + "a" * 62}, False),
        ({"vm_hash": "a_" * 32}, False),
        ({"vm_hash": "\u0661" * 64}, False),  # Arabic-Indic digits: int() would take them
        ({"variables": {"_A9": "1"}}, True),
        ({"variables": {"9A": "1"}}, False),
        ({"variables": {"A-B": "1"}}, False),
        ({"variables": {"É": "1"}}, False),
        ({"variables": {"": "1"}}, False),
    ],
)
def test_names_and_hashes_are_checked_exactly(overrides, accepted):
    """Device names are [a-z][a-z0-9]{1,15}, hashes 64 hex digits, variables ASCII identifiers."""
    if accepted:
        parse_config(v1(**overrides))
    else:
        with pytest.raises(ConfigError):
            parse_config(v1(**overrides))


@pytest.mark.parametrize(
    "entrypoint, accepted",
    [
        ("main:app", True),
        ("pkg.sub_2.main:App.attr", True),
        ("pkg..main:app", False),
        (".main:app", False),
        ("main.:app", False),
        ("1main:app", False),
        ("main:app-x", False),
        ("mäin:app", False),
        ("main:", False),
    ],
)
def test_entrypoint_paths_are_ascii_dotted_identifiers(entrypoint, accepted):
    from aleph_runtime.guest.code import split_entrypoint

    if accepted:
        assert split_entrypoint(entrypoint, Encoding.ZIP) == tuple(entrypoint.split(":"))
    else:
        with pytest.raises(ConfigError):
            split_entrypoint(entrypoint, Encoding.ZIP)


@pytest.mark.parametrize(
    ("entrypoint", "encoding", "expected"),
    [
        ("main", Encoding.ZIP, ("main", "app")),
        ("pkg.server", Encoding.SQUASHFS, ("pkg.server", "app")),
        ("main", Encoding.TAR, ("main", "app")),
        ("main:api", Encoding.ZIP, ("main", "api")),
        ("handler", Encoding.PLAIN, ("main", "handler")),
    ],
)
def test_an_entrypoint_without_a_colon_names_the_module_of_an_archive(entrypoint, encoding, expected):
    from aleph_runtime.guest.code import split_entrypoint

    assert split_entrypoint(entrypoint, encoding) == expected
