"""What every process of the system shares: schemas, errors, events, config, RPC pool.

Importing this package silences eventlet's deprecation notice (eventlet is
nameko 2.x's concurrency library); no other warning is filtered.
"""
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
