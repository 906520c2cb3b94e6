"""The runtime images' layout, for each runtime (debian-13's tests carry the `debian13`
marker): our init where the kernel looks for it, the guest side of aleph_runtime and the
libraries importable by the image's own Python at -OO without compiling anything, a
program's imports resolving where they resolve on the network, no .py without bytecode,
nothing left that should be cleaned, and a manifest that tells the truth."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from aleph_runtime.host.vmm import image

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.image, pytest.mark.root]


def python_dirs(mnt: Path) -> tuple[str, ...]:
    """The image's directories of Python code: its stdlib, Debian's and ours."""
    (stdlib,) = (mnt / "usr/lib").glob("python3.[0-9]*")
    return (f"usr/lib/{stdlib.name}", "usr/lib/python3/dist-packages", "opt/aleph")


def cpython_tag(mnt: Path) -> str:
    """`cpython-311` for Python 3.11: the bytecode files' tag."""
    return "cpython-" + python_dirs(mnt)[0].removeprefix("usr/lib/python").replace(".", "")


@pytest.fixture
def rootfs(runtime_rootfs: Path) -> Path:
    return runtime_rootfs


@pytest.fixture
def mounted_rootfs(runtime_mounted: Path) -> Path:
    return runtime_mounted


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
        "aiohttp, pydantic, aleph_message, yarl, multidict, frozenlist, propcache, pydantic_core, "
        "aiohttp._http_parser"
    )
    # Every stripped extension module we know of, where the runtime's libraries have it.
    for module in (
        "cryptography.hazmat.bindings._rust", "cytoolz", "coincurve", "nacl.bindings", "regex", "ckzg",
        "bitarray", "Crypto.Cipher.AES", "Cryptodome.Cipher.AES", "PIL.Image",
    ):  # fmt: skip
        if (mounted_rootfs / "opt/aleph/libs" / module.split(".")[0]).is_dir():
            mods += f", {module}"
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
    cpython = cpython_tag(mounted_rootfs)
    for top in python_dirs(mounted_rootfs):
        for py in (mounted_rootfs / top).rglob("*.py"):
            cache = py.parent / "__pycache__"
            for tag in (f".{cpython}.opt-2.pyc", f".{cpython}.pyc"):
                if not (cache / (py.stem + tag)).exists():
                    missing.append(str(py.relative_to(mounted_rootfs)) + " " + tag)
    assert not missing, f"{len(missing)} missing, e.g. {missing[:20]}"


def test_no_py_outside_compiled_dirs_left_uncompiled(mounted_rootfs: Path):
    """Any .py elsewhere in the image is not on a Python path; list them so they stay few."""
    dirs, tag = python_dirs(mounted_rootfs), cpython_tag(mounted_rootfs)
    others = [
        str(p.relative_to(mounted_rootfs))
        for p in mounted_rootfs.rglob("*.py")
        if not str(p.relative_to(mounted_rootfs)).startswith(dirs)
        and not (p.parent / "__pycache__" / f"{p.stem}.{tag}.opt-2.pyc").exists()
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


def distributions(directory: Path) -> dict[str, str]:
    """{Name: Version} of every distribution installed in `directory`."""
    installed = {}
    for meta in directory.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in meta.read_text().split("\n\n")[0].splitlines() if ": " in line
        )
        installed[fields["Name"]] = fields["Version"]
    return installed


def pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of a requirements file of exact pins."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            found[normalized(name)] = version
    return found


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


PYTHON_OF_RUNTIME = {"debian-12": "3.11.", "debian-13": "3.13."}


