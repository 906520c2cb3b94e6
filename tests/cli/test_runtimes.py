"""`aleph-runtime run --runtime debian-12|debian-13`: in dev mode the container runs the
init on the chosen image's Python with the VM's sys.path (the official libraries from
/opt/aleph/libs, the init's own last), the terminal names the runtime, and a program that
needs a newer Python than debian-12's is told which runtime has it; in VM mode (one boot,
`e2e`) the VM boots the chosen image. debian-13's tests are marked `debian13` (a second
image build)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.cli.conftest import REPOSITORY
from tests.cli.example_checks import stop_cleanly

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

#: Each runtime's Python (major, minor); debian-13's image is a second build (`debian13`).
RUNTIMES = [
    pytest.param("debian-12", (3, 11), id="debian-12"),
    pytest.param("debian-13", (3, 13), id="debian-13", marks=pytest.mark.debian13),
]

#: Answers where the program runs: its Python, the fastapi it imports, its sys.path.
WHERE_PROGRAM = """\
import sys

import fastapi


async def app(scope, receive, send):
    import json

    if scope["type"] != "http":
        return
    body = json.dumps({
        "version_info": list(sys.version_info[:2]),
        "executable": sys.executable,
        "fastapi": fastapi.__file__,
        "fastapi_version": fastapi.__version__,
        "path": sys.path,
    }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

#: PEP 695 (Python 3.12): a syntax error on debian-12's 3.11.
NEEDS_312 = """\
type Number = int


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"3.12 syntax works"})
"""


def locked_version(runtime: str, package: str) -> str:
    """`package`'s version in the runtime's lock (rootfs-build/requirements-<runtime>.txt)."""
    lock = (REPOSITORY / "rootfs-build" / f"requirements-{runtime}.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)", lock, re.MULTILINE)
    assert match, f"{package} is not pinned in requirements-{runtime}.txt"
    return match.group(1)


async def test_unknown_runtime_is_a_usage_error(cli_factory, short_dir):
    (short_dir / "main.py").write_text(NEEDS_312)
    cli = await cli_factory("--mode", "dev", "--runtime", "debian-11", str(short_dir / "main.py"))
    assert await cli.wait() == 2, cli.output()
    output = cli.output()
    assert "--runtime: invalid choice: 'debian-11'" in output, output
    assert "'debian-12'" in output and "'debian-13'" in output, output


@pytest.mark.parametrize(("runtime", "python"), RUNTIMES)
async def test_dev_mode_runs_the_runtimes_python_and_libraries(cli_factory, short_dir, runtime, python):
    (short_dir / "main.py").write_text(WHERE_PROGRAM)
    cli = await cli_factory("--mode", "dev", "--port", "0", "--runtime", runtime, str(short_dir / "main.py"))
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, await response.text()
        found = await response.json()
    await stop_cleanly(cli)
    output = cli.output()
    assert tuple(found["version_info"]) == python, found
    assert found["executable"] == "/usr/bin/python3"
    # The official libraries, the runtime's pins, from where the VM imports them.
    assert found["fastapi"] == "/opt/aleph/libs/fastapi/__init__.py", found
    assert found["fastapi_version"] == locked_version(runtime, "fastapi")
    if runtime == "debian-12":
        assert found["fastapi_version"].startswith("0.120."), found  # the network's
    # The VM's order: the program's, the libraries, Python's own, Debian's, the init's own last.
    path = found["path"]
    stdlib = f"/usr/lib/python{python[0]}.{python[1]}"
    assert path.index("/opt/aleph/libs") < path.index(stdlib) < path.index("/usr/lib/python3/dist-packages")
    assert path.index("/usr/lib/python3/dist-packages") < path.index("/opt/aleph/init-libs")
    assert path[:2] == ["/opt/packages", "/opt"], path
    # The terminal says which runtime runs the program.
    assert re.search(rf"^aleph-runtime: runtime {runtime} \(Python {python[0]}\.{python[1]}\.\d+\), the lean image$",
                     output, re.MULTILINE), output  # fmt: skip
    assert f"dev mode: a container of {runtime} (Python" in output


async def test_a_program_needing_a_newer_python_is_told_the_runtime(cli_factory, short_dir):
    (short_dir / "main.py").write_text(NEEDS_312)
    cli = await cli_factory(
        "--mode", "dev", "--port", "0", "--runtime", "debian-12", str(short_dir / "main.py")
    )
    status = await cli.wait()
    output = cli.output()
    assert status == 3, output
    failed = next(line for line in output.splitlines() if "the program failed to start" in line)
    assert "SyntaxError" in failed, failed
    assert "Python 3.11" in failed and "Python 3.12" in failed, failed  # the one it has, the one it needs
    assert "--runtime debian-13" in failed, failed


@pytest.mark.debian13
async def test_the_same_program_runs_on_debian_13(cli_factory, short_dir):
    (short_dir / "main.py").write_text(NEEDS_312)
    cli = await cli_factory(
        "--mode", "dev", "--port", "0", "--runtime", "debian-13", str(short_dir / "main.py")
    )
    url = await cli.wait_url()
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert await response.text() == "3.12 syntax works"
    await stop_cleanly(cli)


@pytest.mark.e2e
@pytest.mark.debian13
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
async def test_vm_mode_boots_the_chosen_runtime(images, cli_factory, short_dir):
    """One boot of debian-13 (QEMU under TCG): the VM runs that image, and a program sees
    the same sys.path there as in dev mode's container of it."""
    (short_dir / "main.py").write_text(WHERE_PROGRAM)
    seen = {}
    for mode in ("vm", "dev"):
        cli = await cli_factory("--mode", mode, "--port", "0", "--runtime", "debian-13", str(short_dir / "main.py"),
                                state=f"state-{mode}")  # fmt: skip
        url = await cli.wait_url(600)
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200, await response.text()
            seen[mode] = await response.json()
        await stop_cleanly(cli)
        if mode == "vm":
            output = cli.output()
    assert seen["dev"] == seen["vm"]
    found = seen["vm"]
    assert found["version_info"] == [3, 13], found
    assert found["fastapi"] == "/opt/aleph/libs/fastapi/__init__.py", found
    assert found["fastapi_version"] == locked_version("debian-13", "fastapi")
    assert "finding the debian-13 lean runtime image (lz4)" in output, output
    assert re.search(r"^aleph-runtime: runtime debian-13 \(Python 3\.13\.\d+\), the lean image$",
                     output, re.MULTILINE), output  # fmt: skip


def test_dev_mode_picks_the_newest_image_of_the_runtime_and_profile(tmp_path, monkeypatch):
    """By the manifest; an image from before runtimes (no "runtime") has another layout."""
    from aleph_runtime.host.container import rootfs

    monkeypatch.setenv("ALEPH_RUNTIME_CACHE", str(tmp_path))
    monkeypatch.setenv("ALEPH_ROOTFS", "/nowhere/rootfs.squashfs")  # named runtimes ignore it
    for age, (name, manifest) in enumerate([
        ("debian-13-lean-lz4-new", {"runtime": "debian-13", "profile": "lean"}),
        ("lean-lz4-newer-but-old", {"profile": "lean"}),
        ("debian-12-lean-lz4-a", {"runtime": "debian-12", "profile": "lean"}),
        ("debian-13-full-lz4-a", {"runtime": "debian-13", "profile": "full"}),
        ("debian-13-lean-lz4-old", {"runtime": "debian-13", "profile": "lean"}),
    ]):  # fmt: skip
        directory = tmp_path / "rootfs" / name
        directory.mkdir(parents=True)
        (directory / "rootfs.squashfs").write_bytes(b"hsqs")
        (directory / "manifest.json").write_text(json.dumps(manifest))
        (directory / ".complete").touch()
        os.utime(directory / ".complete", (1e9 - age * 100, 1e9 - age * 100))
    images = tmp_path / "rootfs"
    assert rootfs.cached_images("lean", "debian-13") == [
        images / "debian-13-lean-lz4-new" / "rootfs.squashfs",
        images / "debian-13-lean-lz4-old" / "rootfs.squashfs",
    ]
    assert rootfs.cached_images("lean") == [images / "debian-12-lean-lz4-a" / "rootfs.squashfs"]
    assert rootfs.dev_image("full", "debian-13") == images / "debian-13-full-lz4-a" / "rootfs.squashfs"
    assert rootfs.dev_image("lean") == Path("/nowhere/rootfs.squashfs")  # no runtime named: ALEPH_ROOTFS
    with pytest.raises(ValueError, match="debian-12, debian-13"):
        rootfs.dev_image("lean", "debian-11")
