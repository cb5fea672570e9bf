"""Shared pieces of the admin API tests: settings, a fake runtime, the app and its client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.admin.router import admin_router, install_admin_error_handlers
from heliox.config import Settings, load_settings

ADMIN_KEY = "test-admin-key-0123456789abcdef"
GRACE_SECONDS = 900


def make_settings() -> Settings:
    return load_settings(
        admin_api_key=ADMIN_KEY,
        secret_key="test-secret-key-0123456789abcdef",
        deployment_mode="demo",
        database_url="",
        redis_url="",
        key_rotation_grace_seconds=GRACE_SECONDS,
    )


@dataclass
class FakeRuntime:
    """What the real runtime offers the admin API; counts config_changed calls."""

    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    changes: int = 0
    fail_config_changed: bool = False
    session_actor: Callable[[Request], Any] | None = None
    admin_guard: Any = None  # no throttle on failed admin keys

    async def config_changed(self) -> None:
        self.changes += 1
        if self.fail_config_changed:
            raise RuntimeError("redis publish failed")


def build_app(runtime: Any) -> FastAPI:
    app = FastAPI()
    install_admin_error_handlers(app)
    app.include_router(admin_router())
    app.state.runtime = runtime
    return app


def client_for(app: FastAPI, *, admin_key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
    headers = {"X-Admin-Key": admin_key} if admin_key is not None else {}
    # raise_app_exceptions=False: a 500 must be the app's own answer, not a test crash.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://admin.test", headers=headers)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body
