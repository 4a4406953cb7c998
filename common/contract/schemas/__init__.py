"""Marshmallow schemas of every request and resource, a module per resource (base: what they share)."""
