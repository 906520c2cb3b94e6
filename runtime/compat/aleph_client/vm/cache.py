"""`aleph_client.vm.cache.VmCache`: the node's per-program cache, through the guest API.

Programs create it at import time (`cache = VmCache()` at module level, as the docs
show), possibly before any event loop runs: the HTTP session is made on first use.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession
from aleph.sdk.vm.cache import VmCache as _SDKVmCache

from ..conf import settings

__all__ = ("VmCache",)


class VmCache:
    """Virtual Machines can use this cache to store temporary data in memory on the host."""

    def __init__(
        self,
        session: ClientSession | None = None,
        connector_url: str | None = None,
        unix_socket: str | None = None,
    ):
        self._session = session
        self._connector_url = connector_url
        self._unix_socket = unix_socket
        self._cache: _SDKVmCache | None = None

    def _sdk(self) -> _SDKVmCache:
        if self._cache is None:
            self._cache = _SDKVmCache(
                session=self._session,
                connector_url=self._connector_url or settings.API_HOST,
                unix_socket=self._unix_socket or settings.API_UNIX_SOCKET,
            )
        return self._cache

    @property
    def session(self) -> ClientSession:
        return self._sdk().session

    async def get(self, key: str) -> bytes | None:
        return await self._sdk().get(key)

    async def set(self, key: str, value: str | bytes) -> Any:
        return await self._sdk().set(key, value)

    async def delete(self, key: str) -> Any:
        return await self._sdk().delete(key)

    async def keys(self, pattern: str = "*") -> list[str]:
        return await self._sdk().keys(pattern)
