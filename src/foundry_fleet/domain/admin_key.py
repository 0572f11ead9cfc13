"""Foundry's admin key file: hex PBKDF2-HMAC-SHA512 of the password (1000 rounds, 64 bytes)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# The salt Foundry uses when options.json sets no `passwordSalt`.
DEFAULT_SALT = "17c4f39053ac5a50d5797c665ad1f4e6"


def hash_admin_password(password: str, salt: str = DEFAULT_SALT) -> str:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt.encode(), 1000, 64).hex()


def verify_admin_password(password: str, stored_hex: str, salt: str = DEFAULT_SALT) -> bool:
    return hmac.compare_digest(hash_admin_password(password, salt), stored_hex.strip())


def generate_admin_password() -> str:
    """A strong password a person can still type: 24 URL-safe characters (~143 bits)."""
    return secrets.token_urlsafe(18)
