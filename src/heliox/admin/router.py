"""The admin API assembled: every resource router under /admin, and its app-level hooks."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heliox.admin import abuse, audit, cache, keys, policies, routes, tenants
from heliox.admin.analytics import router as analytics_router
from heliox.admin.auth import require_admin
from heliox.admin.deps import AdminRoute
from heliox.admin.errors import NO_STORE, PROBLEM_CONTENT_TYPE, ProblemDetail, problem_for_exception

ADMIN_PREFIX = "/admin"

_PROBLEM: dict[str, Any] = {"model": ProblemDetail, "content": {PROBLEM_CONTENT_TYPE: {}}}
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_PROBLEM, "description": "missing or wrong X-Admin-Key"},
    422: {**_PROBLEM, "description": "invalid request; field errors in `errors`"},
    429: {
        **_PROBLEM,
        "description": "too many failed admin authentications from this client address; "
        "retry after `Retry-After` seconds",
    },
    500: {**_PROBLEM, "description": "unexpected error (details only in the gateway's log)"},
    503: {**_PROBLEM, "description": "database unavailable, retry"},
}


def admin_router() -> APIRouter:
    """Tenants, keys, routes, cache policies and the audit log, all behind `X-Admin-Key`."""
    router = APIRouter(
        prefix=ADMIN_PREFIX,
        route_class=AdminRoute,
        dependencies=[Depends(require_admin)],
        responses=COMMON_RESPONSES,
    )
    for resource in (tenants, keys, routes, policies, audit, abuse, cache):
        router.include_router(resource.router)
    router.include_router(analytics_router)
    return router


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def install_admin_error_handlers(app: FastAPI) -> None:
    """Problem responses for what happens outside the endpoints (unknown path, wrong method,
    invalid parameters), on every path of the app (/foo, /ui/nope, DELETE /health as much as
    under /admin: every error is application/problem+json), and `Cache-Control: no-store` on
    every /admin response.

    Call before the app starts.
    """
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    app.add_middleware(AdminNoStoreMiddleware)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405) and exc.detail == HTTPStatus(exc.status_code).phrase:
        # Routing's own answer: say what exists instead of repeating the title. The path is the
        # client's own text, so only its start is repeated.
        path = request.url.path
        if len(path) > 200:
            path = path[:200] + "..."
        if exc.status_code == 404:
            detail = (
                f"nothing at {path}: the data plane is under /g/{{route}}/, the admin API under "
                f"{ADMIN_PREFIX}/ (described at {ADMIN_PREFIX}/openapi.json), the UI under /ui/"
            )
        else:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {path}; allowed: {allowed}"
        exc = StarletteHTTPException(exc.status_code, detail, exc.headers)
    return problem_for_exception(exc)


async def _validation_exception(request: Request, exc: Exception) -> Response:
    return problem_for_exception(exc)


class AdminNoStoreMiddleware:
    """Adds `Cache-Control: no-store` to every response under /admin (docs and errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_admin_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Control"] = NO_STORE
            await send(message)

        await self.app(scope, receive, send_no_store)
