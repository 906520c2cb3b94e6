"""Package a program and build the configuration the supervisor would send for it.

Shared by the tests, the benchmark and the CLI, so all of them send the init exactly
the V2 configuration a node sends (see aleph-vm's ProgramConfiguration).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

from aleph_runtime.protocol import Encoding, Interface, interface_for


def program_config(
    code: bytes | None,
    entrypoint: str,
    encoding: Encoding | str = Encoding.PLAIN,
    interface: Interface | str | None = None,
    vm_hash: str | None = None,
    volumes: list[dict] | None = None,
    variables: dict[str, str] | None = None,
    input_data: bytes | None = None,
    ip: str | None = None,
    route: str | None = None,
    ipv6: str | None = None,
    ipv6_gateway: str | None = None,
    dns_servers: list[str] | None = None,
    authorized_keys: list[str] | None = None,
) -> dict:
    """A V2 configuration, with every key the supervisor sends."""
    return {
        "input_data": input_data,
        "interface": interface or interface_for(entrypoint),
        "vm_hash": vm_hash or hashlib.sha256(code or entrypoint.encode()).hexdigest(),
        "encoding": encoding,
        "entrypoint": entrypoint,
        "code": code,
        "ip": ip,
        "ipv6": ipv6,
        "route": route,
        "ipv6_gateway": ipv6_gateway,
        "dns_servers": dns_servers or [],
        "volumes": volumes or [],
        "variables": variables,
        "authorized_keys": authorized_keys,
    }


def _files(directory: Path):
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        yield path, path.relative_to(directory).as_posix()


def zip_directory(directory: str | os.PathLike) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in _files(Path(directory)):
            archive.write(path, name)
    return buffer.getvalue()


def tar_directory(directory: str | os.PathLike, compression: str = "gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for path, name in _files(Path(directory)):
            archive.add(path, name, recursive=False)
    return buffer.getvalue()


def squashfs_directory(directory: str | os.PathLike, image: str | os.PathLike) -> Path:
    """A read-only volume image, as a node's immutable volumes (and squashfs code) are."""
    subprocess.run(
        ["mksquashfs", str(directory), str(image), "-noappend", "-quiet", "-all-root", "-comp", "gzip"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return Path(image)
