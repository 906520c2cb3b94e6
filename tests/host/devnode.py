"""A whole local node around the real init in dev mode, for the tests: a private Redis,
the guest API on `<uds>_53`, the init as a local process (`DevMachine`), and the HTTP
front. The aleph network is stood in for by a local server speaking its JSON."""

from __future__ import annotations

from pathlib import Path

from aleph_runtime.host.machines.dev import INIT1, DevMachine
from aleph_runtime.host.services.guest_api import GuestAPIServer, GuestAPISettings, guest_api_socket_path
from aleph_runtime.host.services.http_front import HTTPFront, create_front_app
from aleph_runtime.host.services.signer import LocalSigner

REPO = Path(__file__).resolve().parents[2]
INIT = INIT1
EXAMPLES = REPO / "examples"


class DevNode:
    def __init__(
        self,
        directory: Path,
        redis_url: str,
        signer: LocalSigner,
        api_server: str,
        config: dict,
        seconds: float = 30,
    ):
        self.directory = directory
        self.config = config
        self.log = open(directory / "init.log", "ab")  # noqa: SIM115 - closed in stop()
        self.init = DevMachine(directory, stdout=self.log, stderr=self.log)
        self.guest_api = GuestAPIServer(
            guest_api_socket_path(self.init.uds_path),
            GuestAPISettings(
                vm_hash=config["vm_hash"], redis_url=redis_url, signer=signer, api_server=api_server
            ),
        )
        self.front = HTTPFront(create_front_app(self.init.client, config["vm_hash"], seconds), port=0)

    async def start(self) -> DevNode:
        # The guest API first: the init's bridge connects to it when a program calls.
        await self.guest_api.start()
        try:
            await self.init.start(timeout=60)
            await self.init.configure(self.config)
            await self.front.start()
        except BaseException:
            await self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.front.url

    async def stop(self) -> None:
        await self.front.stop()
        await self.init.stop()
        await self.guest_api.stop()
        self.log.close()

    async def __aenter__(self) -> DevNode:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
