"""A FastAPI program with a lifespan, for the tests."""

import contextlib
import os

from fastapi import FastAPI

MARKERS = os.environ.get("MARKER_FILE", "/tmp/lifespan-markers")


def mark(event: str) -> None:
    with open(MARKERS, "a") as markers:
        markers.write(event + "\n")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    mark("startup")
    app.state.items = ["from-startup"]
    yield
    mark("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/items")
async def items():
    return {"items": app.state.items}


@app.post("/items/{name}")
async def add(name: str):
    app.state.items.append(name)
    return {"items": app.state.items}
