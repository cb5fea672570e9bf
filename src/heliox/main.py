"""The ASGI application: the data plane in front of FastAPI (admin API, UI, health, metrics).

For servers other than `heliox serve`: `granian --interface asgi --factory heliox.main:create_app`
or `uvicorn --factory heliox.main:create_app`; `heliox.main:app` also works (built on first access).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from heliox import __version__
from heliox.config import Settings, load_settings
from heliox.gateway.app import Gateway
from heliox.runtime import Runtime


def create_app(settings: Settings | None = None) -> Gateway:
    settings = settings or load_settings()
    runtime = Runtime(settings)
    api = FastAPI(
        title="Heliox",
        version=__version__,
        description="API gateway and caching proxy: admin API, health and metrics.",
        docs_url="/admin/docs",
        redoc_url=None,
        openapi_url="/admin/openapi.json",
    )
    api.state.runtime = runtime

    @api.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        return JSONResponse(await runtime.health(), headers={"cache-control": "no-store"})

    @api.get("/metrics", tags=["ops"])
    async def metrics_json() -> JSONResponse:
        data: dict[str, Any] = runtime.metrics_view().as_json()
        data["instance"] = runtime.instance_id
        data["log_queue_length"] = runtime.logs.pending
        data["process"] = runtime.process_stats()  # this worker: for soak tests and leak hunts
        return JSONResponse(data, headers={"cache-control": "no-store"})

    @api.get("/metrics/prometheus", tags=["ops"])
    async def metrics_prometheus() -> Response:
        return Response(
            runtime.metrics_view().prometheus_text(),
            media_type="text/plain; version=0.0.4; charset=utf-8",
            headers={"cache-control": "no-store"},
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
    _mount_optional(api)
    return Gateway(runtime, api)


def _mount_optional(api: FastAPI) -> None:
    from heliox.admin.router import admin_router, install_admin_error_handlers

    install_admin_error_handlers(api)
    api.include_router(admin_router())

    from heliox.ui.auth import session_actor_hook
    from heliox.ui.views import mount_ui

    # The UI's session cookie (with its CSRF token) authenticates admin API calls too.
    api.state.runtime.session_actor = session_actor_hook(api.state.runtime.settings)
    mount_ui(api)


def __getattr__(name: str) -> Any:
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
