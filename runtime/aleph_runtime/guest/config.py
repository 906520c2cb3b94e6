"""The program's configuration, as the supervisor sends it, parsed into typed objects.

Validation is explicit code, never `assert`: the init runs under `python3 -OO`. Every
error is a ConfigError whose message is one sentence naming the field, which the init
sends back as `{"success": false, "error": ...}`.
"""

from __future__ import annotations

import ipaddress

from aleph_runtime.guest.record import Record
from aleph_runtime.protocol import ENCODING_NAMES, Encoding, Interface, hostname

__all__ = ["Config", "ConfigError", "Encoding", "Interface", "Network", "Volume", "parse_config"]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the field and says why.

    `detail` carries what the supervisor shows as the traceback when the cause lies in
    the program (its own import error, say) rather than in the init.
    """

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


#: A vm_hash's characters, and a percent escape's (guest/asgi.py).
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
#: resolv.conf uses three; a few more are kept for whoever reads the file differently.
MAX_DNS_SERVERS = 16


class Volume(Record):
    __slots__ = ("device", "mount", "read_only")

    def __init__(self, mount: str, device: str, read_only: bool):
        self._fill(locals())

    #: Absolute mount point inside the VM, e.g. /opt/venv.
    mount: str
    #: Block device name under /dev, e.g. vdc.
    device: str
    read_only: bool


class Network(Record):
    __slots__ = ("dns_servers", "ipv4", "ipv4_gateway", "ipv6", "ipv6_gateway")

    def __init__(
        self,
        ipv4: ipaddress.IPv4Interface | None = None,
        ipv4_gateway: ipaddress.IPv4Address | None = None,
        ipv6: ipaddress.IPv6Interface | None = None,
        ipv6_gateway: ipaddress.IPv6Address | None = None,
        dns_servers: tuple[str, ...] = (),
    ):
        self._fill(locals())

    #: The address with its prefix; /24 when the supervisor sent none (as it does today).
    ipv4: ipaddress.IPv4Interface | None
    ipv4_gateway: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Interface | None
    ipv6_gateway: ipaddress.IPv6Address | None
    dns_servers: tuple[str, ...]


class Config(Record):
    __slots__ = (
        "authorized_keys",
        "code",
        "encoding",
        "entrypoint",
        "input_data",
        "interface",
        "network",
        "variables",
        "vm_hash",
        "volumes",
    )  # fmt: skip

    def __init__(
        self,
        vm_hash: str,
        interface: Interface,
        encoding: Encoding,
        entrypoint: str,
        code: bytes | None,
        input_data: bytes | None,
        network: Network,
        volumes: tuple[Volume, ...] = (),
        variables: dict[str, str] | None = None,
        authorized_keys: tuple[str, ...] = (),
    ):
        variables = {} if variables is None else variables
        self._fill(locals())

    vm_hash: str
    interface: Interface
    encoding: Encoding
    entrypoint: str
    code: bytes | None
    input_data: bytes | None
    network: Network
    volumes: tuple[Volume, ...]
    variables: dict[str, str]
    authorized_keys: tuple[str, ...]

    @property
    def hostname(self) -> str:
        return hostname(self.vm_hash)


def _is_device_name(name: str) -> bool:
    """[a-z][a-z0-9]{1,15}, as block devices are named (vdb, vdc...); by hand, since a
    regular expression's compilation would cost more at every boot than all the checks."""
    return 2 <= len(name) <= 16 and name.isascii() and name.isalnum() and name[0].isalpha() and name.islower()


def is_ascii_identifier(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]*: a variable's name, or one part of a module path."""
    return name.isascii() and name.isidentifier()


def _require(data: dict, key: str, kinds: type | tuple[type, ...], optional: bool = False):
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"the configuration has no '{key}' field")
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        names = " or ".join(kind.__name__ for kind in _as_tuple(kinds))
        raise ConfigError(f"the field '{key}' must be {names}, not {type(value).__name__}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _parse_volume(index: int, raw: object) -> Volume:
    where = f"volumes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"the field '{where}' must be a map with mount, device and read_only")
    try:
        mount = _require(raw, "mount", str)
        device = _require(raw, "device", str)
        read_only = _require(raw, "read_only", bool)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    if not mount.startswith("/") or "\x00" in mount or ".." in mount.split("/"):
        raise ConfigError(f"the field '{where}.mount' must be an absolute path without '..', not {mount!r}")
    if not _is_device_name(device):
        raise ConfigError(f"the field '{where}.device' must be a device name such as 'vdc', not {device!r}")
    return Volume(mount=mount.rstrip("/") or "/", device=device, read_only=read_only)


def _address(data: dict, key: str, parse, what: str):
    """The optional address field `key` parsed by `parse`; None when absent or empty."""
    raw = _require(data, key, str, optional=True)
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"the field '{key}' must be {what}, not {raw!r}") from None


