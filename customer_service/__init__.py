"""customer_service: a Nameko service (entrypoints in service.py)."""
