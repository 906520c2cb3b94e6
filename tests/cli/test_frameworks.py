"""Every ASGI framework gets what uvicorn would give it: Django, Quart, Litestar, Starlette
(GZipMiddleware, sse-starlette), Sanic and BlackSheep, shipped at /opt/packages and run
with `aleph-runtime run --mode dev`, answer each request as the same app under uvicorn
(UTF-8 and %20 in the path; ü, €, %26, + and %25 in the query; a JSON POST; two cookies;
a header; lifespan state; a gzip-accepting client; an event stream)."""

from __future__ import annotations

import shutil

import pytest

from .frameworks import APPS, FRAMEWORKS, compare, framework_packages, uvicorn

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
