"""The admin UI at /ui: login and logout, one server-rendered page per section, live streams.

Pages are Jinja2 templates (autoescaped) that carry no data of their own: the browser fills them
from the admin API with the session cookie, building the DOM with textContent only. Everything is
served with a strict Content-Security-Policy (scripts from this origin only, no inline script).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from jinja2 import Environment, FileSystemLoader
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heliox import __version__
from heliox.admin.auth import admin_key_matches
from heliox.admin.throttle import UI_LOGIN, TooManyFailures
from heliox.config import Settings
from heliox.runtime import AuthThrottle, Runtime
from heliox.ui import auth, session, streams

UI_PREFIX = "/ui"
HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
MAX_FORM_BYTES = 16 * 1024
LOGIN_COOKIE = "heliox_login"
LOGIN_COOKIE_PATH = "/ui/login"
LOGIN_COOKIE_SECONDS = 3600

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class NavItem:
    page: str
    label: str
    title: str


NAV = (
    NavItem("dashboard", "Dashboard", "Dashboard"),
    NavItem("tenants", "Tenants", "Tenants"),
    NavItem("keys", "Keys", "API keys"),
    NavItem("routes", "Routes", "Routes and cache policies"),
    NavItem("logs", "Logs", "Request logs"),
    NavItem("abuse", "Abuse", "Abuse detection"),
    NavItem("cache", "Cache", "Cache"),
    NavItem("audit", "Audit", "Audit log"),
)
PAGES = {item.page: item for item in NAV}

# Admin endpoints the UI uses that other parts of the product may not provide yet: a page whose
# endpoint is missing says so instead of calling it. (method, a path it would serve)
OPTIONAL_ENDPOINTS = {
    "analytics": ("GET", "/admin/analytics/summary"),
    "top_keys": ("GET", "/admin/analytics/top-keys"),
    "top_routes": ("GET", "/admin/analytics/top-routes"),
    "cache_hit_rate": ("GET", "/admin/analytics/cache-hit-rate"),
    "logs": ("GET", "/admin/analytics/logs"),
    "purge": ("POST", "/admin/cache/purge"),
    "abuse": ("GET", "/admin/abuse/blocked"),
    "unblock": ("POST", "/admin/abuse/unblock/1"),
    "block": ("POST", "/admin/abuse/block/1"),
    "abuse_events": ("GET", "/admin/abuse/events"),
    "key_usage": ("GET", "/admin/keys/1/usage"),
    "log_detail": ("GET", "/admin/analytics/logs/x"),
    "refusals": ("GET", "/admin/analytics/refusals"),
    "audit": ("GET", "/admin/audit"),
}
_SAFE_NEXT = re.compile(r"^/ui(/[A-Za-z0-9_\-./?=&%]*)?$")
_CACHE_STATUS = re.compile(r"^[A-Z_]{1,16}$")
_STATUS_FILTER = re.compile(r"^(?:[1-5][0-9][0-9]|[1-5]xx)$")
_METHOD_FILTER = re.compile(r"^[A-Z]{1,16}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what the gateway accepts or makes


@dataclass
class UiState:
    settings: Settings
    instance: str
    env: Environment
    timing: streams.StreamTiming = field(default_factory=streams.StreamTiming)
    feed: streams.DashboardFeed = field(init=False)
    session_ttl: int = session.DEFAULT_TTL_SECONDS

    def __post_init__(self) -> None:
        self.feed = streams.DashboardFeed(self.timing)


def mount_ui(api: FastAPI) -> UiState:
    """Serve the UI from `api` (its router and static files); the session hook is set apart."""
    runtime = api.state.runtime
    state = UiState(settings=runtime.settings, instance=runtime.instance_id, env=_environment())
    api.state.ui = state
    api.include_router(router)
    api.router.routes.append(
        Mount(f"{UI_PREFIX}/static", app=_StaticHeaders(StaticFiles(directory=STATIC_DIR)))
    )
    return state


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = lambda path: f"{UI_PREFIX}/static/{path}?v={__version__}"
    env.globals["nav"] = NAV
    env.globals["version"] = __version__
    return env


class _StaticHeaders:
    """Static assets with nosniff, revalidated on each use (ETag): module imports carry no
    version in their URLs, so a cached copy could outlive an upgrade."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


