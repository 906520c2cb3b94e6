"""The comparison app on Litestar."""

from typing import Any

from litestar import Litestar, MediaType, Request, get, post

BIG = "compressible text " * 500


def startup(app: Litestar) -> None:
    app.state.started = "at startup"


@get("/echo/{name:str}")
async def echo(name: str, request: Request) -> dict:
    return {"name": name, "query": {key: request.query_params.getall(key) for key in request.query_params}}


@post("/json", status_code=200)
async def post_json(data: Any) -> dict:
    return {"received": data}


@get("/cookies")
async def cookies(request: Request) -> dict:
    return dict(request.cookies)


@get("/headers")
async def headers(request: Request) -> dict:
    return {"x-test": request.headers.get("x-test")}


@get("/state")
async def state(request: Request) -> dict:
    return {"started": request.app.state.started}


@get("/big", media_type=MediaType.TEXT)
async def big() -> str:
    return BIG


app = Litestar(route_handlers=[echo, post_json, cookies, headers, state, big], on_startup=[startup])
