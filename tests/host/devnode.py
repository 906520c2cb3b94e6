"""A whole local node around the real init in dev mode, for the tests: a private Redis,
the guest API on `<uds>_53`, the init as a local process (`init/init1.py --uds`), and
the HTTP front. The aleph network is stood in for by a local server speaking its JSON."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import zipfile
from pathlib import Path

from aleph_runtime.host.guest_api import GuestAPIServer, GuestAPISettings, guest_api_socket_path
from aleph_runtime.host.http_front import HTTPFront, create_front_app
from aleph_runtime.host.signer import LocalSigner
from aleph_runtime.host.supervisor import SupervisorClient

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "init" / "init1.py"
EXAMPLES = REPO / "examples"


def zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo.from_file(path, path.relative_to(directory).as_posix())
            if path.is_file():
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def program_config(vm_hash: str, interface: str, encoding: str, entrypoint: str, code: bytes, variables=None) -> dict:
    """A V2 config as the supervisor sends it (no network in dev mode)."""
    return {
        "input_data": None,
        "interface": interface,
        "vm_hash": vm_hash,
        "encoding": encoding,
        "entrypoint": entrypoint,
        "code": code,
        "ip": None,
        "route": None,
        "dns_servers": [],
        "volumes": [],
        "variables": variables or {},
        "ipv6": None,
        "ipv6_gateway": None,
        "authorized_keys": None,
    }


class DevNode:
    def __init__(self, directory: Path, redis_url: str, signer: LocalSigner, api_server: str, config: dict,
                 seconds: float = 30):
        self.directory = directory
        self.uds = directory / "v.sock"
        self.config = config
        self.seconds = seconds
        self.client = SupervisorClient(self.uds)
        self.guest_api = GuestAPIServer(
            guest_api_socket_path(self.uds),
            GuestAPISettings(vm_hash=config["vm_hash"], redis_url=redis_url, signer=signer, api_server=api_server),
        )
        self.front = HTTPFront(create_front_app(self.client, config["vm_hash"], seconds), port=0)
        self.process: asyncio.subprocess.Process | None = None
        self.log = directory / "init.log"

    async def start(self) -> DevNode:
        await self.guest_api.start()
        ready = await self.client.ready_signal().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALEPH_")}
        root = self.directory / "root"
        root.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-OO", str(INIT), "--uds", str(self.uds), "--root", str(root),
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            await ready.wait(timeout=60)
            await self.client.configure(self.config)
        except BaseException:
            await self.stop()
            raise
        await self.front.start()
        return self

    @property
    def url(self) -> str:
        return self.front.url

    async def stop(self) -> None:
        await self.front.stop()
        if self.process is not None and self.process.returncode is None:
            await self.client.halt()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await self.guest_api.stop()

    async def __aenter__(self) -> DevNode:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
