"""The comparison app on Quart."""

from quart import Quart, request

app = Quart(__name__)
BIG = "compressible text " * 500


@app.before_serving
async def startup():
    app.config["STARTED"] = "at startup"


@app.get("/echo/<name>")
async def echo(name):
    return {"name": name, "query": request.args.to_dict(flat=False)}


@app.post("/json")
async def post_json():
    return {"received": await request.get_json()}


@app.get("/cookies")
async def cookies():
    return dict(request.cookies)


@app.get("/headers")
async def headers():
    return {"x-test": request.headers.get("x-test")}


@app.get("/state")
async def state():
    return {"started": app.config["STARTED"]}


@app.get("/big")
async def big():
    return BIG, 200, {"content-type": "text/plain"}
