"""The ASGI application: the data plane in front of FastAPI (admin API, UI, health, metrics).

For servers other than `heliox serve`: `granian --interface asgi --factory heliox.main:create_app`
or `uvicorn --factory heliox.main:create_app`; `heliox.main:app` also works (built on first access).
`heliox serve` runs the same stack inside its shutdown deadline (`build_app(..., served=True)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from heliox import __version__, structured_log
from heliox.config import Settings, load_settings
from heliox.gateway.app import Gateway
from heliox.metrics import PROMETHEUS_CONTENT_TYPE
from heliox.runtime import Runtime

if TYPE_CHECKING:
    from heliox.connection_guard import ConnectionGuard
    from heliox.graceful_shutdown import GracefulShutdown

DOCS_URL = "/admin/docs"
OPENAPI_URL = "/admin/openapi.json"
# Swagger UI, vendored (heliox/ui/static/vendor/README.md): the docs page loads nothing from
# another origin, so it works offline and behind an egress-filtered network.
SWAGGER_ASSETS = "/ui/static/vendor/swagger-ui/"


def create_app(settings: Settings | None = None) -> Gateway:
    """The stack without the shutdown deadline, for other ASGI servers (and tests)."""
    return build_app(settings or load_settings())


@overload
def build_app(settings: Settings, *, served: Literal[False] = False) -> Gateway: ...
@overload
def build_app(settings: Settings, *, served: Literal[True]) -> GracefulShutdown: ...
def build_app(settings: Settings, *, served: bool = False) -> Gateway | GracefulShutdown:
    """The whole ASGI stack on one runtime. The layers, from the outside in:

    1. GracefulShutdown (`heliox serve` only, `served=True`): SHUTDOWN_TIMEOUT for in-flight
       requests at shutdown, and the connection guard it feeds (head and idle timeouts,
       CLIENT_MAX_CONNECTIONS) where the platform supports it;
    2. Gateway: the data plane under /g/, and the lifespan (starts and stops the runtime);
    3. FastAPI, for everything else: health, metrics, the admin API (with CORS), the UI.

    Built from the inside out, each layer wrapping the one below it.
    """
    structured_log.quiet_aborted_answers()
    runtime = Runtime(settings)
    api = _api(settings, runtime)
    gateway = Gateway(runtime, api)
    if not served:
        return gateway
    from heliox.graceful_shutdown import GracefulShutdown

    guard = _connection_guard(settings)
    return GracefulShutdown(gateway, settings.shutdown_timeout, guard, runtime=runtime)


def _connection_guard(settings: Settings) -> ConnectionGuard | None:
    from heliox import connection_guard
    from heliox.core.connections import ConnectionPolicy

    if not connection_guard.supported():
        return None
    policy = ConnectionPolicy(
        header_timeout=settings.http_header_read_timeout,
        idle_timeout=settings.client_idle_timeout,
        max_connections=connection_guard.limits_for(settings).cap,
    )
    return connection_guard.ConnectionGuard(policy, connection_guard.ConnectionTracker())


def _api(settings: Settings, runtime: Runtime) -> FastAPI:
    """FastAPI: health, metrics, the admin API's description, CORS, the admin API and the UI."""
    # The admin API's description is open in demo mode only, whose admin key is public anyway;
    # in production it needs the admin key (or the UI's session) like the API it describes.
    docs_open = settings.is_demo
    api = FastAPI(
        title="Heliox",
        version=__version__,
        description="API gateway and caching proxy: admin API, health and metrics.",
        # The docs page is served below (with the vendored Swagger UI), never FastAPI's default,
        # which loads its scripts from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if docs_open else None,
    )
    api.state.runtime = runtime
    metrics_open = bool(settings.metrics_public)

    @api.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        return JSONResponse(await runtime.health(), headers={"cache-control": "no-store"})

    @api.get("/metrics", tags=["ops"])
    async def metrics_json(request: Request) -> Response:
        if not metrics_open and (refused := await _admin_only(request)) is not None:
            return refused
        data: dict[str, Any] = dict(await runtime.render_metrics("json"))
        data["instance"] = runtime.instance_id
        data["log_queue_length"] = runtime.logs.pending
        data["process"] = runtime.process_stats()  # this worker: for soak tests and leak hunts
        return JSONResponse(data, headers={"cache-control": "no-store"})

    @api.get("/metrics/prometheus", tags=["ops"], response_class=PlainTextResponse)
    async def metrics_prometheus(request: Request) -> Response:
        if not metrics_open and (refused := await _admin_only(request)) is not None:
            return refused
        return Response(
            await runtime.render_metrics("prometheus"),
            media_type=PROMETHEUS_CONTENT_TYPE,
            headers={"cache-control": "no-store"},
        )

    if not docs_open:

        @api.get(OPENAPI_URL, include_in_schema=False)
        async def openapi_document(request: Request) -> Response:
            return await _admin_only(request) or JSONResponse(api.openapi())

    @api.get(DOCS_URL, include_in_schema=False)
    async def openapi_docs(request: Request) -> Response:
        if not docs_open and (refused := await _admin_only(request)) is not None:
            return refused
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{SWAGGER_ASSETS}swagger-ui-bundle.js?v={__version__}",
            swagger_css_url=f"{SWAGGER_ASSETS}swagger-ui.css?v={__version__}",
            swagger_favicon_url=f"/ui/static/favicon.svg?v={__version__}",
        )

    if settings.cors_origin_list:
        # Browsers on these origins may call the admin API with the X-Admin-Key header.
        api.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["X-Admin-Key", "Content-Type", "X-CSRF-Token"],
            allow_credentials=False,
            max_age=600,
        )

    from heliox.admin.openapi import install_admin_openapi
    from heliox.admin.router import admin_router, install_admin_error_handlers

    install_admin_error_handlers(api)
    api.include_router(admin_router())
    install_admin_openapi(api)

    from heliox.admin.throttle import AdminAuthGuard
    from heliox.ui.auth import session_actor_hook
    from heliox.ui.views import mount_ui

    # Failed admin authentications per client address (X-Admin-Key and the UI's sign-in form);
    # shared by every instance through Redis when there is one.
    runtime.admin_guard = AdminAuthGuard(
        settings, runtime.metrics, runtime.session_factory, redis=runtime.redis
    )
    # The UI's session cookie (with its CSRF token) authenticates admin API calls too.
    runtime.session_actor = session_actor_hook(settings)
    mount_ui(api)
    return api


async def _admin_only(request: Request) -> Response | None:
    """None for a request with the admin key (or the UI's session), else the 401 to send."""
    from heliox.admin.auth import authenticate
    from heliox.admin.errors import AdminError, problem_for_exception

    try:
        await authenticate(request)
    except AdminError as exc:
        return problem_for_exception(exc)
    return None


def __getattr__(name: str) -> Any:
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