def _ui(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def features(app: Any) -> dict[str, bool]:
    """Which optional admin endpoints this gateway serves (asked of its router)."""
    return {name: _serves(app, method, path) for name, (method, path) in OPTIONAL_ENDPOINTS.items()}


def _serves(app: Any, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    routes: list[BaseRoute] = list(getattr(app, "routes", []))
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def _secure(request: Request) -> bool:
    return auth.is_https(request, _ui(request).settings)


def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    ui = _ui(request)
    html = ui.env.get_template(template).render(
        demo=ui.settings.is_demo, instance=ui.instance, **context
    )
    return _headers(HTMLResponse(html, status_code=status))


def _login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    location = f"{UI_PREFIX}/login"
    if _safe_next(target) and target not in (UI_PREFIX, UI_PREFIX + "/"):
        location += "?next=" + quote(target, safe="/")
    return _headers(RedirectResponse(location, status_code=303))


def _safe_next(target: str | None) -> bool:
    # Only our own pages: no scheme, no "//host", no backslashes, no login loop.
    return (
        bool(target)
        and _SAFE_NEXT.match(target or "") is not None
        and "//" not in (target or "")
        and not (target or "").startswith(f"{UI_PREFIX}/login")
        and not (target or "").startswith(f"{UI_PREFIX}/stream")
    )


# --- login and logout ---------------------------------------------------------------------------
@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return _headers(RedirectResponse(f"{UI_PREFIX}/dashboard", status_code=303))


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    ui = _ui(request)
    if auth.read_session(request, ui.settings) is not None:
        target = next if _safe_next(next) else f"{UI_PREFIX}/dashboard"
        return _headers(RedirectResponse(target, status_code=303))
    return _login_form(request, next_path=next)


def _login_form(
    request: Request, *, next_path: str, error: str = "", status: int = 200
) -> Response:
    token = session.new_token()
    response = _render(
        request,
        "login.html",
        status=status,
        title="Sign in",
        login_token=token,
        next_path=next_path if _safe_next(next_path) else "",
        error=error,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=LOGIN_COOKIE_SECONDS,
        path=LOGIN_COOKIE_PATH,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form body (first value of each field), or None when it is not one."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items() if values}


@router.post("/login")
async def login(request: Request) -> Response:
    ui = _ui(request)
    form = await _form(request)
    if form is None:
        return _login_form(request, next_path="", error="Send the sign-in form.", status=400)
    next_path = form.get("next", "")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    presented = form.get("login_token", "")
    if not expected or not session.csrf_matches(_token_session(expected), presented):
        return _login_form(
            request,
            next_path=next_path,
            error="The sign-in form expired. Enter the key again.",
            status=400,
        )
    # Sign-in attempts share the X-Admin-Key throttle: one record per client address.
    guard: AuthThrottle | None = request.app.state.runtime.admin_guard
    attempt = None
    if guard is not None:
        try:
            attempt = await guard.attempt(request)
        except TooManyFailures as exc:
            response = _login_form(
                request,
                next_path=next_path,
                error="Too many failed sign-ins from this address. "
                f"Try again in {exc.retry_after} seconds.",
                status=429,
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
    admin_key = form.get("admin_key", "")
    if not admin_key_matches(admin_key.encode("utf-8"), ui.settings.admin_api_key):
        if guard is not None and attempt is not None:
            await guard.failed(attempt, UI_LOGIN)
        return _login_form(
            request, next_path=next_path, error="That admin key is not valid.", status=401
        )
    if guard is not None and attempt is not None:
        await guard.succeeded(attempt)
    token, _ = session.issue(auth.session_key(ui.settings), now=time.time(), ttl=ui.session_ttl)
    target = next_path if _safe_next(next_path) else f"{UI_PREFIX}/dashboard"
    response = _headers(RedirectResponse(target, status_code=303))
    secure = _secure(request)
    auth.set_session_cookie(response, token, max_age=ui.session_ttl, secure=secure)
    response.delete_cookie(
        LOGIN_COOKIE, path=LOGIN_COOKIE_PATH, secure=secure, httponly=True, samesite="strict"
    )
    return response


def _token_session(token: str) -> session.Session:
    # Lets the login form's token go through the same constant-time comparison as CSRF tokens.
    return session.Session(session_id="", csrf_token=token, issued_at=0, expires_at=0)


@router.post("/logout")
async def logout(request: Request) -> Response:
    ui = _ui(request)
    current = auth.read_session(request, ui.settings)
    if current is not None:
        form = await _form(request) or {}
        if not session.csrf_matches(current, form.get(auth.CSRF_FIELD)):
            return _render(
                request,
                "error.html",
                status=403,
                title="Sign-out refused",
                message="The page was out of date. Go back, reload it and sign out again.",
            )
    response = _headers(RedirectResponse(f"{UI_PREFIX}/login", status_code=303))
    auth.clear_session_cookie(response, secure=_secure(request))
    return response


# --- pages --------------------------------------------------------------------------------------
def _page(request: Request, page: str, **config: Any) -> Response:
    ui = _ui(request)
    current = auth.read_session(request, ui.settings)
    if current is None:
        return _login_redirect(request)
    item = PAGES[page]
    config = {
        "page": page,
        "features": features(request.app),
        "instance": ui.instance,
        **config,
    }
    return _render(
        request,
        f"{page}.html",
        page=page,
        title=item.title,
        csrf_token=current.csrf_token,
        config=config,
    )


@router.get("/dashboard")
async def dashboard_page(request: Request) -> Response:
    return _page(
        request,
        "dashboard",
        sample_interval=_ui(request).timing.sample_interval,
        dependencies=dependency_notices(request.app.state.runtime),
    )


def dependency_notices(runtime: Any) -> list[str]:
    """One line per dependency that is not ok, as /health sees it (the last background check,
    Redis's breaker and recent errors), with the requests admitted without a rate-limit check."""
    lines = []
    for name, state in runtime.dependency_health().items():
        fail_open = state.get("fail_open_admissions_last_minute", 0)
        if state.get("status") == "ok" and not fail_open:
            continue
        parts = [f"{name.capitalize()} {state.get('status', 'degraded')}"]
        error = state.get("last_error") or state.get("error")
        if error:
            parts.append(str(error))
        if state.get("breaker", "closed") != "closed":
            parts.append("circuit breaker open: not called until a probe succeeds")
        if fail_open:
            parts.append(
                f"{fail_open} requests admitted without a rate-limit check (fail-open) "
                "in the last minute"
            )
        lines.append(" · ".join(parts))
    return lines


@router.get("/tenants")
async def tenants_page(request: Request) -> Response:
    return _page(request, "tenants")


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    grace = _ui(request).settings.key_rotation_grace_seconds
    return _page(request, "keys", rotation_grace_seconds=grace)


@router.get("/routes")
async def routes_page(request: Request) -> Response:
    return _page(request, "routes")


@router.get("/logs")
async def logs_page(request: Request) -> Response:
    return _page(request, "logs")


@router.get("/abuse")
async def abuse_page(request: Request) -> Response:
    return _page(request, "abuse")


@router.get("/cache")
async def cache_page(request: Request) -> Response:
    return _page(request, "cache")


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    return _page(request, "audit")


# --- live streams -------------------------------------------------------------------------------
def _stream(body: Any) -> Response:
    response = StreamingResponse(body, media_type="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _stopping(request: Request) -> Callable[[], bool]:
    """True once the server has begun to shut down (`runtime.draining`, when it is told)."""
    runtime: Runtime = request.app.state.runtime
    return lambda: runtime.draining


def _unauthorized() -> Response:
    return _headers(Response("sign in first", status_code=401, media_type="text/plain"))


@router.get("/stream/dashboard")
async def dashboard_stream(request: Request) -> Response:
    ui = _ui(request)
    if auth.read_session(request, ui.settings) is None:
        return _unauthorized()
    return _stream(
        streams.dashboard_events(
            request.app,
            request,
            ui.feed,
            features=features(request.app),
            instance=ui.instance,
            stopping=_stopping(request),
        )
    )


@router.get("/stream/logs")
async def logs_stream(
    request: Request,
    route: str = "",
    key_id: str = "",
    status: str = "",
    cache_status: str = "",
    method: str = "",
    path_prefix: str = "",
    request_id: str = "",
    key: str = "",
) -> Response:
    ui = _ui(request)
    if auth.read_session(request, ui.settings) is None:
        return _unauthorized()
    filters = log_filters(
        route=route,
        key_id=key_id,
        status=status,
        cache_status=cache_status,
        method=method,
        path_prefix=path_prefix,
        request_id=request_id,
        key=key,
    )
    if filters is None:
        return _headers(Response("invalid filter", status_code=400, media_type="text/plain"))
    return _stream(
        streams.log_events(request.app, request, filters, ui.timing, stopping=_stopping(request))
    )


def log_filters(
    *,
    route: str,
    key_id: str,
    status: str,
    cache_status: str,
    method: str,
    path_prefix: str,
    request_id: str = "",
    key: str = "",
) -> streams.LogFilters | None:
    """The tail's filters from query parameters, or None when one is malformed."""
    route, status = route.strip(), status.strip().lower()
    cache, method = cache_status.strip().upper(), method.strip().upper()
    request_id, key_text = request_id.strip(), key.strip()
    if len(route) > 100 or len(path_prefix) > 2000 or _has_control(route + path_prefix):
        return None
    if request_id and not _REQUEST_ID.match(request_id):
        return None
    if len(key_text) > 200 or _has_control(key_text):
        return None
    key_number = _bounded_int(key_id, 1, 2**31 - 1)
    if key_id.strip() and key_number is None:
        return None
    if status and not _STATUS_FILTER.match(status):
        return None
    if (cache and not _CACHE_STATUS.match(cache)) or (method and not _METHOD_FILTER.match(method)):
        return None
    return streams.LogFilters(
        route=route or None,
        key_id=key_number,
        status=status or None,
        cache_status=cache or None,
        method=method or None,
        path_prefix=path_prefix or None,
        request_id=request_id or None,
        key=key_text or None,
    )


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _bounded_int(text: str, low: int, high: int) -> int | None:
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if low <= value <= high else None
