"""API key generation: the plaintext is returned once; only its SHA-256 digest is stored."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from heliox.snapshot import hash_key

KEY_PREFIX = "hx_live_"
KEY_RANDOM_LENGTH = 32
DISPLAY_PREFIX_LENGTH = 12
# URL-safe and unambiguous when read aloud or retyped: no 0/O/o, 1/I/l.
KEY_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    plaintext: str
    key_hash: str
    key_prefix: str

    def __repr__(self) -> str:  # keeps the plaintext out of logs and tracebacks
        return f"GeneratedKey(key_prefix={self.key_prefix!r})"


def display_prefix(plaintext: str) -> str:
    """The part of a key shown in listings and logs."""
    return plaintext[:DISPLAY_PREFIX_LENGTH]


def generate_api_key() -> GeneratedKey:
    """A new key: `hx_live_` + 32 random characters (about 185 bits)."""
    body = "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_RANDOM_LENGTH))
    plaintext = KEY_PREFIX + body
    return GeneratedKey(plaintext, hash_key(plaintext), display_prefix(plaintext))
