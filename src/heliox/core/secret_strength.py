"""Is a configured secret (the admin key, the session secret) too easy to guess? Pure.

Refused: known placeholders (anything containing "change-me"/"changeme"/"replace-me", the demo
defaults, common words such as "password" or "admin-secret-key"), one character repeated, and
anything below `MIN_BITS` by a deliberately simple, conservative estimate: length * log2 of the
number of *distinct* characters used. A value drawn at random from a large alphabet scores close
to its real strength (32 random hex characters: about 123 bits; `secrets.token_urlsafe(32)`:
about 230); a long value built from a few repeated characters scores what it deserves. The
estimate knows nothing of dictionaries: generate secrets, do not invent them.
"""

from __future__ import annotations

import math
import re

MIN_BITS = 64
GENERATE_HINT = (
    "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' "
    "(or openssl rand -hex 32)"
)
# Compared with separators and case removed: "Change_Me" is "changeme".
_PLACEHOLDER_PARTS = ("changeme", "replaceme", "yourkey", "yoursecret", "placeholder", "xxxxxxxx")
_WEAK_WORDS = frozenset(
    {
        "admin", "adminkey", "adminsecret", "adminsecretkey", "adminpassword", "administrator",
        "secret", "secretkey", "mysecret", "mysecretkey", "supersecret", "supersecretkey",
        "password", "passw0rd", "password1", "password123", "letmein", "default", "example",
        "test", "testing", "heliox", "helioxadmin", "helioxsecret", "qwerty", "qwertyuiop",
        "iloveyou", "welcome", "apikey", "token", "key", "demo",
    }
)  # fmt: skip
_SEPARATORS = re.compile(r"[\s_\-.:/]+")


def estimated_bits(value: str) -> float:
    """length * log2(distinct characters): 0 for one character repeated."""
    distinct = len(set(value))
    return len(value) * math.log2(distinct) if distinct > 1 else 0.0


def weakness(value: str) -> str | None:
    """Why `value` is too easy to guess, or None when it passes."""
    if len(set(value)) == 1:
        return "is one character repeated"
    folded = _SEPARATORS.sub("", value).lower()
    if any(part in folded for part in _PLACEHOLDER_PARTS):
        return "is a placeholder from an example file, not a secret"
    if folded in _WEAK_WORDS or folded.rstrip("0123456789") in _WEAK_WORDS:
        return "is a well-known default or common word"
    bits = estimated_bits(value)
    if bits < MIN_BITS:
        return (
            f"is too easy to guess (about {bits:.0f} bits by length * log2(distinct "
            f"characters); at least {MIN_BITS} needed)"
        )
    return None
