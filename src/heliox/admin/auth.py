"""Admin authentication: the `X-Admin-Key` header, or the UI's session through a runtime hook."""

from __future__ import annotations

import hashlib
import hmac
import inspect
from typing import TYPE_CHECKING

from fastapi import Request

from heliox.admin.errors import Unauthorized

if TYPE_CHECKING:
    from heliox.runtime import Runtime

ADMIN_KEY_HEADER = b"x-admin-key"
ACTOR_PREFIX = "admin-key:"
ACTOR_STATE = "heliox_admin_actor"


def admin_key_actor(admin_key: str) -> str:
    """The audit name of whoever holds `admin_key`: a short fingerprint, never the key."""
    return ACTOR_PREFIX + hashlib.sha256(admin_key.encode("utf-8")).hexdigest()[:8]


def admin_key_matches(presented: bytes, expected: str) -> bool:
    """Constant-time comparison on bytes.

    Both sides are hashed first so that neither the length nor any content of the configured
    key shows in the timing; comparing bytes (not str) cannot raise on non-ASCII input.
    """
    if not expected:
        return False
    presented_digest = hashlib.sha256(presented).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(presented_digest, expected_digest)


def _header_values(request: Request, name: bytes) -> list[bytes]:
    # The raw ASGI bytes, exactly as sent: no decoding step that could fail or normalise.
    return [value for key, value in request.scope.get("headers", ()) if key.lower() == name]


async def require_admin(request: Request) -> str:
    """FastAPI dependency: the acting admin's audit name, or a 401 problem."""
    actor = getattr(request.state, ACTOR_STATE, None)
    if isinstance(actor, str):
        return actor
    return await authenticate(request)


async def authenticate(request: Request) -> str:
    """Check the request's credentials; remember and return the actor, or raise Unauthorized."""
    actor = await _actor(request)
    setattr(request.state, ACTOR_STATE, actor)
    return actor


async def _actor(request: Request) -> str:
    runtime: Runtime = request.app.state.runtime
    presented = _header_values(request, ADMIN_KEY_HEADER)
    # A presented key is an attempt: refused outright (429) while its address is locked out after
    # too many failures, and counted when wrong (admin.throttle). Requests without one are not.
    guard = runtime.admin_guard if presented else None
    attempt = await guard.attempt(request) if guard is not None else None
    # Two copies of the header are refused rather than guessing which one a proxy meant.
    if len(presented) == 1:
        expected: str = runtime.settings.admin_api_key
        if admin_key_matches(presented[0], expected):
            if guard is not None and attempt is not None:
                await guard.succeeded(attempt)
            return admin_key_actor(expected)
    hook = runtime.session_actor
    if hook is not None:
        actor = hook(request)
        if inspect.isawaitable(actor):
            actor = await actor
        if isinstance(actor, str) and actor:
            return actor
    if guard is not None and attempt is not None:
        await guard.failed(attempt, "x-admin-key")
    raise Unauthorized()
