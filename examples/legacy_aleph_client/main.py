"""A program written as the aleph docs (and aleph-vm's tutorials/ADVANCED.md) show it, with
the legacy `aleph_client` API: it runs unchanged on this runtime, which ships those
modules over aleph-sdk-python (see README, "Writing a program").

- `/messages`: read a message from the network (through the node: works without internet);
- `/post_a_message`: post, signed by the node on the program's behalf (RemoteAccount);
- `/cache`: the node's per-program cache (VmCache);
- an event handler for aleph messages, as AlephApp allows.
"""

from datetime import datetime

from aleph_client.asynchronous import create_post, get_messages
from aleph_client.chains.remote import RemoteAccount
from aleph_client.vm.app import AlephApp
from aleph_client.vm.cache import VmCache
from fastapi import FastAPI

http_app = FastAPI()
app = AlephApp(http_app=http_app)
cache = VmCache()


@app.get("/")
async def index():
    return {
        "message": "Hello from the legacy aleph_client API",
        "routes": ["/messages", "/post_a_message", "/cache"],
    }


@app.get("/messages")
async def read_messages():
    messages = await get_messages(hashes=["f246f873c3e0f637a15c566e7a465d2ecbb83eaa024d54ccb8fb566b549a929e"])
    return {"Messages": messages}


@app.get("/post_a_message")
async def post_a_message():
    account = await RemoteAccount.from_crypto_host(host="http://localhost", unix_socket="/tmp/socat-socket")
    content = {
        "date": datetime.utcnow().isoformat(),
        "test": True,
        "answer": 42,
        "something": "interesting",
    }
    response = await create_post(
        account=account,
        post_content=content,
        post_type="test",
        ref=None,
        channel="TEST",
        inline=True,
        storage_engine="storage",
    )
    return {"response": response}


@app.get("/cache")
async def use_the_cache():
    await cache.set("key", "value")
    value = await cache.get("key")
    await cache.delete("key")
    return {"value": value.decode(), "after_delete": await cache.get("key")}


@app.event(filters=[{"type": "POST"}])
async def on_event(event):
    return {"result": "Good"}
