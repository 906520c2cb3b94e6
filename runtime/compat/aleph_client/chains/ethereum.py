"""`aleph_client.chains.ethereum`: the SDK's ETHAccount, with the legacy fallback account.

aleph-client's `get_fallback_account()` kept its key in `settings.PRIVATE_KEY_FILE`
(`device.key` in the working directory); the SDK's default is a file under the user's
config directory. The legacy default is kept, so a program finds the key it made before.
"""

from __future__ import annotations

from pathlib import Path

from aleph.sdk.chains.ethereum import ETHAccount, verify_signature
from aleph.sdk.chains.ethereum import get_fallback_account as _sdk_get_fallback_account

from ..conf import settings

__all__ = ("ETHAccount", "get_fallback_account", "verify_signature")


def get_fallback_account(path: Path | None = None, chain=None) -> ETHAccount:
    """An ETHAccount whose key is read from (or created in) `path`, by default settings.PRIVATE_KEY_FILE."""
    if settings.PRIVATE_KEY_STRING and path is None:
        return ETHAccount(
            private_key=bytes.fromhex(settings.PRIVATE_KEY_STRING.removeprefix("0x")), chain=chain
        )
    return _sdk_get_fallback_account(path=Path(path or settings.PRIVATE_KEY_FILE), chain=chain)
