"""A FastAPI program using what a compute node offers: run with `entrypoint: main:app`.

- lifespan: resources opened once at startup, shared through the lifespan state, closed
  at shutdown (which runs only when the VM halts); startups and shutdowns are logged to
  the persistent volume so a restart shows both ran;
- the node's cache (`VmCache`, a Redis on the host, per-program keys);
- the node's signing key (`RemoteAccount`: messages signed in the VM's name), and posting
  to the network through the node (`/post`);
- a counter in a file on a persistent volume, surviving restarts;
- an event handler: aleph messages posted to the node reach `on_event`.

Only fastapi and aleph-sdk-python are needed; both are in the runtime image.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

from aleph.sdk.vm.app import AlephApp
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

#: Where the program's persistent volume is mounted (the message's `volumes[].mount`).
VOLUME = Path(os.environ.get("EXAMPLE_VOLUME", "/var/lib/example"))


def vm_hash() -> str | None:
    """This program's item hash: ALEPH_ADDRESS_TO_USE (hex), else the hostname (its base32)."""
    address = os.environ.get("ALEPH_ADDRESS_TO_USE", "")
    if len(address) == 64:
        return address
    label = socket.gethostname()
    try:
        raw = base64.b32decode(label.upper() + "=" * (-len(label) % 8))
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def log_lifespan(event: str) -> None:
    VOLUME.mkdir(parents=True, exist_ok=True)
    with open(VOLUME / "lifespan.log", "a") as log:
        log.write(f"{event} {time.time():.3f}\n")
        log.flush()
        os.fsync(log.fileno())


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: dict = {"started_at": time.time(), "cache": None, "account": None}
    if os.environ.get("ALEPH_API_UNIX_SOCKET"):
        from aleph.sdk.vm.cache import VmCache

        state["cache"] = VmCache()
    else:  # outside a VM (e.g. `uvicorn main:app`): a dict stands in for the node's cache
        from aleph.sdk.vm.cache import LocalVmCache

        state["cache"] = LocalVmCache()
    log_lifespan("startup")
    yield {"resources": state, "counter_lock": asyncio.Lock()}
    log_lifespan("shutdown")
    if getattr(state["cache"], "session", None) is not None:
        await state["cache"].session.close()
    if state["account"] is not None:
        await state["account"]._session.close()


http_app = FastAPI(lifespan=lifespan)
app = AlephApp(http_app=http_app)


@http_app.get("/")
async def index(request: Request):
    return {
        "message": "Hello from aleph-runtime",
        "vm_hash": vm_hash(),
        "started_at": request.state.resources["started_at"],
    }


@http_app.get("/lifespan")
async def lifespan_state(request: Request):
    """The lifespan state is shared by every request; the log shows earlier startups and shutdowns."""
    log = VOLUME / "lifespan.log"
    events = [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []
    return {"started_at": request.state.resources["started_at"], "events": events}


# --- the node's cache ---


@http_app.get("/cache/set/{key}/{value}")
async def cache_set(request: Request, key: str, value: str):
    return await request.state.resources["cache"].set(key, value)


@http_app.get("/cache/get/{key}")
async def cache_get(request: Request, key: str):
    value = await request.state.resources["cache"].get(key)
    return {"key": key, "value": value.decode() if value is not None else None}


@http_app.get("/cache/remove/{key}")
async def cache_remove(request: Request, key: str):
    return await request.state.resources["cache"].delete(key)


@http_app.get("/cache/keys")
async def cache_keys(request: Request, pattern: str = "*"):
    return sorted(await request.state.resources["cache"].keys(pattern))


# --- the node's signing key ---


async def remote_account(resources: dict):
    """The node's signing account, asked for once (the key never enters the VM)."""
    if resources["account"] is None:
        from aleph.sdk.chains.remote import RemoteAccount

        resources["account"] = await RemoteAccount.from_crypto_host()
    return resources["account"]


@http_app.get("/sign")
async def sign(request: Request, text: str = "hello"):
    """Sign a POST message in this VM's name (its address is the VM's hash, as the node requires)."""
    account = await remote_account(request.state.resources)
    item_content = json.dumps(
        {"address": vm_hash(), "time": time.time(), "type": "example", "content": {"text": text}},
        separators=(",", ":"),
    )
    message = {
        "chain": account.CHAIN,
        "sender": account.get_address(),
        "type": "POST",
        "channel": "TEST",
        "time": time.time(),
        "item_type": "inline",
        "item_content": item_content,
        "item_hash": hashlib.sha256(item_content.encode()).hexdigest(),
    }
    return await account.sign_message(message)


@http_app.get("/post")
async def post(request: Request, text: str = "hello"):
    """Post a message to the network through the node, as the SDK does it: the host signs it
    in this VM's name (ALEPH_ADDRESS_TO_USE), the node re-publishes it with its own key."""
    from aleph.sdk.client import AuthenticatedAlephHttpClient

    account = await remote_account(request.state.resources)
    async with AuthenticatedAlephHttpClient(account=account) as client:
        message, status = await client.create_post(
            post_content={"text": text}, post_type="example", channel="TEST"
        )
    return {"item_hash": message.item_hash, "address": message.content.address, "status": status.value}


# --- a persistent volume ---


@http_app.get("/counter")
async def counter(request: Request):
    """Increment a counter kept on the persistent volume: it survives restarts of the VM."""
    path = VOLUME / "counter.txt"
    async with request.state.counter_lock:
        value = int(path.read_text()) + 1 if path.exists() else 1
        VOLUME.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as file:
            file.write(str(value))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    return {"counter": value}


# --- errors and events ---


@http_app.get("/raise")
async def raise_an_error():
    """An exception in the app: the node answers 500 with the traceback."""
    raise RuntimeError("This error is on purpose")


@http_app.get("/text", response_class=PlainTextResponse)
async def text():
    return "plain text\n"


# aleph-sdk's AlephApp calls a handler when one of its filters matches (an empty list
# matches nothing); the node decides which messages reach the program, from the
# program message's `on.message` subscriptions.
@app.event(filters=[{"type": "POST"}])
async def on_event(event: dict):
    """Called for aleph messages delivered to this program; the return value is the answer."""
    message = event.get("body") or {}
    return {"handled": True, "item_hash": message.get("item_hash"), "type": message.get("type")}
