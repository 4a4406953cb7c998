"""The HTTP gateway (Flask, served by gunicorn)."""
import common  # noqa: F401  (first, so eventlet's notice is filtered before nameko loads it)
