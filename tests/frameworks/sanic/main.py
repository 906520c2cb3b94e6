"""The comparison app on Sanic, served through ASGI."""

from sanic import Sanic
from sanic.response import json, text

app = Sanic("comparison")
BIG = "compressible text " * 500


@app.before_server_start
async def startup(app, _loop=None):
    app.ctx.started = "at startup"


@app.get("/echo/<name:str>")
async def echo(request, name):
    return json({"name": name, "query": {key: request.args.getlist(key) for key in request.args}})


@app.post("/json")
async def post_json(request):
    return json({"received": request.json})


@app.get("/cookies")
async def cookies(request):
    return json({key: request.cookies.get(key) for key in request.cookies})


@app.get("/headers")
async def headers(request):
    return json({"x-test": request.headers.get("x-test")})


@app.get("/state")
async def state(request):
    return json({"started": request.app.ctx.started})


@app.get("/big")
async def big(request):
    return text(BIG)