def _parse_network(data: dict) -> Network:
    # The supervisor strips the IPv4 mask; the init has always assumed /24.
    ipv4 = _address(
        data, "ip", lambda raw: ipaddress.IPv4Interface(raw if "/" in raw else f"{raw}/24"), "an IPv4 address"
    )
    ipv4_gateway = _address(data, "route", ipaddress.IPv4Address, "an IPv4 address")
    ipv6 = _address(data, "ipv6", ipaddress.IPv6Interface, "an IPv6 address with its prefix")
    ipv6_gateway = _address(data, "ipv6_gateway", ipaddress.IPv6Address, "an IPv6 address")
    servers = _require(data, "dns_servers", list, optional=True) or []
    if len(servers) > MAX_DNS_SERVERS:
        raise ConfigError(
            f"the field 'dns_servers' has {len(servers)} entries; at most {MAX_DNS_SERVERS} are accepted"
        )
    for index, server in enumerate(servers):
        try:
            if not isinstance(server, str):
                raise TypeError  # ip_address() takes an int too, which no resolv.conf can hold
            ipaddress.ip_address(server)
        except (TypeError, ValueError):
            raise ConfigError(
                f"the field 'dns_servers[{index}]' must be an IP address, not {server!r}"
            ) from None
    return Network(ipv4, ipv4_gateway, ipv6, ipv6_gateway, tuple(servers))


def parse_config(data: object) -> Config:
    """Validate a decoded V1 or V2 config map; unknown extra keys are ignored."""
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a map, not {type(data).__name__}")

    vm_hash = _require(data, "vm_hash", str)
    if len(vm_hash) != 64 or not HEX_DIGITS.issuperset(vm_hash):
        raise ConfigError(f"the field 'vm_hash' must be 64 hexadecimal characters, not {vm_hash[:80]!r}")

    raw_interface = _require(data, "interface", str)
    interface = Interface.named(raw_interface)
    if interface is None:
        raise ConfigError(f"the field 'interface' must be 'asgi' or 'executable', not {raw_interface!r}")

    raw_encoding = _require(data, "encoding", str)
    encoding = Encoding.named(raw_encoding)
    if encoding is None:
        names = ", ".join(sorted(ENCODING_NAMES))
        raise ConfigError(f"the field 'encoding' must be one of {names}, not {raw_encoding!r}")

    entrypoint = _require(data, "entrypoint", str)
    if not entrypoint.strip():
        raise ConfigError("the field 'entrypoint' is empty")

    code = _require(data, "code", (bytes, str), optional=True)
    if isinstance(code, str):
        code = code.encode()  # plain code is sometimes sent as text
    if encoding is not Encoding.SQUASHFS and not code:
        raise ConfigError(f"the field 'code' is empty, but the encoding {encoding.value!r} needs it")

    input_data = _require(data, "input_data", bytes, optional=True)

    volumes = tuple(
        _parse_volume(index, raw)
        for index, raw in enumerate(_require(data, "volumes", list, optional=True) or [])
    )
    if encoding is Encoding.SQUASHFS and not any(volume.mount == "/opt/code" for volume in volumes):
        raise ConfigError("the encoding 'squashfs' needs a volume mounted at /opt/code, and there is none")

    variables = _require(data, "variables", dict, optional=True) or {}
    for key, value in variables.items():
        if not isinstance(key, str) or not is_ascii_identifier(key):
            raise ConfigError(f"the field 'variables' has a key that is not a variable name: {key!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise ConfigError(f"the field 'variables.{key}' must be a string without NUL bytes")

    keys = _require(data, "authorized_keys", list, optional=True) or []
    for index, key in enumerate(keys):
        if not isinstance(key, str) or "\n" in key.strip():
            raise ConfigError(f"the field 'authorized_keys[{index}]' must be one line of text")

    return Config(
        vm_hash=vm_hash.lower(),
        interface=interface,
        encoding=encoding,
        entrypoint=entrypoint,
        code=code,
        input_data=input_data or None,
        network=_parse_network(data),
        volumes=volumes,
        variables=dict(variables),
        authorized_keys=tuple(key.strip() for key in keys if key.strip()),
    )
