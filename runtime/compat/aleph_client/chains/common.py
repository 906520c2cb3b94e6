"""`aleph_client.chains.common`: the SDK's account base and helpers."""

from aleph.sdk.chains.common import (
    BaseAccount,
    generate_key,
    get_fallback_private_key,
    get_public_key,
    get_verification_buffer,
)

__all__ = (
    "BaseAccount",
    "generate_key",
    "get_fallback_private_key",
    "get_public_key",
    "get_verification_buffer",
)
