"""`aleph_client.asynchronous`: the legacy module-level functions, over the SDK's clients.

Each function opens an `AlephHttpClient` (or, to post, an `AuthenticatedAlephHttpClient`
around the given account) for the call, with the legacy keyword arguments mapped:

| legacy                                   | SDK                                              |
|------------------------------------------|--------------------------------------------------|
| `pagination=`, `page=`                   | `page_size=`, `page=`                            |
| `message_type=` (one type)               | `MessageFilter(message_types=[...])`             |
| `hashes=`, `channels=`, `refs=`, ...     | `MessageFilter(...)` / `PostFilter(...)` fields  |
| `types=` (get_posts)                     | `PostFilter(types=...)`                          |
| `inline=`                                | `inline=` / `allow_inlining=`                    |
| `storage_engine="storage"` (a string)    | `StorageEnum.storage`                            |
| `api_server=`                            | the client's `api_server`                        |
| `session=`                               | the client talks through that session's connector |
| `address=` (default ALEPH_ADDRESS_TO_USE)| `address=`                                       |

Posting returns the signed message (as aleph-client 0.5 did), not the SDK's
(message, status) pair. As in aleph-client, the default API server and Unix socket are
ALEPH_API_HOST and ALEPH_API_UNIX_SOCKET: the node's guest API inside a program VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import ClientSession
from aleph.sdk.client import AlephHttpClient, AuthenticatedAlephHttpClient
from aleph.sdk.query.filters import MessageFilter, PostFilter
from aleph.sdk.utils import extended_json_encoder, get_message_type_value
from aleph_message.models import (
    AggregateMessage,
    AlephMessage,
    ForgetMessage,
    MessageType,
    PostMessage,
    StoreMessage,
)

from .conf import settings
from .exceptions import LegacyAPIError, MessageNotFoundError, MultipleMessagesError
from .models import MessagesResponse, PostsResponse
from .types import Account, GenericMessage, StorageEnum

logger = logging.getLogger(__name__)

__all__ = (
    "create_aggregate",
    "create_post",
    "create_program",
    "create_store",
    "download_file",
    "fetch_aggregate",
    "fetch_aggregates",
    "forget",
    "get_fallback_session",
    "get_message",
    "get_messages",
    "get_posts",
    "submit",
    "watch_messages",
)

Date = datetime | float | int | None


@contextlib.asynccontextmanager
async def _client(
    api_server: str | None, session: ClientSession | None, account: Account | None = None
) -> AsyncIterator[AlephHttpClient]:
    """The SDK client for one legacy call; through `session`'s connector when one is given."""
    api_server = api_server or settings.API_HOST
    # With a session of the caller's, its connector decides how to connect (e.g. a Unix socket).
    options: dict[str, Any] = dict(
        api_server=api_server, api_unix_socket=settings.API_UNIX_SOCKET, allow_unix_sockets=session is None
    )
    client = (
        AlephHttpClient(**options) if account is None else AuthenticatedAlephHttpClient(account, **options)
    )
    if session is not None:
        client._http_session = aiohttp.ClientSession(
            base_url=api_server,
            connector=session.connector,
            connector_owner=False,
            json_serialize=lambda obj: json.dumps(obj, default=extended_json_encoder),
        )
    async with client:
        yield client


def _storage_engine(value: str | StorageEnum | None) -> StorageEnum:
    if value is None:
        return StorageEnum.storage
    try:
        return StorageEnum(value)
    except ValueError:
        raise ValueError(f"Unknown storage engine: {value!r} (expected 'storage' or 'ipfs')") from None


def _message_type(value: str | MessageType | None) -> list[MessageType] | None:
    if value is None:
        return None
    return [MessageType(getattr(value, "value", value))]


def _date(value: datetime | float | int | None) -> datetime | float | None:
    # aleph-client passed an int timestamp through; the SDK takes only float or datetime.
    return float(value) if isinstance(value, int) else value


def _address(address: str | None, account: Account) -> str:
    return address or settings.ADDRESS_TO_USE or account.get_address()


# --- reading ---


async def get_messages(
    pagination: int = 200,
    page: int = 1,
    message_type: MessageType | str | None = None,
    content_types: Iterable[str] | None = None,
    content_keys: Iterable[str] | None = None,
    refs: Iterable[str] | None = None,
    addresses: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    hashes: Iterable[str] | None = None,
    channels: Iterable[str] | None = None,
    chains: Iterable[str] | None = None,
    start_date: Date = None,
    end_date: Date = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
    ignore_invalid_messages: bool = True,
    invalid_messages_log_level: int = logging.NOTSET,
    message_types: Iterable[MessageType] | None = None,
) -> MessagesResponse:
    """Messages matching every given filter: `.messages`, `.pagination_total`... (or `["messages"]`)."""
    message_filter = MessageFilter(
        message_types=list(message_types) if message_types is not None else _message_type(message_type),
        content_types=content_types,
        content_keys=content_keys,
        refs=refs,
        addresses=addresses,
        tags=tags,
        hashes=hashes,
        channels=channels,
        chains=chains,
        start_date=_date(start_date),
        end_date=_date(end_date),
    )
    async with _client(api_server, session) as client:
        response = await client.get_messages(
            page_size=pagination,
            page=page,
            message_filter=message_filter,
            ignore_invalid_messages=ignore_invalid_messages,
            invalid_messages_log_level=invalid_messages_log_level,
        )
    return MessagesResponse.from_sdk(response)


