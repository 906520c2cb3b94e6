"""Real ASGI frameworks, served by uvicorn and by `aleph-runtime run`, compared request by
request (shared by the dev-mode matrix and the VM test).

The frameworks are installed from tests/frameworks/requirements.txt into the cache,
under a directory named by that file's hash, once per machine; it becomes the program's
/opt/packages volume, and uvicorn runs from it too."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from aleph_runtime.host.vmm.image import cache_dir
from tests.cli.conftest import REPOSITORY
from tests.helpers import free_port

FRAMEWORKS = REPOSITORY / "tests" / "frameworks"
REQUIREMENTS = FRAMEWORKS / "requirements.txt"
#: Each framework's program: a directory with main.py, and the attribute uvicorn serves
#: (aleph-runtime infers `main:app`; Django's `application` is found by the init).
APPS = {
    "django": "application",
    "quart": "app",
    "litestar": "app",
    "starlette": "app",
    "sanic": "app",
    "blacksheep": "app",
}
INSTALL_TIMEOUT = 900


def framework_packages() -> Path:
    """The frameworks' packages directory, installed on first use (under a lock, atomically)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    root = cache_dir() / "frameworks"
    target = root / digest
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        partial = root / f"{digest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        # The host's Python is the guest's (Debian 12's 3.11), so the wheels fit both.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
             "--target", str(partial), "-r", str(REQUIREMENTS)],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise AssertionError(f"installing the frameworks failed:\n{result.stdout}\n{result.stderr}")
        os.rename(partial, target)  # complete or absent, never half there
    return target


def framework_packages_image() -> Path:
    """The packages directory as a squashfs image (a VM's volume), packed once beside it."""
    from aleph_runtime.host.program import squashfs_directory

    packages = framework_packages()
    image = packages.with_name(f"{packages.name}.squashfs")
    if image.is_file():
        return image
    with open(packages.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.is_file():
            partial = image.with_name(f"{image.name}.partial")
            squashfs_directory(packages, partial)
            os.rename(partial, image)
    return image


@dataclass(frozen=True)
class Call:
    method: str
    target: str
    """The request target exactly as sent: path and query, already percent-encoded."""
    headers: dict[str, str] = field(default_factory=dict)
    json: object = None


#: What every framework's app answers with a 200 (tests/frameworks/*/main.py).
CALLS = [
    Call("GET", "/echo/w%C3%B6rld%20x?u=%C3%BC&e=%E2%82%AC&amp=a%26b&plus=a+b%2Bc&pct=100%25"),
    Call("GET", "/echo/plain?q=1&q=2&empty="),
    Call("POST", "/json", json={"text": "ü €", "list": [1, 2.5, None]}),
    Call("GET", "/cookies", headers={"Cookie": "first=1; second=two"}),
    Call("GET", "/headers", headers={"X-Test": "hello world"}),
    Call("GET", "/state"),
    Call(
        "GET", "/big", headers={"Accept-Encoding": "gzip, deflate"}
    ),  # Starlette's GZipMiddleware compresses it
]
EXTRA_CALLS = {"starlette": [Call("GET", "/events")]}  # sse-starlette: a stream, whole on a node


def calls_for(framework: str) -> list[Call]:
    return CALLS + EXTRA_CALLS.get(framework, [])


async def answer(http: aiohttp.ClientSession, base: str, call: Call) -> tuple[int, str | None, bytes]:
    """Status, Content-Type and the body as a client reads it (decompressed, as a browser does)."""
    url = URL(base.rstrip("/") + call.target, encoded=True)
    async with http.request(call.method, url, headers=call.headers, json=call.json) as response:
        return response.status, response.headers.get("Content-Type"), await response.read()


@contextlib.asynccontextmanager
async def uvicorn(framework: str, packages: Path, log: Path):
    """The framework's app under uvicorn on a free port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{packages}:{FRAMEWORKS / framework}"}
    with open(log, "wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", f"main:{APPS[framework]}", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", cwd=FRAMEWORKS / framework, env=env, stdin=subprocess.DEVNULL, stdout=output,
            stderr=output,
        )  # fmt: skip
    try:
        for _ in range(600):
            if process.returncode is not None:
                raise AssertionError(
                    f"uvicorn exited with {process.returncode}:\n{log.read_text(errors='replace')}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        else:
            raise AssertionError(f"uvicorn did not listen within 60 s:\n{log.read_text(errors='replace')}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def compare(framework: str, runtime_url: str, uvicorn_url: str) -> None:
    """Every call answers 200 under uvicorn, and the same status, type and body through aleph-runtime."""
    differences = []
    # A gzip-accepting client that decompresses, as a browser.
    async with aiohttp.ClientSession(auto_decompress=True) as http:
        for call in calls_for(framework):
            expected = await answer(http, uvicorn_url, call)
            if expected[0] != 200:
                pytest.fail(
                    f"{framework} under uvicorn: {call.method} {call.target} -> {expected!r:.1000}",
                    pytrace=False,
                )
            got = await answer(http, runtime_url, call)
            if got != expected:
                differences.append(
                    f"{call.method} {call.target}:\n  uvicorn:       {expected!r:.400}\n  aleph-runtime: {got!r:.400}"
                )
    if differences:
        # No Python traceback: these frames are not the news, and formatting them trips
        # a CPython 3.11 bug in ast.parse under pytest ("AST constructor recursion depth mismatch").
        pytest.fail(
            f"{framework}: aleph-runtime answers differently from uvicorn:\n" + "\n".join(differences),
            pytrace=False,
        )
