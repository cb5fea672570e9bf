"""Signed admin UI sessions and their CSRF tokens: pure functions, the clock passed in.

A session is a stateless token, `v1.<payload>.<signature>`, both parts base64url: the payload is a
small JSON object (issued at, expiry, a random session id and the session's CSRF token) and the
signature is HMAC-SHA256 over `v1.<payload>`. The signing key is derived from SECRET_KEY *and* the
admin key, so changing either one ends every session at once. Logout removes the cookie; a copied
token stays valid until it expires, which is why the lifetime is a working day, not weeks.

CSRF: the token lives inside the signed session, and the page echoes it in a header or form field
on every state-changing request (double submit, bound to the session, so it cannot be planted).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

VERSION = "v1"
DEFAULT_TTL_SECONDS = 8 * 3600
# Tokens are a few hundred bytes; anything much longer is not ours and is not worth hashing.
MAX_TOKEN_LENGTH = 1024
# A session issued by an instance whose clock runs ahead is still accepted within this margin.
CLOCK_SKEW_SECONDS = 60
_KEY_LABEL = b"heliox-ui-session\x00"


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    csrf_token: str
    issued_at: int
    expires_at: int


def signing_key(secret_key: str, admin_key: str) -> bytes:
    """The HMAC key: bound to both secrets, so rotating either revokes every session."""
    admin_digest = hashlib.sha256(admin_key.encode("utf-8")).digest()
    return hmac.new(secret_key.encode("utf-8"), _KEY_LABEL + admin_digest, hashlib.sha256).digest()


def new_token() -> str:
    """A random URL-safe token (session ids, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def issue(key: bytes, *, now: float, ttl: int = DEFAULT_TTL_SECONDS) -> tuple[str, Session]:
    """A fresh session and its signed token."""
    issued = int(now)
    session = Session(
        session_id=new_token(),
        csrf_token=new_token(),
        issued_at=issued,
        expires_at=issued + ttl,
    )
    return encode(key, session), session


def encode(key: bytes, session: Session) -> str:
    payload = json.dumps(
        {
            "sid": session.session_id,
            "csrf": session.csrf_token,
            "iat": session.issued_at,
            "exp": session.expires_at,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode("utf-8")
    body = f"{VERSION}.{_b64encode(payload)}"
    return f"{body}.{_b64encode(_sign(key, body))}"


def decode(key: bytes, token: str, *, now: float) -> Session | None:
    """The session in `token` if it is ours, untampered and current; otherwise None."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        return None
    body = f"{parts[0]}.{parts[1]}"
    signature = _b64decode(parts[2])
    if signature is None or not hmac.compare_digest(signature, _sign(key, body)):
        return None
    raw = _b64decode(parts[1])
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    session = _session_from(data)
    if session is None:
        return None
    if session.expires_at <= now or session.issued_at > now + CLOCK_SKEW_SECONDS:
        return None
    return session


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Constant-time check of the CSRF token a request carries against its session's."""
    if not presented:
        return False
    return hmac.compare_digest(
        presented.encode("utf-8", "replace"), session.csrf_token.encode("utf-8")
    )


def _session_from(data: object) -> Session | None:
    if not isinstance(data, dict):
        return None
    sid, csrf, iat, exp = data.get("sid"), data.get("csrf"), data.get("iat"), data.get("exp")
    if not (isinstance(sid, str) and isinstance(csrf, str) and sid and csrf):
        return None
    # bool is an int in Python; a signed payload never holds one, but be exact anyway.
    if type(iat) is not int or type(exp) is not int:
        return None
    return Session(session_id=sid, csrf_token=csrf, issued_at=iat, expires_at=exp)


def _sign(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
