"""The comparison app on Starlette, with GZipMiddleware and sse-starlette's event stream."""

from contextlib import asynccontextmanager

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

BIG = "compressible text " * 500


@asynccontextmanager
async def lifespan(app):
    yield {"started": "at startup"}


async def echo(request):
    query = {key: request.query_params.getlist(key) for key in request.query_params}
    return JSONResponse({"name": request.path_params["name"], "query": query})


async def post_json(request):
    return JSONResponse({"received": await request.json()})


async def cookies(request):
    return JSONResponse(dict(request.cookies))


async def headers(request):
    return JSONResponse({"x-test": request.headers.get("x-test")})


async def state(request):
    return JSONResponse({"started": request.state.started})


async def big(request):
    return PlainTextResponse(BIG)


async def events(request):
    async def stream():
        for index in range(3):
            yield {"event": "tick", "data": f"event {index}"}

    return EventSourceResponse(stream())


app = Starlette(
    routes=[
        Route("/echo/{name}", echo),
        Route("/json", post_json, methods=["POST"]),
        Route("/cookies", cookies),
        Route("/headers", headers),
        Route("/state", state),
        Route("/big", big),
        Route("/events", events),
    ],
    middleware=[Middleware(GZipMiddleware, minimum_size=500)],
    lifespan=lifespan,
)