def test_manifest_matches(rootfs: Path, mounted_rootfs: Path, runtime: str):
    manifest = image.read_manifest(rootfs)
    data = rootfs.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data)
    assert (
        manifest["compression"] == "lz4"
        and manifest["compression_level"] is None
        and manifest["profile"] == "lean"
        and manifest["runtime"] == runtime
    )
    assert manifest["python"].startswith(PYTHON_OF_RUNTIME[runtime])

    dpkg = subprocess.run(
        ["dpkg-query", f"--admindir={mounted_rootfs}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert manifest["debian_packages"] == dict(line.split("\t") for line in dpkg.splitlines())
    for pkg in ("python3", "openssh-server", "iproute2", "ca-certificates"):
        assert pkg in manifest["debian_packages"]

    installed = distributions(mounted_rootfs / "opt/aleph/libs")
    assert manifest["python_packages"] == installed
    assert {normalized(k): v for k, v in installed.items()} == pins(
        REPO / f"rootfs-build/requirements-{runtime}.txt"
    )
    for top in ("aiohttp", "fastapi", "pydantic", "aleph-sdk-python", "aleph-message"):
        assert top in installed
    init_installed = distributions(mounted_rootfs / "opt/aleph/init-libs")
    assert manifest["init_python_packages"] == init_installed
    assert {normalized(k): v for k, v in init_installed.items()} == pins(
        REPO / f"rootfs-build/requirements-init-{runtime}.txt"
    )
    json.dumps(manifest)


#: What a program imports on the network's runtime, and from where: aleph-vm's
#: init0.sh sets PYTHONPATH=/opt/aleph/libs (pip's, first), then Python's own paths and
#: Debian's dist-packages (the python3-* packages of its create_disk_image.sh).
NETWORK_IMPORTS = {
    "pydantic": "/opt/aleph/libs/",  # pip's pydantic 2 over Debian's python3-pydantic 1.10
    "fastapi": "/opt/aleph/libs/",
    "aiohttp": "/opt/aleph/libs/",
    "starlette": "/opt/aleph/libs/",
    "aleph.sdk": "/opt/aleph/libs/",
    "aleph_message": "/opt/aleph/libs/",
    "google.protobuf": "/opt/aleph/libs/",
    "msgpack": "/usr/lib/python3/dist-packages/",  # only Debian has it
    "uvicorn": "/usr/lib/python3/dist-packages/",  # python3-fastapi's dependency
    "async_timeout": "/usr/lib/python3/dist-packages/",
}


def test_a_program_imports_what_it_imports_on_the_network(mounted_rootfs: Path, runtime: str):
    """Each library from the place it comes from on the network's runtime (debian-12), and
    the init's own libraries last on sys.path, after everything a program could import."""
    code = (
        "import importlib, json, sys\n"
        "names = sys.argv[1:]\n"
        "found = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        found[name] = importlib.import_module(name).__file__\n"
        "    except ImportError:\n"
        "        found[name] = None\n"
        "import uvloop, pydantic\n"
        "found['uvloop'] = uvloop.__file__\n"
        "found['pydantic.VERSION'] = pydantic.VERSION\n"
        "found['sys.path'] = sys.path\n"
        "print(json.dumps(found))\n"
    )
    # The init's environment (init0.sh) for a program's interpreter.
    env = {"PYTHONPATH": "/opt/aleph/runtime:/opt/aleph/libs"}
    result = chroot(mounted_rootfs, "python3", "-OO", "-c", code, *NETWORK_IMPORTS, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert found["pydantic.VERSION"].startswith("2.")
    assert found["uvloop"].startswith("/opt/aleph/init-libs/")
    assert found["sys.path"][-1] == "/opt/aleph/init-libs"
    assert found["sys.path"].index("/opt/aleph/libs") < found["sys.path"].index(
        "/usr/lib/python3/dist-packages"
    )
    if runtime == "debian-12":
        assert {
            name: (found[name] or "")[: len(where)] for name, where in NETWORK_IMPORTS.items()
        } == NETWORK_IMPORTS
    else:
        # Ahead of the network: pip's libraries only, and the init's msgpack.
        assert found["pydantic"].startswith("/opt/aleph/libs/")
        assert found["msgpack"].startswith("/opt/aleph/init-libs/")
