"""The node's signing key for programs: what `/properties` and `/sign` of the guest API use.

On a compute node these routes are forwarded to the VM connector, which signs with an
Ethereum key through aleph-sdk-python (`ETHAccount`). We do the same with a key of our
own, so `aleph.sdk.chains.remote.RemoteAccount` in a program gets the same answers
(chain "ETH", curve "secp256k1", an 0x address) and its signatures pass
`aleph.sdk.chains.ethereum.verify_signature` like any Ethereum-signed aleph message.

The key is 32 raw bytes in a file (aleph-sdk-python's own `ethereum.key` format, so an
existing SDK key can be dropped in), created with mode 0600 on first use.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

KEY_FILE_NAME = "signing.key"


class LocalSigner:
    def __init__(self, key_path: str | os.PathLike):
        self.key_path = Path(key_path)
        self._account: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike) -> LocalSigner:
        return cls(Path(state_dir) / KEY_FILE_NAME)

    def _load_or_create_key(self) -> bytes:
        if self.key_path.exists() and self.key_path.stat().st_size > 0:
            key = self.key_path.read_bytes()
            if len(key) != 32:
                raise ValueError(f"{self.key_path}: a signing key is 32 raw bytes, found {len(key)}")
            return key
        from aleph.sdk.chains.common import generate_key

        key = generate_key()
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_path.with_name(self.key_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.key_path)
        return key

    def account(self):
        """The `aleph.sdk.chains.ethereum.ETHAccount` (imported lazily: web3 is slow to import)."""
        if self._account is None:
            from aleph.sdk.chains.ethereum import ETHAccount

            self._account = ETHAccount(private_key=self._load_or_create_key())
        return self._account

    async def get_account(self):
        if self._account is None:
            async with self._lock:
                if self._account is None:
                    # The first import of web3 takes a second: keep the loop serving meanwhile.
                    await asyncio.get_running_loop().run_in_executor(None, self.account)
        return self._account

    async def properties(self) -> dict:
        """What the VM connector's `/properties` answers."""
        account = await self.get_account()
        return {
            "chain": account.CHAIN,
            "curve": account.CURVE,
            "address": account.get_address(),
            "public_key": account.get_public_key(),
        }

    async def address(self) -> str:
        return (await self.get_account()).get_address()

    async def sign_message(self, message: dict) -> dict:
        """Sign an aleph message dict in place, as the VM connector's `/sign` does.

        Sets `sender` when absent; raises ValueError when `sender` is another address.
        """
        account = await self.get_account()
        return await account.sign_message(message)
