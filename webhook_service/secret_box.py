"""Webhook secrets at rest: encrypted with WEBHOOK_SECRET_KEY (Fernet, from `cryptography`).

The key may list several Fernet keys separated by commas: the first encrypts, every one
decrypts (MultiFernet), so a key is rotated by putting the new one first, then dropping the
old one once every secret was written again.
"""
import functools

from cryptography.fernet import Fernet, MultiFernet


@functools.cache
def _box(keys):
    return MultiFernet([Fernet(key.strip()) for key in keys.split(",")])


def encrypt(keys, secret):
    """`secret` (text) encrypted with the first of `keys` (WEBHOOK_SECRET_KEY's value)."""
    return _box(keys).encrypt(secret.encode()).decode()


def decrypt(keys, token):
    return _box(keys).decrypt(token.encode()).decode()
