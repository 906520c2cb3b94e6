"""`aleph_client.models`: the SDK's response models, readable as attributes (aleph-client
0.5) and as the raw JSON dict aleph-client 0.4 returned (`response["messages"]`)."""

from __future__ import annotations

from typing import Any

from aleph.sdk.query.responses import MessagesResponse as _SDKMessagesResponse
from aleph.sdk.query.responses import PostsResponse as _SDKPostsResponse

__all__ = ("MessagesResponse", "PostsResponse")


class _JSONItems:
    """`response[key]`, `response.get(key)`, `key in response`: the API's JSON, as 0.4 gave it."""

    def _json(self) -> dict:
        return self.model_dump(mode="json")  # type: ignore[attr-defined]

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._json().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._json()

    def keys(self):
        return self._json().keys()


class MessagesResponse(_JSONItems, _SDKMessagesResponse):
    @classmethod
    def from_sdk(cls, response: _SDKMessagesResponse) -> MessagesResponse:
        return cls.model_construct(**dict(response))


class PostsResponse(_JSONItems, _SDKPostsResponse):
    @classmethod
    def from_sdk(cls, response: _SDKPostsResponse) -> PostsResponse:
        return cls.model_construct(**dict(response))
