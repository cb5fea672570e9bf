"""The admin UI's session cookie: set at login, read by the admin API through a runtime hook.

The cookie is HttpOnly, SameSite=Strict, Secure on https, and scoped to the two path prefixes
that need it (/ui and /admin): it is never sent along with data-plane requests under /g/, which
the gateway forwards to upstreams.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from heliox.admin.auth import admin_key_actor
from heliox.admin.errors import AdminError
from heliox.config import Settings
from heliox.ui import session as sessions

COOKIE_NAME = "heliox_session"
COOKIE_PATHS = ("/ui", "/admin")
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ACTOR_SUFFIX = ":ui"


class CsrfRejected(AdminError):
    status = 403

    def __init__(self) -> None:
        super().__init__("missing or wrong CSRF token; reload the page and try again")


def session_key(settings: Settings) -> bytes:
    return sessions.signing_key(settings.secret_key, settings.admin_api_key)


def read_session(
    conn: HTTPConnection, settings: Settings, *, now: float | None = None
) -> sessions.Session | None:
    token = conn.cookies.get(COOKIE_NAME)
    if not token:
        return None
    return sessions.decode(session_key(settings), token, now=time.time() if now is None else now)


def ui_actor(settings: Settings) -> str:
    """The audit name of changes made through the UI: the admin key's fingerprint, marked."""
    return admin_key_actor(settings.admin_api_key) + ACTOR_SUFFIX


def session_actor_hook(settings: Settings) -> Callable[[Request], str | None]:
    """`runtime.session_actor`: the actor of a valid session cookie, None without one.

    A state-changing request must also carry the session's CSRF token in `X-CSRF-Token`; with a
    valid session but no (or a wrong) token it is refused with 403 rather than 401, so the page
    can tell the operator to reload instead of to log in.
    """

    def hook(request: Request) -> str | None:
        session = read_session(request, settings)
        if session is None:
            return None
        if request.method not in SAFE_METHODS and not sessions.csrf_matches(
            session, request.headers.get(CSRF_HEADER)
        ):
            raise CsrfRejected()
        return ui_actor(settings)

    return hook


def is_https(conn: HTTPConnection, settings: Settings) -> bool:
    """The browser's view: https directly, or through a trusted proxy that says so."""
    if conn.url.scheme in ("https", "wss"):
        return True
    proto = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if proto != "https" or conn.client is None:
        return False
    try:
        peer = ipaddress.ip_address(conn.client.host)
    except ValueError:
        return False
    return any(peer in net for net in settings.trusted_proxy_networks)


def set_session_cookie(response: Response, token: str, *, max_age: int, secure: bool) -> None:
    for path in COOKIE_PATHS:
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=max_age,
            path=path,
            secure=secure,
            httponly=True,
            samesite="strict",
        )


def clear_session_cookie(response: Response, *, secure: bool) -> None:
    for path in COOKIE_PATHS:
        response.delete_cookie(
            COOKIE_NAME, path=path, secure=secure, httponly=True, samesite="strict"
        )
