"""The comparison app on BlackSheep."""

from blacksheep import Application, Request, json, text

app = Application()
BIG = "compressible text " * 500
STATE = {}


async def startup(application):
    STATE["started"] = "at startup"


app.on_start += startup


@app.router.get("/echo/{name}")
async def echo(request: Request, name: str):
    return json({"name": name, "query": dict(request.query)})


@app.router.post("/json")
async def post_json(request: Request):
    return json({"received": await request.json()})


@app.router.get("/cookies")
async def cookies(request: Request):
    return json(dict(request.cookies))


@app.router.get("/headers")
async def headers(request: Request):
    value = request.get_first_header(b"x-test")
    return json({"x-test": value.decode() if value is not None else None})


@app.router.get("/state")
async def state(request: Request):
    return json({"started": STATE.get("started")})


@app.router.get("/big")
async def big(request: Request):
    return text(BIG)
