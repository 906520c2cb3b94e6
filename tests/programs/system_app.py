"""A plain ASGI program for the system tests: touches volumes, /data, the guest API, the network.

GET /info, /lib (a module from the squashfs volume at /opt/venv), /write?<value> (to the
ext4 volume at /mnt/store), /data-write?<value>, /cache, /sign.
FAIL_AT_SHUTDOWN=1 in its variables makes its lifespan shutdown raise.
"""

import hashlib
import json
import os
import socket
from urllib.parse import unquote


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if os.environ.get("FAIL_AT_SHUTDOWN"):
                raise RuntimeError("the program's shutdown handler exploded")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _route(path, query):
    if path == "/info":
        with open("/etc/resolv.conf") as resolv:
            resolv_conf = resolv.read()
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "resolv_conf": resolv_conf,
            "env": {key: value for key, value in os.environ.items() if key.startswith("ALEPH_")},
        }
    if path == "/lib":
        import sys

        sys.path.insert(0, "/opt/venv")
        import vollib

        return {"value": vollib.VALUE}
    if path == "/write":
        with open("/mnt/store/value", "w") as file:
            file.write(query)
        return {"written": query}
    if path == "/data-write":
        with open("/data/out.txt", "w") as file:
            file.write(query)
        with open("/data/in.txt") as file:
            return {"in": file.read()}
    if path == "/cache":
        from aleph.sdk.vm.cache import VmCache

        cache = VmCache()
        try:
            await cache.set("answer", b"forty-two")
            return {"get": (await cache.get("answer")).decode(), "keys": await cache.keys()}
        finally:
            await cache.session.close()
    if path == "/sign":
        from aleph.sdk.chains.remote import RemoteAccount

        account = await RemoteAccount.from_crypto_host()
        try:
            # The node signs only an inline message whose item_hash is its content's sha256.
            item_content = json.dumps({"address": os.environ["VM_HASH"], "type": "test", "content": {}})
            message = {
                "chain": "ETH",
                "type": "POST",
                "sender": account.get_address(),
                "item_type": "inline",
                "item_content": item_content,
                "item_hash": hashlib.sha256(item_content.encode()).hexdigest(),
                "time": 1700000000.0,
                "channel": "TEST",
            }
            return {"address": account.get_address(), "signed": await account.sign_message(message)}
        finally:
            await account._session.close()
    return {"error": f"no route {path}"}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await receive()
    query = unquote(scope["query_string"].decode())  # percent-encoded, as from any server
    body = json.dumps(await _route(scope["path"], query)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})
