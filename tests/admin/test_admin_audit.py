"""The audit trail: one row per change, in the change's own transaction, with filters and paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import heliox.admin.deps
from heliox.config import load_settings
from heliox.db.engine import make_session_factory
from heliox.db.models import AuditLog, Tenant
from heliox.db.snapshot_loader import read_config_version
from tests.admin.admin_support import ADMIN_KEY, FakeRuntime, assert_problem


async def count(engine: AsyncEngine, model: type[AuditLog] | type[Tenant]) -> int:
    async with make_session_factory(engine)() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_each_write_leaves_one_row(client: httpx.AsyncClient) -> None:
    tenant = (await client.post("/admin/tenants", json={"name": "Acme"})).json()
    await client.patch(f"/admin/tenants/{tenant['id']}", json={"description": "shop"})
    key = (await client.post("/admin/keys", json={"tenant_id": tenant["id"], "name": "k"})).json()
    await client.patch(f"/admin/keys/{key['id']}", json={"daily_quota": 10})
    await client.post(f"/admin/keys/{key['id']}/rotate")
    await client.delete(f"/admin/keys/{key['id']}")
    await client.post("/admin/policies", json={"name": "std"})
    await client.patch("/admin/policies/1", json={"ttl_seconds": 5})
    await client.post("/admin/routes", json={"name": "r", "upstream_url": "http://127.0.0.1:1"})
    await client.patch("/admin/routes/1", json={"is_public": True})
    await client.delete("/admin/routes/1")
    await client.delete("/admin/policies/1")
    await client.delete(f"/admin/tenants/{tenant['id']}")

    rows = (await client.get("/admin/audit")).json()["items"]
    assert [r["action"] for r in reversed(rows)] == [
        "tenant.create",
        "tenant.update",
        "key.create",
        "key.update",
        "key.rotate",
        "key.create",
        "key.revoke",
        "policy.create",
        "policy.update",
        "route.create",
        "route.update",
        "route.delete",
        "policy.delete",
        "tenant.delete",
    ]
    update = rows[-2]
    assert update["entity_type"] == "tenant" and update["entity_id"] == str(tenant["id"])
    assert update["before"]["description"] == "" and update["after"]["description"] == "shop"
    assert rows[0]["after"] is None and rows[0]["before"]["name"] == "Acme"
    revoke = next(r for r in rows if r["action"] == "key.revoke")
    assert revoke["before"]["revoked_at"] is None and revoke["after"]["revoked_at"] is not None
    assert "key_hash" not in str(rows) and key["key"] not in str(rows)
    # Every change says where it came from (the test client's address).
    assert {r["client_ip"] for r in rows} == {"127.0.0.1"}


async def test_the_address_of_a_change_follows_trusted_proxies(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    """X-Forwarded-For names the client only when the peer is a trusted proxy, as for the admin
    guard and the gateway: otherwise anyone could write any address into the audit trail."""
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    await client.post("/admin/tenants", json={"name": "direct"}, headers=forwarded)
    runtime.settings = load_settings(
        admin_api_key=ADMIN_KEY,
        secret_key="test-secret-key-0123456789abcdef",
        deployment_mode="demo",
        database_url="",
        redis_url="",
        trusted_proxies="127.0.0.1/32",
    )
    await client.post("/admin/tenants", json={"name": "proxied"}, headers=forwarded)
    rows = (await client.get("/admin/audit", params={"action": "tenant.create"})).json()["items"]
    assert [(r["after"]["name"], r["client_ip"]) for r in rows] == [
        ("proxied", "203.0.113.9"),
        ("direct", "127.0.0.1"),
    ]


async def test_filters(client: httpx.AsyncClient) -> None:
    a = (await client.post("/admin/tenants", json={"name": "A"})).json()
    await client.post("/admin/tenants", json={"name": "B"})
    await client.patch(f"/admin/tenants/{a['id']}", json={"name": "A2"})
    await client.post("/admin/policies", json={"name": "p"})

    async def actions(**params: str) -> list[str]:
        response = await client.get("/admin/audit", params=params)
        assert response.status_code == 200, response.text
        return [r["action"] for r in response.json()["items"]]

    assert await actions(entity_type="tenant", entity_id=str(a["id"])) == [
        "tenant.update",
        "tenant.create",
    ]
    assert await actions(action="policy.create") == ["policy.create"]
    assert await actions(entity_type="policy") == ["policy.create"]
    now = datetime.now(UTC)
    assert len(await actions(since=(now - timedelta(hours=1)).isoformat())) == 4
    assert await actions(since=(now + timedelta(hours=1)).isoformat()) == []
    assert await actions(until=(now - timedelta(hours=1)).isoformat()) == []
    assert await actions(actor="someone-else") == []


async def test_cursor_paging(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await client.post("/admin/tenants", json={"name": f"t{i}"})
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, int] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/admin/audit", params=params)).json()
        seen += [r["id"] for r in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5
    assert_problem(await client.get("/admin/audit", params={"limit": 1001}), 422)
    assert_problem(await client.get("/admin/audit", params={"limit": 0}), 422)
    assert_problem(await client.get("/admin/audit", params={"since": "yesterday"}), 422)


async def test_a_failed_write_leaves_no_row(
    client: httpx.AsyncClient, engine: AsyncEngine, runtime: FakeRuntime
) -> None:
    await client.post("/admin/tenants", json={"name": "Acme"})
    assert_problem(await client.post("/admin/tenants", json={"name": "Acme"}), 409)
    assert await count(engine, AuditLog) == 1
    assert runtime.changes == 1


async def test_change_audit_and_version_commit_together(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    runtime: FakeRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_bump(session: AsyncSession) -> int:
        raise RuntimeError("version table gone")

    monkeypatch.setattr(heliox.admin.deps, "bump_config_version", broken_bump)
    assert_problem(await client.post("/admin/tenants", json={"name": "Acme"}), 500)
    assert await count(engine, Tenant) == 0
    assert await count(engine, AuditLog) == 0
    assert await read_config_version(make_session_factory(engine)) == 0
    assert runtime.changes == 0
