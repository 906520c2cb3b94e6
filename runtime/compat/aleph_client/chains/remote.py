"""`aleph_client.chains.remote.RemoteAccount`: an account whose key stays with the host.

Inside a program VM, `RemoteAccount.from_crypto_host(host="http://localhost",
unix_socket="/tmp/socat-socket")` asks the node's guest API for its signing account and
has every message signed there; the node signs only messages whose content `address` is
the VM's item hash, which is what ALEPH_ADDRESS_TO_USE holds.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import ClientSession
from aleph.sdk.chains.remote import AccountProperties
from aleph.sdk.chains.remote import RemoteAccount as _SDKRemoteAccount

from ..conf import settings

__all__ = ("AccountProperties", "RemoteAccount")

#: Where the guest API socket is inside a VM; programs write this path literally.
GUEST_API_SOCKET = "/tmp/socat-socket"


class RemoteAccount(_SDKRemoteAccount):
    @classmethod
    async def from_crypto_host(
        cls,
        host: str | None = None,
        unix_socket: str | None = None,
        session: ClientSession | None = None,
    ) -> RemoteAccount:
        # The legacy defaults, read when called: the SDK's are frozen at its import.
        configured = settings.REMOTE_CRYPTO_UNIX_SOCKET
        if unix_socket == GUEST_API_SOCKET and configured:
            # The docs' literal path means "the guest API": in dev mode it lives under the
            # program's private root, which ALEPH_REMOTE_CRYPTO_UNIX_SOCKET names (in a VM
            # the two are the same).
            unix_socket = configured
        return await super().from_crypto_host(
            host=host or settings.REMOTE_CRYPTO_HOST,
            unix_socket=unix_socket or configured,
            session=session,
        )

    def __del__(self):
        # The SDK's __del__ raises when no loop is running (an account dropped at exit).
        session = getattr(self, "_session", None)
        if session is None or session.closed:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(session.close())