async def get_message(
    item_hash: str,
    message_type: type[GenericMessage] | None = None,
    channel: str | None = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
) -> GenericMessage:
    """The one message with this item hash; MessageNotFoundError when there is none."""
    response = await get_messages(
        hashes=[item_hash], channels=[channel] if channel else None, session=session, api_server=api_server
    )
    if not response.messages:
        raise MessageNotFoundError(f"No such hash {item_hash}")
    if len(response.messages) != 1:
        raise MultipleMessagesError(f"Multiple messages found for the same item_hash `{item_hash}`")
    message = response.messages[0]
    if message_type is not None:
        expected = get_message_type_value(message_type)
        if message.type != expected:
            raise TypeError(
                f"The message type '{message.type}' does not match the expected type '{expected}'"
            )
    return message  # type: ignore[return-value]


async def get_posts(
    pagination: int = 200,
    page: int = 1,
    types: Iterable[str] | None = None,
    refs: Iterable[str] | None = None,
    addresses: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    hashes: Iterable[str] | None = None,
    channels: Iterable[str] | None = None,
    chains: Iterable[str] | None = None,
    start_date: Date = None,
    end_date: Date = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
) -> PostsResponse:
    """The latest version of each matching post: `.posts` (or `["posts"]`, the API's JSON)."""
    post_filter = PostFilter(
        types=types,
        refs=refs,
        addresses=addresses,
        tags=tags,
        hashes=hashes,
        channels=channels,
        chains=chains,
        start_date=_date(start_date),
        end_date=_date(end_date),
    )
    async with _client(api_server, session) as client:
        response = await client.get_posts(page_size=pagination, page=page, post_filter=post_filter)
    return PostsResponse.from_sdk(response)


async def fetch_aggregate(
    address: str,
    key: str,
    limit: int | None = 100,
    session: ClientSession | None = None,
    api_server: str | None = None,
) -> dict[str, Any]:
    """One aggregate's content. (`limit` is accepted and ignored: it never limited one key.)"""
    async with _client(api_server, session) as client:
        return await client.fetch_aggregate(address=address, key=key)


async def fetch_aggregates(
    address: str,
    keys: Iterable[str] | None = None,
    limit: int | None = 100,
    session: ClientSession | None = None,
    api_server: str | None = None,
) -> dict[str, dict]:
    """Several aggregates of one address, by key (all of them when `keys` is None)."""
    async with _client(api_server, session) as client:
        return await client.fetch_aggregates(address=address, keys=keys)


async def download_file(
    file_hash: str, session: ClientSession | None = None, api_server: str | None = None
) -> bytes:
    """A stored file's bytes, from the API's storage engine; an HTTP error raises."""
    # Not the SDK's download_file: it returns b"" on a server error instead of raising.
    async with (
        _client(api_server, session) as client,
        client.http_session.get(f"/api/v0/storage/raw/{file_hash}") as response,
    ):
        response.raise_for_status()
        return await response.read()


async def watch_messages(
    message_type: MessageType | str | None = None,
    content_types: Iterable[str] | None = None,
    refs: Iterable[str] | None = None,
    addresses: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    hashes: Iterable[str] | None = None,
    channels: Iterable[str] | None = None,
    chains: Iterable[str] | None = None,
    start_date: Date = None,
    end_date: Date = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
) -> AsyncIterator[AlephMessage]:
    """Current and future matching messages, over the API's websocket."""
    message_filter = MessageFilter(
        message_types=_message_type(message_type),
        content_types=content_types,
        refs=refs,
        addresses=addresses,
        tags=tags,
        hashes=hashes,
        channels=channels,
        chains=chains,
        start_date=_date(start_date),
        end_date=_date(end_date),
    )
    async with _client(api_server, session) as client:
        async for message in client.watch_messages(message_filter=message_filter):
            yield message


# --- posting: signed by the account (the node's, through RemoteAccount, in a VM) ---


async def create_post(
    account: Account,
    post_content,
    post_type: str,
    ref: str | None = None,
    address: str | None = None,
    channel: str | None = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
    inline: bool = True,
    storage_engine: str | StorageEnum = StorageEnum.storage,
    sync: bool = False,
) -> PostMessage:
    """Post `post_content` as `post_type`; the signed message (its `item_hash`, `content`...)."""
    async with _client(api_server, session, account) as client:
        message, _status = await client.create_post(  # type: ignore[attr-defined]
            post_content=post_content,
            post_type=post_type,
            ref=ref,
            address=_address(address, account),
            channel=channel or settings.DEFAULT_CHANNEL,
            inline=inline,
            storage_engine=_storage_engine(storage_engine),
            sync=sync,
        )
    return message


