"""The same admin flows on SQLite and on PostgreSQL (migrated with the real migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.db.snapshot_loader import load_snapshot, read_config_version
from heliox.snapshot import hash_key
from tests.admin.admin_support import (
    FakeRuntime,
    assert_problem,
    build_app,
    client_for,
    make_settings,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FakeRuntime]]:
    await upgrade_database(backend_url)
    engine = make_engine(backend_url, pool_size=2)
    runtime = FakeRuntime(settings=make_settings(), session_factory=make_session_factory(engine))
    try:
        async with client_for(build_app(runtime)) as client:
            yield client, runtime
    finally:
        await engine.dispose()


async def test_full_admin_flow(backend: tuple[httpx.AsyncClient, FakeRuntime]) -> None:
    client, runtime = backend
    tenant = (await client.post("/admin/tenants", json={"name": "Acme Corporation"})).json()
    assert_problem(await client.post("/admin/tenants", json={"name": "Acme Corporation"}), 409)
    assert_problem(await client.get("/admin/tenants/2147483647"), 404)
    assert_problem(await client.get("/admin/tenants/9223372036854775807"), 404)

    key = (
        await client.post(
            "/admin/keys",
            json={"tenant_id": tenant["id"], "name": "prod", "daily_quota": 2**40},
        )
    ).json()
    assert key["daily_quota"] == 2**40
    rotated = (
        await client.post(f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 60})
    ).json()
    expires = datetime.fromisoformat(rotated["previous_key"]["expires_at"])
    assert expires == datetime.fromisoformat(rotated["created_at"]) + timedelta(seconds=60)

    policy = (
        await client.post("/admin/policies", json={"name": "std", "vary_headers": ["Accept"]})
    ).json()
    assert policy["vary_headers"] == ["accept"]
    route = (
        await client.post(
            "/admin/routes",
            json={
                "name": "demo",
                "upstream_url": "http://127.0.0.1:8001",
                "cache_policy": "std",
                "max_request_body_bytes": 2**40,
            },
        )
    ).json()
    assert route["cache_policy_id"] == policy["id"]
    metadata = {"name": "meta", "upstream_url": "http://169.254.169.254/"}
    assert_problem(await client.post("/admin/routes", json=metadata), 422)

    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.keys[hash_key(rotated["key"])].tenant_id == tenant["id"]
    assert hash_key(key["key"]) in snapshot.keys
    assert snapshot.routes["demo"].cache_policy is not None

    await client.delete(f"/admin/keys/{key['id']}")
    await client.delete(f"/admin/policies/{policy['id']}")
    await client.delete(f"/admin/tenants/{tenant['id']}")
    audit = (await client.get("/admin/audit", params={"limit": 3})).json()
    assert [r["action"] for r in audit["items"]] == ["tenant.delete", "policy.delete", "key.revoke"]
    assert audit["next_cursor"] is not None

    writes = 8  # tenant, key, rotate, policy, route, revoke, policy delete, tenant delete
    assert runtime.changes == writes
    assert await read_config_version(runtime.session_factory) == writes
    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.keys == {} and snapshot.routes["demo"].cache_policy is None
