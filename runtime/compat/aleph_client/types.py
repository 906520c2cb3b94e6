"""`aleph_client.types`: the SDK's own types under their legacy names."""

from aleph.sdk.types import Account, AccountFromPrivateKey, GenericMessage, StorageEnum

__all__ = ("Account", "AccountFromPrivateKey", "GenericMessage", "StorageEnum")