async def create_aggregate(
    account: Account,
    key: str,
    content: dict[str, Any],
    address: str | None = None,
    channel: str | None = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
    inline: bool = True,
    sync: bool = False,
) -> AggregateMessage:
    """Set `content` under `key` in the address's aggregates; the signed message."""
    async with _client(api_server, session, account) as client:
        message, _status = await client.create_aggregate(  # type: ignore[attr-defined]
            key=key,
            content=content,
            address=_address(address, account),
            channel=channel or settings.DEFAULT_CHANNEL,
            inline=inline,
            sync=sync,
        )
    return message


async def create_store(
    account: Account,
    address: str | None = None,
    file_content: bytes | None = None,
    file_hash: str | None = None,
    guess_mime_type: bool = False,
    ref: str | None = None,
    storage_engine: str | StorageEnum = StorageEnum.storage,
    extra_fields: dict | None = None,
    channel: str | None = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
    sync: bool = False,
) -> StoreMessage:
    """Store a file (its content, or the hash of one already stored); the signed message."""
    async with _client(api_server, session, account) as client:
        message, _status = await client.create_store(  # type: ignore[attr-defined]
            address=_address(address, account),
            file_content=file_content,
            file_hash=file_hash,
            guess_mime_type=guess_mime_type,
            ref=ref,
            storage_engine=_storage_engine(storage_engine),
            extra_fields=extra_fields,
            channel=channel or settings.DEFAULT_CHANNEL,
            sync=sync,
        )
    return message


async def forget(
    account: Account,
    hashes: list[str],
    reason: str | None,
    storage_engine: str | StorageEnum = StorageEnum.storage,
    channel: str | None = None,
    address: str | None = None,
    session: ClientSession | None = None,
    api_server: str | None = None,
    sync: bool = False,
) -> ForgetMessage:
    """Ask the network to forget the messages with these hashes; the signed FORGET message."""
    async with _client(api_server, session, account) as client:
        message, _status = await client.forget(  # type: ignore[attr-defined]
            hashes=hashes,
            reason=reason,
            storage_engine=_storage_engine(storage_engine),
            channel=channel or settings.DEFAULT_CHANNEL,
            address=_address(address, account),
            sync=sync,
        )
    return message


async def submit(
    account: Account,
    content: dict[str, Any],
    message_type: MessageType | str,
    channel: str | None = None,
    api_server: str | None = None,
    storage_engine: str | StorageEnum = StorageEnum.storage,
    session: ClientSession | None = None,
    inline: bool = True,
    sync: bool = False,
) -> AlephMessage:
    """Sign and broadcast a message of any type with this content; the signed message."""
    async with _client(api_server, session, account) as client:
        message, _status, _response = await client.submit(  # type: ignore[attr-defined]
            content=content,
            message_type=MessageType(getattr(message_type, "value", message_type)),
            channel=channel or settings.DEFAULT_CHANNEL,
            storage_engine=_storage_engine(storage_engine),
            allow_inlining=inline,
            sync=sync,
        )
    return message


# --- what has no equivalent ---


def _replaced(name: str, replacement: str):
    def unavailable(*args, **kwargs):
        raise LegacyAPIError(
            f"aleph_client.asynchronous.{name} is not available in this runtime: use {replacement}"
        )

    unavailable.__name__ = name
    unavailable.__qualname__ = name
    unavailable.__doc__ = f"Not available: use {replacement}."
    return unavailable


create_program = _replaced(
    "create_program",
    "aleph.sdk.client.AuthenticatedAlephHttpClient(account).create_program(...) (aleph-sdk-python)",
)
ipfs_push = _replaced(
    "ipfs_push", "aleph.sdk.client.AuthenticatedAlephHttpClient(account).ipfs_push(content)"
)
storage_push = _replaced(
    "storage_push", "aleph.sdk.client.AuthenticatedAlephHttpClient(account).storage_push(content)"
)
ipfs_push_file = _replaced(
    "ipfs_push_file", "aleph.sdk.client.AuthenticatedAlephHttpClient(account).ipfs_push_file(file_content)"
)
storage_push_file = _replaced(
    "storage_push_file",
    "aleph.sdk.client.AuthenticatedAlephHttpClient(account).storage_push_file(file_content)",
)
broadcast = _replaced(
    "broadcast", "submit(account, content, message_type) or create_post(...), which sign and broadcast"
)


#: One session per thread, as aleph-client kept; replaced when closed or its loop is gone.
_fallback_sessions: dict[int, ClientSession] = {}


def get_fallback_session() -> ClientSession:
    """The thread's aiohttp session to the legacy default API: through ALEPH_API_UNIX_SOCKET when set."""
    thread = threading.get_native_id()
    session = _fallback_sessions.get(thread)
    loop = asyncio.get_running_loop()
    if session is None or session.closed or getattr(session, "_loop", loop) is not loop:
        connector = aiohttp.UnixConnector(path=settings.API_UNIX_SOCKET) if settings.API_UNIX_SOCKET else None
        session = _fallback_sessions[thread] = aiohttp.ClientSession(connector=connector)
    return session
