"""`aleph_client.exceptions`: the SDK's exceptions, plus the error for what no longer exists."""

from aleph.sdk.exceptions import (
    BadSignatureError,
    BroadcastError,
    InvalidMessageError,
    MessageNotFoundError,
    MultipleMessagesError,
    QueryError,
)

__all__ = (
    "BadSignatureError",
    "BroadcastError",
    "InvalidMessageError",
    "LegacyAPIError",
    "MessageNotFoundError",
    "MultipleMessagesError",
    "QueryError",
)


class LegacyAPIError(NotImplementedError):
    """A legacy aleph_client function with no equivalent here; the message names the replacement."""
