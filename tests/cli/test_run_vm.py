"""`aleph-runtime run` in its default mode: the runtime image booted in QEMU (TCG), the
example's code as a zip, its persistent volume an ext4 drive in the state directory.
Needs qemu-system-x86_64 and the image and kernel (the root conftest's `images`: built
through their caches, or ALEPH_KERNEL/ALEPH_ROOTFS; a failed build fails); the node-like
kernel unless ALEPH_VM_KERNEL=debian."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.cli.conftest import EXAMPLES, REPOSITORY
from tests.cli.example_checks import check_default_example, check_legacy_example, stop_cleanly
from tests.cli.frameworks import FRAMEWORKS, compare, framework_packages, framework_packages_image, uvicorn
from tests.helpers import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
    ),
]

BOOT_TIMEOUT = 600  # TCG on a loaded machine: generous, never asserted


async def test_default_example_in_a_vm(images, cli_factory, subtests, fake_api):
    await check_default_example(cli_factory, subtests, "vm", fake_api, free_port(), url_timeout=BOOT_TIMEOUT)


async def test_legacy_aleph_client_example_in_a_vm(images, cli_factory, fake_api):
    """The docs' program, unchanged, in the image: aleph_client comes from the image's compat."""
    await check_legacy_example(cli_factory, "vm", fake_api, url_timeout=BOOT_TIMEOUT)


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
    from tests.cli.test_run_dev import LIBRARY_USER

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


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools are not installed")
async def test_starlette_answers_as_under_uvicorn_in_a_vm(images, cli_factory, short_dir):
    # The dev-mode matrix (test_frameworks.py) covers every framework; this one checks
    # the same scope reaches an app in the image's Python, its packages on a squashfs drive.
    packages = framework_packages()
    image = framework_packages_image()
    program = FRAMEWORKS / "starlette"
    cli = await cli_factory("--port", "0", "--volume", f"/opt/packages={image}", str(program))
    url = await cli.wait_url(BOOT_TIMEOUT)
    async with uvicorn("starlette", packages, short_dir / "uvicorn.log") as uvicorn_url:
        await compare("starlette", url, uvicorn_url)
    assert "program error" not in cli.output() and "the init failed" not in cli.output()
    await stop_cleanly(cli)


async def test_crash_restart_and_watch_in_a_vm(images, cli_factory, short_dir):
    """aleph-vm's diagnostic behaviours in a VM: /crash (sys.exit(1)) answers 502, the next
    request boots a new VM whose program finds the counter where the first left it; then
    --watch boots another after an edit. The terminal shows the program, not the kernel."""
    import asyncio
    import re

    program = short_dir / "diagnostic.py"
    source = (REPOSITORY / "tests" / "programs" / "diagnostic_app.py").read_text()
    program.write_text(source)
    cli = await cli_factory("--port", "0", "--watch", "--volume", "mount=/var/lib/example,persistent=example,size=32M",
                            str(program))  # fmt: skip
    url = await cli.wait_url(BOOT_TIMEOUT)
    timeout = aiohttp.ClientTimeout(total=BOOT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(f"{url}state/increment") as response:
            assert await response.text() == '{"counter": 0}'
        async with http.get(f"{url}socat") as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{url}crash") as response:
            assert response.status == 502
            assert await response.text() == "VM did not respond and was shut down\n"
        async with http.get(f"{url}state/increment") as response:
            assert (response.status, await response.text()) == (200, '{"counter": 1}'), cli.output()
        program.write_text(source.replace("body = str(os.getpid()).encode()", 'body = b"edited"'))
        for _ in range(BOOT_TIMEOUT):
            if cli.output().count("restarted in") == 2:
                break
            await asyncio.sleep(1)
        async with http.get(f"{url}pid") as response:
            assert await response.text() == "edited", cli.output()
        async with http.get(f"{url}state/increment") as response:
            assert await response.text() == '{"counter": 2}'
    output = cli.output()
    assert "crash: the VM powered off" in output
    assert "starting a new VM (diagnostic.py changed)" in output
    assert re.search(r"started in [\d.]+ s: kernel [\d.]+ s, init0 [\d.]+ s, init1 ready [\d.]+ s, "
                     r"config answered [\d.]+ s", output), output  # fmt: skip
    assert re.search(r"^GET /state/increment 200 [\d.]+ ms 14 B$", output, re.MULTILINE)
    # No kernel console, no boot script, no init progress on the terminal (they are in vm.log).
    assert not re.search(r"^\[\s*\d+\.\d+\]", output, re.MULTILINE), output
    assert " init0: " not in output and "Ready signal sent" not in output
    assert "Linux version" in (cli.state_dir / "logs" / "vm.log").read_text(errors="replace")
    await stop_cleanly(cli)


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
    assert "the debian-12 full runtime image (lz4)" in cli.output()
