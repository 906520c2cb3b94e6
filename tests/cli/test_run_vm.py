"""`aleph-runtime run` in its default mode: the runtime image booted in QEMU (TCG), the
example's code as a zip, its persistent volume an ext4 drive in the state directory.
Needs host/qemu.py, qemu-system-x86_64 and the image and kernel (built through their
caches, or ALEPH_KERNEL/ALEPH_INITRAMFS/ALEPH_ROOTFS); skipped without them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import aiohttp
import pytest

from .conftest import EXAMPLES, free_port
from .example_checks import check_default_example, stop_cleanly

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("aleph_runtime.host.vmm.qemu") is None, reason="host/qemu.py is not in this checkout"
    ),
]

BOOT_TIMEOUT = 600  # TCG on a loaded machine: generous, never asserted


@pytest.fixture(scope="module")
def images():
    from aleph_runtime.host.vmm.qemu import find_images

    try:
        found = find_images()
    except Exception as error:  # a failed build is reported by the image tests
        pytest.skip(f"runtime image or test kernel unavailable: {error}")
    if found is None or not all(Path(p).exists() for p in found):
        pytest.skip("runtime image or test kernel unavailable")
    return found


async def test_default_example_in_a_vm(images, cli_factory, fake_api):
    await check_default_example(cli_factory, "vm", fake_api, free_port(), url_timeout=BOOT_TIMEOUT)


async def test_executable_and_import_failure_in_a_vm(images, cli_factory, short_dir):
    cli = await cli_factory("--port", "0", str(EXAMPLES / "executable"))
    url = await cli.wait_url(BOOT_TIMEOUT)
    async with aiohttp.ClientSession() as http, http.get(f"{url}in/the/vm") as response:
        assert response.status == 200, await response.text()
        assert await response.text() == "Hello from an executable program! path=/in/the/vm\n"
    await stop_cleanly(cli)

    broken = short_dir / "broken.py"
    broken.write_text("raise ImportError('missing piece')\napp = None\n")
    cli = await cli_factory("--port", "0", str(broken))
    assert await cli.wait(BOOT_TIMEOUT) == 3, cli.output()
    assert "ImportError: missing piece" in cli.output()
    assert list((cli.state_dir / "run").iterdir()) == []


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools are not installed")
async def test_squashfs_code_and_volumes_in_a_vm(images, cli_factory, short_dir):
    """A directory sent as squashfs code (the code drive), a directory volume packed on the
    fly at /opt/packages, a persistent volume whose mount point the program gets by --env."""
    from .test_run_dev import LIBRARY_USER

    code, lib = short_dir / "code", short_dir / "lib"
    code.mkdir()
    lib.mkdir()
    (code / "main.py").write_bytes(LIBRARY_USER)
    (lib / "shiny.py").write_text("VALUE = 'shiny'\n")
    cli = await cli_factory("--port", "0", "--encoding", "squashfs", "--volume", f"/opt/packages={lib}",
                            "--volume", "mount=/var/lib/notes,persistent=notes,size=32M",
                            "--env", "DATA_DIR=/var/lib/notes", str(code))  # fmt: skip
    url = await cli.wait_url(BOOT_TIMEOUT)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}first") as response:
            assert await response.text() == "shiny none", cli.output()
        async with http.get(f"{url}second") as response:
            assert await response.text() == "shiny /first"
    await stop_cleanly(cli)
    assert (cli.state_dir / "volumes" / "notes.ext4").stat().st_size == 32 << 20


NODE_SERVER = """const http = require("http");
http.createServer((request, response) => {
  response.end(`node ${process.version} says hello at ${request.url}\\n`);
}).listen(8080, "127.0.0.1");
"""


def node_program(directory: Path) -> Path:
    """An executable program whose run.sh execs node: it needs the full image."""
    directory.mkdir()
    (directory / "server.js").write_text(NODE_SERVER)
    run_sh = directory / "run.sh"
    run_sh.write_text('#!/bin/sh\necho "starting node"\nexec node server.js\n')
    run_sh.chmod(0o755)
    return directory


async def test_executable_that_cannot_start_answers_502_and_says_why(images, cli_factory, short_dir):
    """On the lean image `node` does not exist: every request gets the init's 502 at once
    (not a 10 s wait and a 503 loading page), and the terminal shows it once."""
    cli = await cli_factory("--port", "0", str(node_program(short_dir / "node_app")))
    url = await cli.wait_url(BOOT_TIMEOUT)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{url}hello") as response:
                text = await response.text()
                assert response.status == 502, text
                assert "exited with status 127" in text and "node: not found" in text, text
    await stop_cleanly(cli)
    assert cli.output().count("the program answered 502") == 1, cli.output()
    assert "node: not found" in cli.output()


async def test_profile_full_runs_a_node_program(images, cli_factory, short_dir):
    """`--profile full` boots the full image (built through the cache, with progress)."""
    cli = await cli_factory("--port", "0", "--profile", "full", str(node_program(short_dir / "node_app")))
    url = await cli.wait_url(BOOT_TIMEOUT + 900)  # a cold full build takes minutes
    async with aiohttp.ClientSession() as http, http.get(f"{url}hello") as response:
        text = await response.text()
        assert response.status == 200, text
        assert text.startswith("node v18.") and text.endswith("says hello at /hello\n"), text
    await stop_cleanly(cli)
    assert "the full runtime image (gzip)" in cli.output()
