"""inventory_service: a Nameko service (entrypoints in service.py)."""
import common  # noqa: F401  (first, so eventlet's notice is filtered before nameko loads it)
