"""`--volume` and `--env`: what the user gives on the command line, parsed into specs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath

from aleph_runtime.host.errors import NodeError

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|[kmgt])?$", re.IGNORECASE)


def parse_size_mib(text: str) -> int:
    """`256`, `256M`, `1G`, `1GiB` -> MiB (a bare number is MiB)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise NodeError(f"not a size: {text!r} (e.g. 256, 256M, 1G)")
    value, unit = int(match.group(1)), (match.group(2) or "M")[0].upper()
    mib = {"K": value / 1024, "M": value, "G": value * 1024, "T": value * 1024 * 1024}[unit]
    return max(1, int(mib))


@dataclasses.dataclass
class VolumeSpec:
    """One `--volume`: an immutable one (a directory or an image) or a persistent named one."""

    mount: str
    source: Path | None = None
    persistent: str | None = None
    size_mib: int = 256

    @property
    def read_only(self) -> bool:
        return self.persistent is None


def parse_volume(text: str) -> VolumeSpec:
    """`MOUNT=SOURCE` (immutable) or `mount=MOUNT,source=SOURCE` or
    `mount=MOUNT,persistent=NAME[,size=SIZE]`."""
    fields: dict[str, str] = {}
    if text.startswith("mount=") or ",mount=" in text:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("mount", "source", "persistent", "name", "size"):
                raise NodeError(
                    f"--volume {text!r}: {part!r} is not one of mount=, source=, persistent=, size="
                )
            fields["persistent" if key == "name" else key] = value.strip()
    else:
        mount, sep, source = text.partition("=")
        if not sep:
            raise NodeError(
                f"--volume {text!r}: expected MOUNT=SOURCE or mount=...,source=.../persistent=..."
            )
        fields = {"mount": mount, "source": source}
    mount = fields.get("mount", "")
    if not mount.startswith("/") or ".." in PurePosixPath(mount).parts:
        raise NodeError(f"--volume {text!r}: the mount point must be an absolute path")
    mount = str(PurePosixPath(mount))
    if mount in ("/", "/opt", "/opt/code", "/dev", "/proc", "/sys", "/tmp"):
        raise NodeError(f"--volume {text!r}: {mount} cannot be a volume's mount point")
    if ("source" in fields) == ("persistent" in fields):
        raise NodeError(f"--volume {text!r}: give either source= (immutable) or persistent=NAME")
    spec = VolumeSpec(mount=mount)
    if "persistent" in fields:
        if not _VOLUME_NAME.match(fields["persistent"]):
            raise NodeError(
                f"--volume {text!r}: a persistent volume's name is letters, digits, _ . - (64 at most)"
            )
        spec.persistent = fields["persistent"]
        if "size" in fields:
            spec.size_mib = parse_size_mib(fields["size"])
    else:
        if "size" in fields:
            raise NodeError(f"--volume {text!r}: size= applies to persistent volumes only")
        source = Path(fields["source"]).expanduser()
        if not source.exists():
            raise NodeError(f"--volume {text!r}: {source} does not exist")
        spec.source = source.resolve()
    return spec


def parse_env(items: list[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _VARIABLE.match(key):
            raise NodeError(f"--env {item!r}: expected KEY=VALUE with KEY a variable name")
        variables[key] = value
    return variables


#: An env file larger than this is not a list of variables.
MAX_ENV_FILE_BYTES = 1 << 20


def parse_env_file(path: str | Path) -> dict[str, str]:
    """`--env-file`: dotenv syntax as python-dotenv reads it (`dotenv_values`, without
    `${VAR}` interpolation): one `KEY=VALUE` a line (`export ` allowed), `#` comments, blank
    lines, quoted values (a double-quoted one may span lines). A line it cannot read is an
    error here, where python-dotenv would skip it with a warning."""
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_ENV_FILE_BYTES:
            raise NodeError(f"--env-file {path}: larger than {MAX_ENV_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NodeError(f"--env-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise NodeError(f"--env-file {path}: cannot read it ({error})") from None
    for binding in parse_stream(io.StringIO(text)):
        where = f"--env-file {path}, line {binding.original.line}"
        if binding.error:
            first = binding.original.string.splitlines()[0] if binding.original.string.strip() else ""
            raise NodeError(f"{where}: expected KEY=VALUE (its quotes closed), not {first!r}")
        if binding.key is not None and (binding.value is None or not _VARIABLE.match(binding.key)):
            raise NodeError(f"{where}: expected KEY=VALUE with KEY a variable name")
    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))
