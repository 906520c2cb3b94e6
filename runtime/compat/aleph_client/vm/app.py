"""`aleph_client.vm.app.AlephApp`: the SDK's, which also passes the lifespan scope to the
HTTP app (aleph-client's raised on it, so a FastAPI app's startup handlers never ran)."""

from aleph.sdk.vm.app import AlephApp, AsgiApplication, EventHandler

__all__ = ("AlephApp", "AsgiApplication", "EventHandler")
