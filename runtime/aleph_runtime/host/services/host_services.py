"""What a compute node runs around one program's VM, on the host: the cache's Redis, the
guest API on `<uds>_53` and the HTTP front. The machine itself (QEMU, or the init as a
local process in dev mode) is started by the caller between `start()` and
`start_front()`:

    services = HostServices(state_dir, uds_path, vm_hash, seconds)
    await services.start()                  # Redis + guest API, before the VM boots
    ...                                     # boot the VM / dev container on uds_path, configure it
    url = await services.start_front()      # the program is reachable at url
    ...
    await services.stop()                   # front, guest API, Redis; no socket left

State directory layout (shared by every run, so the cache and the key persist):
`<state>/redis/` (redis.sock, dump.rdb, redis.log) and `<state>/signing.key`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aleph_runtime.host.services.guest_api import (
    DEFAULT_API_SERVER,
    GuestAPIServer,
    GuestAPISettings,
    guest_api_socket_path,
)
from aleph_runtime.host.services.http_front import DEFAULT_CLIENT_MAX_SIZE, HTTPFront, create_front_app
from aleph_runtime.host.services.redis_server import RedisServer
from aleph_runtime.host.services.signer import LocalSigner
from aleph_runtime.host.supervisor import SupervisorClient

logger = logging.getLogger(__name__)


class HostServices:
    def __init__(
        self,
        state_dir: str | os.PathLike,
        uds_path: str | os.PathLike,
        vm_hash: str,
        seconds: float,
        *,
        api_server: str = DEFAULT_API_SERVER,
        redis_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        code_ref: str | None = None,
        client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
        node_error_pages: bool = True,
    ):
        self.state_dir = Path(state_dir)
        self.uds_path = Path(uds_path)
        self.vm_hash = vm_hash
        self.seconds = seconds
        self.api_server = api_server
        self.redis_url = redis_url
        self.host = host
        self.port = port
        self.code_ref = code_ref
        self.client_max_size = client_max_size
        self.node_error_pages = node_error_pages
        self.client = SupervisorClient(self.uds_path)
        self.signer = LocalSigner.in_state_dir(self.state_dir)
        self.redis: RedisServer | None = None
        self.guest_api: GuestAPIServer | None = None
        self.front: HTTPFront | None = None

    async def start(self) -> HostServices:
        """Redis (our own unless a URL was given) and the guest API on `<uds>_53`."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            redis_url = self.redis_url
            if redis_url is None:
                self.redis = await RedisServer(self.state_dir / "redis").start()
                redis_url = self.redis.url
            settings = GuestAPISettings(
                vm_hash=self.vm_hash, redis_url=redis_url, signer=self.signer, api_server=self.api_server
            )
            self.guest_api = await GuestAPIServer(guest_api_socket_path(self.uds_path), settings).start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def restart_guest_api(self) -> None:
        """A new guest API on `<uds>_53` for a new machine (a stopped VM's cleanup removes
        the sockets next to its own; Redis, the key and the cache stay)."""
        if self.guest_api is None:
            return
        settings = self.guest_api.settings
        await self.guest_api.stop()
        self.guest_api = None
        self.guest_api = await GuestAPIServer(guest_api_socket_path(self.uds_path), settings).start()

    async def start_front(
        self,
        on_empty_answer: Callable[[], Awaitable[None]] | None = None,
        access_log: Callable[[str], None] | None = None,
        becomes_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """The HTTP front on host:port; its URL."""
        app = create_front_app(
            self.client,
            self.vm_hash,
            self.seconds,
            code_ref=self.code_ref,
            on_empty_answer=on_empty_answer,
            becomes_ready=becomes_ready,
            client_max_size=self.client_max_size,
            node_error_pages=self.node_error_pages,
            access_log=access_log,
        )
        self.front = await HTTPFront(app, self.host, self.port).start()
        return self.front.url

    async def signing_address(self) -> str:
        return await self.signer.address()

    async def stop(self) -> None:
        """Everything this started, in reverse order; safe to call twice or after a failed start."""
        if self.front is not None:
            await self.front.stop()
            self.front = None
        if self.guest_api is not None:
            await self.guest_api.stop()
            self.guest_api = None
        if self.redis is not None:
            await self.redis.stop()
            self.redis = None

    async def __aenter__(self) -> HostServices:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
