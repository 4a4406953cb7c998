"""Nameko context data the gateway sets on every RPC and services pass on."""
from nameko.contextdata import ContextDataProvider

REQUEST_ID_KEY = "request_id"


class RequestId(ContextDataProvider):
    """The X-Request-ID of the HTTP request that caused this worker, or None."""
    context_key = REQUEST_ID_KEY
