"""The runtime image's layout: our init where the kernel looks for it, the guest side of
aleph_runtime and the libraries importable by the image's own Python at -OO without
compiling anything, no .py without bytecode, nothing left that should be cleaned, and a
manifest that tells the truth."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.image, pytest.mark.root]

PYTHON_DIRS = ("usr/lib/python3.11", "usr/lib/python3/dist-packages", "opt/aleph")


def chroot(mnt: Path, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base_env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": "/opt/aleph/runtime:/opt/aleph/libs",
        "LC_ALL": "C.UTF-8",
    }
    return subprocess.run(
        ["/usr/sbin/chroot", str(mnt), *cmd],
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sbin_init_is_init0(mounted_rootfs: Path):
    init = mounted_rootfs / "sbin/init"
    assert init.read_bytes() == (REPO / "init/init0.sh").read_bytes()
    assert init.stat().st_mode & 0o111


def test_init1_and_guest_runtime_installed(mounted_rootfs: Path):
    opt = mounted_rootfs / "opt/aleph"
    assert (opt / "init/init0.fstab").read_bytes() == (REPO / "init/init0.fstab").read_bytes()
    assert (opt / "init/init1.py").read_bytes() == (REPO / "init/init1.py").read_bytes()
    pkg = opt / "runtime/aleph_runtime"
    assert (pkg / "protocol.py").read_bytes() == (REPO / "runtime/aleph_runtime/protocol.py").read_bytes()
    assert (pkg / "guest/__init__.py").exists()
    assert not (pkg / "host").exists(), "the host side of aleph_runtime must not be in the image"
    for d in ("opt/code", "opt/packages", "data", "overlay", "rom", "dev", "proc", "sys", "run", "tmp"):
        assert (mounted_rootfs / d).is_dir(), d


def test_imports_under_image_python_without_compiling(mounted_rootfs: Path):
    # Ours, the libraries of the issue, and every stripped extension module we know of.
    mods = (
        "aleph_runtime, aleph_runtime.protocol, aleph_runtime.guest, aleph.sdk, uvloop, msgpack, fastapi, "
        "aiohttp, pydantic, aleph_message, cryptography.hazmat.bindings._rust, cytoolz, coincurve, "
        "nacl.bindings, yarl, multidict, frozenlist, propcache, regex, ckzg, pydantic_core, bitarray, "
        "Crypto.Cipher.AES, Cryptodome.Cipher.AES, PIL.Image, aiohttp._http_parser"
    )
    if (mounted_rootfs / "opt/aleph/runtime/aleph_runtime/guest/main.py").exists():
        mods += ", aleph_runtime.guest.main, aleph_runtime.guest.serve, aleph_runtime.guest.event_loop"
    result = chroot(mounted_rootfs, "python3", "-OO", "-v", "-c", f"import {mods}")
    assert result.returncode == 0, result.stderr[-3000:]
    # -v reports where each module's code came from: only bytecode, never a stale one.
    stale = [
        line for line in result.stderr.splitlines() if "bytecode is stale" in line or "could not" in line
    ]
    assert not stale, stale[:20]
    loaded_from_pyc = [line for line in result.stderr.splitlines() if line.startswith("# code object from")]
    assert loaded_from_pyc and all(".opt-2.pyc" in line for line in loaded_from_pyc), [
        line for line in loaded_from_pyc if ".opt-2.pyc" not in line
    ][:20]


def test_legacy_aleph_client_imports_under_image_python(mounted_rootfs: Path):
    # runtime/compat, where the init appends it to a program's sys.path (last).
    compat = mounted_rootfs / "opt/aleph/runtime/compat/aleph_client"
    assert (compat / "asynchronous.py").read_bytes() == (
        REPO / "runtime/compat/aleph_client/asynchronous.py"
    ).read_bytes()
    mods = (
        "aleph_client.asynchronous, aleph_client.chains.remote, aleph_client.chains.ethereum, "
        "aleph_client.vm.cache, aleph_client.vm.app, aleph_client.conf, aleph_client.types"
    )
    env = {"PYTHONPATH": "/opt/aleph/runtime:/opt/aleph/libs:/opt/aleph/runtime/compat"}
    result = chroot(mounted_rootfs, "python3", "-OO", "-c", f"import {mods}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_aleph_sdk_finds_libmagic(mounted_rootfs: Path):
    # Without libmagic, every import of aleph.sdk searches for it (ldconfig -p, then gcc
    # and ld where the image has them: seconds of a cold start under emulation) and
    # aleph-sdk's MIME detection is silently off.
    code = (
        "import ctypes.util, aleph.sdk.utils as utils; print(ctypes.util.find_library('magic')); "
        "print(utils.magic.from_buffer(b'%PDF-1.4\\n%\\xe2\\xe3\\xcf\\xd3\\n', mime=True))"
    )
    result = chroot(mounted_rootfs, "python3", "-OO", "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["libmagic.so.1", "application/pdf"]


def test_every_py_has_bytecode(mounted_rootfs: Path):
    missing = []
    for top in PYTHON_DIRS:
        for py in (mounted_rootfs / top).rglob("*.py"):
            cache = py.parent / "__pycache__"
            for tag in (".cpython-311.opt-2.pyc", ".cpython-311.pyc"):
                if not (cache / (py.stem + tag)).exists():
                    missing.append(str(py.relative_to(mounted_rootfs)) + " " + tag)
    assert not missing, f"{len(missing)} missing, e.g. {missing[:20]}"


def test_no_py_outside_compiled_dirs_left_uncompiled(mounted_rootfs: Path):
    """Any .py elsewhere in the image is not on a Python path; list them so they stay few."""
    others = [
        str(p.relative_to(mounted_rootfs))
        for p in mounted_rootfs.rglob("*.py")
        if not str(p.relative_to(mounted_rootfs)).startswith(PYTHON_DIRS)
        and not (p.parent / "__pycache__" / (p.stem + ".cpython-311.opt-2.pyc")).exists()
    ]
    assert len(others) < 20, others


def test_cleaned(mounted_rootfs: Path):
    m = mounted_rootfs
    assert not (m / "usr/share/man").exists()
    assert not list((m / "var/lib/apt/lists").glob("*_*")), "apt lists left"
    assert not list((m / "var/cache/apt").glob("*.bin"))
    assert not list((m / "var/cache/apt/archives").glob("*.deb"))
    assert not (m / "etc/machine-id").exists()
    assert not list((m / "etc/ssh").glob("ssh_host_*")), "SSH host keys left in the image"
    assert not [p for p in (m / "var/log").rglob("*") if p.is_file()]
    docs = [p for p in (m / "usr/share/doc").rglob("*") if p.is_file() and p.name != "copyright"]
    assert not docs, docs[:10]
    assert not list((m / "tmp").iterdir())


def test_manifest_matches(rootfs: Path, mounted_rootfs: Path):
    manifest = image.read_manifest(rootfs)
    data = rootfs.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data)
    assert (
        manifest["compression"] == "lz4"
        and manifest["compression_level"] is None
        and manifest["profile"] == "lean"
    )
    assert manifest["python"].startswith("3.11.")

    dpkg = subprocess.run(
        ["dpkg-query", f"--admindir={mounted_rootfs}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert manifest["debian_packages"] == dict(line.split("\t") for line in dpkg.splitlines())
    for pkg in ("python3", "openssh-server", "iproute2", "ca-certificates"):
        assert pkg in manifest["debian_packages"]

    installed = {}
    for meta in (mounted_rootfs / "opt/aleph/libs").glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in meta.read_text().split("\n\n")[0].splitlines() if ": " in line
        )
        installed[fields["Name"]] = fields["Version"]
    assert manifest["python_packages"] == installed
    pins = {}
    for line in (REPO / "rootfs-build/requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    assert {k.lower().replace("_", "-"): v for k, v in installed.items()} == pins
    for top in ("aiohttp", "msgpack", "fastapi", "pydantic", "aleph-sdk-python", "aleph-message", "uvloop"):
        assert top in pins
    json.dumps(manifest)
