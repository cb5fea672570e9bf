"""/admin/tenants: CRUD, duplicates, unknown ids, validation, one config change per write."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db.engine import make_session_factory
from heliox.db.models import ApiKey
from heliox.db.snapshot_loader import read_config_version
from tests.admin.admin_support import FakeRuntime, assert_problem


async def test_create_get_list_update_delete(
    client: httpx.AsyncClient, runtime: FakeRuntime, engine: AsyncEngine
) -> None:
    created = await client.post("/admin/tenants", json={"name": "Acme", "description": "shop"})
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["name"] == "Acme" and tenant["description"] == "shop" and tenant["is_active"]
    assert created.headers["location"] == f"/admin/tenants/{tenant['id']}"
    assert runtime.changes == 1
    assert await read_config_version(make_session_factory(engine)) == 1

    got = await client.get(f"/admin/tenants/{tenant['id']}")
    assert got.json() == tenant | {"key_count": 0, "active_key_count": 0}

    listed = (await client.get("/admin/tenants")).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == tenant["id"]

    patched = await client.patch(
        f"/admin/tenants/{tenant['id']}", json={"name": "Acme Corp", "is_active": False}
    )
    assert patched.status_code == 200
    assert patched.json()["name"] == "Acme Corp" and patched.json()["is_active"] is False
    assert patched.json()["description"] == "shop"
    assert runtime.changes == 2

    deleted = await client.delete(f"/admin/tenants/{tenant['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert deleted.headers["cache-control"] == "no-store"
    assert runtime.changes == 3
    assert await read_config_version(make_session_factory(engine)) == 3
    assert_problem(await client.get(f"/admin/tenants/{tenant['id']}"), 404)


async def test_reads_change_nothing(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    await client.post("/admin/tenants", json={"name": "Acme"})
    await client.get("/admin/tenants")
    await client.get("/admin/tenants/1")
    assert runtime.changes == 1


async def test_duplicate_names_are_409(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    await client.post("/admin/tenants", json={"name": "Acme"})
    other = (await client.post("/admin/tenants", json={"name": "Other"})).json()
    body = assert_problem(await client.post("/admin/tenants", json={"name": "Acme"}), 409)
    assert "Acme" in str(body["detail"])
    assert_problem(await client.patch(f"/admin/tenants/{other['id']}", json={"name": "Acme"}), 409)
    assert runtime.changes == 2


async def test_renaming_to_its_own_name_is_a_no_op(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    tenant = (await client.post("/admin/tenants", json={"name": "Acme"})).json()
    same = await client.patch(f"/admin/tenants/{tenant['id']}", json={"name": "Acme"})
    assert same.status_code == 200 and same.json()["updated_at"] == tenant["updated_at"]
    empty = await client.patch(f"/admin/tenants/{tenant['id']}", json={})
    assert empty.status_code == 200
    assert runtime.changes == 1
    assert (await client.get("/admin/audit")).json()["items"][0]["action"] == "tenant.create"


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/admin/tenants/999", "/admin/tenants/0", "/admin/tenants/99999999999999"):
        assert_problem(await client.get(path), 404)
        assert_problem(await client.patch(path, json={"name": "x"}), 404)
        assert_problem(await client.delete(path), 404)


async def test_invalid_bodies_are_422_with_field_errors(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    cases = [
        ({}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"name": "   "}, ["body", "name"]),
        ({"name": 5}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"name": "bad\x00name"}, ["body", "name"]),
        ({"name": "Acme", "colour": "red"}, ["body", "colour"]),
        ({"name": "Acme", "is_active": "maybe"}, ["body", "is_active"]),
        ({"name": "Acme", "abuse_mode": "custom"}, ["body", "abuse_zscore_threshold"]),
    ]
    for payload, loc in cases:
        body = assert_problem(await client.post("/admin/tenants", json=payload), 422)
        assert [e["loc"] for e in body["errors"]] == [loc], payload
    tenant = (await client.post("/admin/tenants", json={"name": "Acme"})).json()
    body = assert_problem(
        await client.patch(f"/admin/tenants/{tenant['id']}", json={"name": None}), 422
    )
    assert body["errors"] == [
        {"loc": ["body", "name"], "msg": "may not be null", "type": "value_error"}
    ]
    assert_problem(await client.post("/admin/tenants", content=b"{nope"), 422)
    assert_problem(await client.get("/admin/tenants/abc"), 422)
    assert runtime.changes == 1


async def test_names_are_trimmed(client: httpx.AsyncClient) -> None:
    assert (await client.post("/admin/tenants", json={"name": "  Acme  "})).json()["name"] == "Acme"


async def test_key_counts_and_cascading_delete(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    tenant = (await client.post("/admin/tenants", json={"name": "Acme"})).json()
    keys = [
        (await client.post("/admin/keys", json={"tenant_id": tenant["id"], "name": f"k{i}"})).json()
        for i in range(3)
    ]
    await client.delete(f"/admin/keys/{keys[0]['id']}")
    await client.patch(f"/admin/keys/{keys[1]['id']}", json={"is_active": False})
    got = (await client.get(f"/admin/tenants/{tenant['id']}")).json()
    assert (got["key_count"], got["active_key_count"]) == (2, 1)
    assert (await client.get("/admin/tenants")).json()["items"][0]["key_count"] == 2

    assert (await client.delete(f"/admin/tenants/{tenant['id']}")).status_code == 204
    async with make_session_factory(engine)() as session:
        assert list(await session.scalars(select(ApiKey))) == []
    audit = (await client.get("/admin/audit", params={"action": "tenant.delete"})).json()
    assert audit["items"][0]["before"]["deleted_key_ids"] == [k["id"] for k in keys]


async def test_listing_paginates(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await client.post("/admin/tenants", json={"name": f"t{i}"})
    page = (await client.get("/admin/tenants", params={"limit": 2, "offset": 2})).json()
    assert [t["name"] for t in page["items"]] == ["t2", "t3"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    await client.patch("/admin/tenants/1", json={"is_active": False})
    inactive = (await client.get("/admin/tenants", params={"is_active": "false"})).json()
    assert [t["name"] for t in inactive["items"]] == ["t0"] and inactive["total"] == 1
    assert_problem(await client.get("/admin/tenants", params={"limit": 1001}), 422)
    assert_problem(await client.get("/admin/tenants", params={"offset": -1}), 422)
