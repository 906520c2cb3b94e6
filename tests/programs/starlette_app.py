"""A Starlette program for the tests: lifespan markers, streaming, echo, concurrency, errors."""

import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

MARKERS = os.environ.get("MARKER_FILE", "/tmp/lifespan-markers")
_barrier: asyncio.Barrier | None = None


def mark(event: str) -> None:
    with open(MARKERS, "a") as markers:
        markers.write(event + "\n")


@contextlib.asynccontextmanager
async def lifespan(app):
    mark("startup")
    yield {"started_by": "lifespan"}
    mark("shutdown")


async def index(request):
    return JSONResponse({"state": request.state.started_by, "env": os.environ.get("GREETING")})


async def stream(request):
    async def chunks():
        for index in range(10):
            await asyncio.sleep(0)
            yield f"part{index}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(request):
    body = await request.body()
    return JSONResponse(
        {
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "query": request.url.query,
            "header": request.headers.get("x-test"),
        }
    )


async def together(request):
    """Answers only once `count` calls are in flight at the same time."""
    global _barrier
    if _barrier is None:
        _barrier = asyncio.Barrier(int(request.query_params["count"]))
    await asyncio.wait_for(_barrier.wait(), timeout=30)
    return PlainTextResponse("together")


async def fail(request):
    raise RuntimeError("the program failed on purpose")


async def environment(request):
    return JSONResponse({key: value for key, value in os.environ.items() if key.startswith("ALEPH_")})


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/", index),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/together", together),
        Route("/fail", fail),
        Route("/env", environment),
    ],
)
