"""gunicorn settings for the gateway, from the environment.

gthread workers: each thread borrows one pooled RPC proxy per request, so
the pool is sized to the thread count.
"""
import os

bind = f"{os.environ.get('GATEWAY_HOST', '127.0.0.1')}:{os.environ.get('GATEWAY_PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_THREADS", "16"))
os.environ.setdefault("RPC_POOL_SIZE", str(threads))
timeout = 60
graceful_timeout = 20
accesslog = "-"
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
# gunicorn's control socket has one fixed default path per user: two gateways
# (a dev stack and the test suite) would fight over it, and we do not use it.
control_socket_disable = True
