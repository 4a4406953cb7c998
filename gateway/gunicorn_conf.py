"""gunicorn settings for the gateway, from the environment.

gthread workers: each thread borrows one pooled RPC proxy per request, so
the pool is sized to the thread count.
"""
import os

import common  # noqa: F401
from common.log import logging_config
from gateway import server_errors

# What gunicorn answers itself (a request line over 4094 bytes: 414, ...) in the
# contract's JSON error shape, not as gunicorn's HTML page.
server_errors.install()

bind = f"{os.environ.get('GATEWAY_HOST', '127.0.0.1')}:{os.environ.get('GATEWAY_PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_THREADS", "16"))
os.environ.setdefault("RPC_POOL_SIZE", str(threads))
timeout = 60
graceful_timeout = 20
# The app logs each request itself (JSON, with the request id); gunicorn's own
# lines go through the same JSON formatter.
accesslog = None
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
logconfig_dict = {
    **logging_config(os.environ.get("LOG_LEVEL", "INFO").upper()),
    "loggers": {
        "gunicorn.error": {"level": os.environ.get("LOG_LEVEL", "INFO").upper(), "handlers": ["console"],
                           "propagate": False},
        # Access lines come from the app (they carry the request id); silence gunicorn's copy.
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
}
# gunicorn's control socket has one fixed default path per user: two gateways
# (a dev stack and the test suite) would fight over it, and we do not use it.
control_socket_disable = True
