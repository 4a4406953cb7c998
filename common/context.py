"""Nameko context data the gateway sets on every RPC and services pass on."""
from nameko.contextdata import ContextDataProvider

REQUEST_ID_KEY = "request_id"
ACTOR_KEY = "actor"
SYSTEM_ACTOR = "system"


class RequestId(ContextDataProvider):
    """The X-Request-ID of the HTTP request that caused this worker, or None."""
    context_key = REQUEST_ID_KEY


class Actor(ContextDataProvider):
    """Who asked for the change (the token subject); `system` when nobody did."""
    context_key = ACTOR_KEY

    def get_dependency(self, worker_ctx):
        return worker_ctx.data.get(self.context_key) or SYSTEM_ACTOR
