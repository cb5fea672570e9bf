"""Failures answer as problems: database down is 503, surprises are 500 without a traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import heliox.admin.tenants
from heliox.admin.deps import MAX_BODY_BYTES
from heliox.admin.router import admin_router, install_admin_error_handlers
from tests.admin.admin_support import (
    ADMIN_KEY,
    FakeRuntime,
    assert_problem,
    build_app,
    client_for,
    make_settings,
)


async def check_database_down(url: str) -> None:
    engine = create_async_engine(url)
    runtime = FakeRuntime(settings=make_settings(), session_factory=async_sessionmaker(engine))
    try:
        async with client_for(build_app(runtime)) as client:
            for response in (
                await client.get("/admin/tenants"),
                await client.post("/admin/tenants", json={"name": "Acme"}),
                await client.get("/admin/audit"),
            ):
                body = assert_problem(response, 503)
                assert body["detail"] == "database unavailable, retry"
                assert response.headers["retry-after"].isdigit()
        assert runtime.changes == 0
    finally:
        await engine.dispose()


async def test_sqlite_unusable_is_503(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    await check_database_down(f"sqlite+aiosqlite:///{blocker}/heliox.db")


async def test_postgres_unreachable_is_503() -> None:
    # Port 1 refuses at once; no server is needed for this one.
    await check_database_down("postgresql+asyncpg://postgres@127.0.0.1:1/heliox")


async def test_unexpected_errors_are_500_without_details(
    runtime: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    class ExplodingSessions(async_sessionmaker[AsyncSession]):
        def __call__(self, **local_kw: Any) -> AsyncSession:
            raise RuntimeError("secret internal detail")

    runtime.session_factory = ExplodingSessions()
    with caplog.at_level(logging.ERROR, logger="heliox.admin"):
        async with client_for(build_app(runtime)) as client:
            response = await client.get("/admin/tenants")
    body = assert_problem(response, 500)
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    assert body["title"] == "Internal Server Error"
    assert "secret internal detail" in caplog.text  # the operator still sees it


async def test_a_failed_notification_still_reports_the_committed_write(
    runtime: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.fail_config_changed = True
    with caplog.at_level(logging.ERROR, logger="heliox.admin"):
        async with client_for(build_app(runtime)) as client:
            assert (await client.post("/admin/tenants", json={"name": "Acme"})).status_code == 201
            assert (await client.get("/admin/tenants")).json()["total"] == 1
    assert runtime.changes == 1
    assert "reload/publish failed" in caplog.text


async def test_a_duplicate_that_slips_past_the_check_is_409(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_check(*args: object, **kwargs: object) -> None:
        return None

    await client.post("/admin/tenants", json={"name": "Acme"})
    # Two writers racing: both pass the check, the unique index stops the second.
    monkeypatch.setattr(heliox.admin.tenants, "_ensure_name_free", no_check)
    assert_problem(await client.post("/admin/tenants", json={"name": "Acme"}), 409)


async def test_unknown_paths_and_methods_under_admin_are_problems(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    assert_problem(await client.get("/admin/nothing-here"), 404)
    wrong_method = await client.put("/admin/tenants")
    assert_problem(wrong_method, 405)
    assert "GET" in wrong_method.headers["allow"]

    @app.get("/elsewhere")
    async def elsewhere() -> dict[str, str]:
        return {"ok": "yes"}

    # Outside /admin errors are problems too (never stored, like every problem); other
    # answers there keep their own headers.
    async with client_for(app, admin_key=None) as plain:
        missing = await plain.get("/not-admin")
        assert_problem(missing, 404)
        assert "/not-admin" in missing.json()["detail"]
        assert "cache-control" not in (await plain.get("/elsewhere")).headers


async def test_oversized_bodies_are_413(client: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_problem(await client.post("/admin/tenants", content=big), 413)


async def test_no_store_on_every_admin_response(runtime: FakeRuntime) -> None:
    app = FastAPI(docs_url="/admin/docs", openapi_url="/admin/openapi.json")
    install_admin_error_handlers(app)
    app.include_router(admin_router())
    app.state.runtime = runtime
    async with client_for(app) as client:
        responses = [
            await client.post("/admin/tenants", json={"name": "Acme"}),
            await client.get("/admin/tenants"),
            await client.get("/admin/tenants/1"),
            await client.patch("/admin/tenants/1", json={"description": "d"}),
            await client.post("/admin/keys", json={"tenant_id": 1, "name": "k"}),
            await client.post("/admin/keys/1/rotate"),
            await client.delete("/admin/keys/1"),
            await client.delete("/admin/tenants/1"),
            await client.get("/admin/openapi.json"),
            await client.get("/admin/docs"),
        ]
    for response in responses:
        assert response.status_code < 300, response.request.url
        assert response.headers["cache-control"] == "no-store", response.request.url


async def test_the_openapi_document_describes_the_admin_api(app: FastAPI) -> None:
    schema = app.openapi()
    paths = schema["paths"]
    for path in (
        "/admin/tenants",
        "/admin/tenants/{tenant_id}",
        "/admin/keys",
        "/admin/keys/{key_id}",
        "/admin/keys/{key_id}/rotate",
        "/admin/routes",
        "/admin/routes/{route_id}",
        "/admin/policies",
        "/admin/policies/{policy_id}",
        "/admin/audit",
    ):
        assert path in paths, path
    created = paths["/admin/keys"]["post"]["responses"]
    assert "201" in created and "401" in created
    assert "application/problem+json" in created["401"]["content"]
    assert ADMIN_KEY not in str(schema)
