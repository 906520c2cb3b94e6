"""Every ASGI framework gets what uvicorn would give it: Django, Quart, Litestar, Starlette
(GZipMiddleware, sse-starlette), Sanic and BlackSheep, shipped at /opt/packages and run
with `aleph-runtime run --mode dev`, answer each request as the same app under uvicorn
(UTF-8 and %20 in the path; ü, €, %26, + and %25 in the query; a JSON POST; two cookies;
a header; lifespan state; a gzip-accepting client; an event stream)."""

from __future__ import annotations

import platform
import shutil
import sys

import pytest

from tests.cli.frameworks import APPS, FRAMEWORKS, compare, framework_packages, uvicorn

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


@pytest.fixture(scope="module")
def packages():
    return framework_packages()


@pytest.mark.parametrize("framework", sorted(APPS))
async def test_framework_answers_as_under_uvicorn(framework, packages, cli_factory, short_dir):
    cli = await cli_factory(
        "--mode", "dev", "--port", "0", "--volume", f"/opt/packages={packages}", str(FRAMEWORKS / framework)
    )  # fmt: skip
    runtime_url = await cli.wait_url()
    async with uvicorn(framework, packages, short_dir / "uvicorn.log") as uvicorn_url:
        await compare(framework, runtime_url, uvicorn_url)
    assert "program error" not in cli.output() and "the init failed" not in cli.output()
    assert await cli.interrupt() == 0, cli.output()


async def test_a_wrong_entrypoint_lists_the_modules_asgi_apps(packages, cli_factory):
    cli = await cli_factory(
        "--mode", "dev", "--port", "0", "--entrypoint", "main:api", "--volume", f"/opt/packages={packages}",
        str(FRAMEWORKS / "starlette"),
    )  # fmt: skip
    assert await cli.wait() == 3, cli.output()
    assert "module 'main' has no 'api'; its ASGI applications are 'app'" in cli.output()


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="inspect.markcoroutinefunction exists from Python 3.12"
)
async def test_a_package_for_a_newer_python_names_the_runtimes(cli_factory, short_dir):
    # What Django 6.x does at import on the runtime's Python 3.11.
    program = short_dir / "newer.py"
    program.write_text("from inspect import markcoroutinefunction\n\napp = None\n")
    cli = await cli_factory("--mode", "dev", "--port", "0", str(program))
    assert await cli.wait() == 3, cli.output()
    output = cli.output()
    assert "cannot import name 'markcoroutinefunction' from 'inspect'" in output
    assert (
        f"the runtime runs Python {platform.python_version()}; this package may need a newer Python" in output
    )
