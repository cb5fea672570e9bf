"""/admin/keys: plaintext once, only hashes stored, revoke, rotate with a grace period."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db.engine import make_session_factory
from heliox.db.models import ApiKey, AuditLog
from heliox.db.snapshot_loader import load_snapshot
from heliox.snapshot import hash_key
from tests.admin.admin_support import GRACE_SECONDS, FakeRuntime, assert_problem

KEY_FORMAT = re.compile(r"^hx_live_[2-9A-HJ-NP-Za-km-z]{32}$")


async def make_tenant(client: httpx.AsyncClient, name: str = "Acme") -> int:
    response = await client.post("/admin/tenants", json={"name": name})
    assert response.status_code == 201
    tenant_id: int = response.json()["id"]
    return tenant_id


async def make_key(
    client: httpx.AsyncClient, tenant_id: int, **fields: object
) -> dict[str, object]:
    response = await client.post("/admin/keys", json={"tenant_id": tenant_id, "name": "k"} | fields)
    assert response.status_code == 201, response.text
    key: dict[str, object] = response.json()
    return key


async def stored_hashes(engine: AsyncEngine) -> dict[int, str]:
    async with make_session_factory(engine)() as session:
        return {k.id: k.key_hash for k in await session.scalars(select(ApiKey))}


def when(value: object) -> datetime:
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


async def test_create_returns_the_plaintext_once_and_stores_its_hash(
    client: httpx.AsyncClient, engine: AsyncEngine, runtime: FakeRuntime
) -> None:
    tenant_id = await make_tenant(client)
    created = await make_key(
        client,
        tenant_id,
        name="Production",
        rate_limit_rps=50,
        rate_limit_burst=100,
        rate_limit_algorithm="sliding_window",
        rate_limit_window_seconds=60,
        daily_quota=1000,
        monthly_quota=20000,
    )
    plaintext = created["key"]
    assert isinstance(plaintext, str) and KEY_FORMAT.match(plaintext)
    assert created["key_prefix"] == plaintext[:12]
    assert created["status"] == "active"
    assert (created["rate_limit_rps"], created["rate_limit_burst"]) == (50, 100)
    assert created["rate_limit_algorithm"] == "sliding_window"
    assert (created["daily_quota"], created["monthly_quota"]) == (1000, 20000)
    key_id = created["id"]
    assert isinstance(key_id, int)
    assert (await stored_hashes(engine))[key_id] == hash_key(plaintext)
    assert runtime.changes == 2

    # Never again: not in the detail, the list, nor the audit log (neither is the hash).
    for path in (f"/admin/keys/{created['id']}", "/admin/keys", "/admin/audit"):
        text = (await client.get(path)).text
        assert plaintext not in text and hash_key(plaintext) not in text, path
        assert '"key":' not in text and "key_hash" not in text

    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.keys[hash_key(plaintext)].id == created["id"]


async def test_defaults(client: httpx.AsyncClient) -> None:
    key = await make_key(client, await make_tenant(client))
    assert key["rate_limit_rps"] is None and key["daily_quota"] is None
    assert (key["rate_limit_algorithm"], key["rate_limit_window_seconds"]) == ("token_bucket", 1)


async def test_every_key_is_different(client: httpx.AsyncClient) -> None:
    tenant_id = await make_tenant(client)
    keys = {(await make_key(client, tenant_id))["key"] for _ in range(5)}
    assert len(keys) == 5


async def test_invalid_keys_are_422(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    tenant_id = await make_tenant(client)
    cases: list[tuple[dict[str, object], list[str]]] = [
        ({"tenant_id": 999, "name": "k"}, ["body", "tenant_id"]),
        ({"tenant_id": 2**40, "name": "k"}, ["body", "tenant_id"]),
        ({"tenant_id": tenant_id}, ["body", "name"]),
        ({"tenant_id": tenant_id, "name": "k", "rate_limit_rps": 0}, ["body", "rate_limit_rps"]),
        ({"tenant_id": tenant_id, "name": "k", "rate_limit_rps": -1}, ["body", "rate_limit_rps"]),
        (
            {"tenant_id": tenant_id, "name": "k", "rate_limit_burst": 0},
            ["body", "rate_limit_burst"],
        ),
        (
            {"tenant_id": tenant_id, "name": "k", "rate_limit_burst": 2**31},
            ["body", "rate_limit_burst"],
        ),
        (
            {"tenant_id": tenant_id, "name": "k", "rate_limit_algorithm": "leaky"},
            ["body", "rate_limit_algorithm"],
        ),
        (
            {"tenant_id": tenant_id, "name": "k", "rate_limit_window_seconds": 0},
            ["body", "rate_limit_window_seconds"],
        ),
        ({"tenant_id": tenant_id, "name": "k", "daily_quota": 0}, ["body", "daily_quota"]),
        ({"tenant_id": tenant_id, "name": "k", "key_hash": "x"}, ["body", "key_hash"]),
        (
            {"tenant_id": tenant_id, "name": "k", "abuse_mode": "custom"},
            ["body", "abuse_zscore_threshold"],
        ),
    ]
    for payload, loc in cases:
        body = assert_problem(await client.post("/admin/keys", json=payload), 422)
        assert [e["loc"] for e in body["errors"]] == [loc], payload
    assert runtime.changes == 1


async def test_list_filters_and_hides_revoked(client: httpx.AsyncClient) -> None:
    acme, other = await make_tenant(client, "Acme"), await make_tenant(client, "Other")
    a1, a2, o1 = (
        await make_key(client, acme),
        await make_key(client, acme),
        await make_key(client, other),
    )
    await client.delete(f"/admin/keys/{a2['id']}")
    ids = [k["id"] for k in (await client.get("/admin/keys")).json()["items"]]
    assert ids == [a1["id"], o1["id"]]
    mine = (await client.get("/admin/keys", params={"tenant_id": acme})).json()
    assert [k["id"] for k in mine["items"]] == [a1["id"]] and mine["total"] == 1
    everything = await client.get(
        "/admin/keys", params={"tenant_id": acme, "include_revoked": True}
    )
    assert [(k["id"], k["status"]) for k in everything.json()["items"]] == [
        (a1["id"], "active"),
        (a2["id"], "revoked"),
    ]


async def test_patch_limits_and_state(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    key = await make_key(client, await make_tenant(client), rate_limit_rps=10, daily_quota=5)
    patched = await client.patch(
        f"/admin/keys/{key['id']}",
        json={"rate_limit_rps": 20.5, "daily_quota": None, "name": "renamed", "is_active": False},
    )
    assert patched.status_code == 200
    body = patched.json()
    assert (body["rate_limit_rps"], body["daily_quota"], body["name"]) == (20.5, None, "renamed")
    assert (body["is_active"], body["status"]) == (False, "disabled")
    assert runtime.changes == 3
    bad = await client.patch(f"/admin/keys/{key['id']}", json={"rate_limit_algorithm": None})
    assert_problem(bad, 422)
    assert_problem(await client.patch("/admin/keys/999", json={"name": "x"}), 404)


async def test_revoke(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    key = await make_key(client, await make_tenant(client))
    assert (await client.delete(f"/admin/keys/{key['id']}")).status_code == 204
    got = (await client.get(f"/admin/keys/{key['id']}")).json()
    assert (got["status"], got["is_active"]) == ("revoked", False)
    assert got["revoked_at"] is not None
    assert runtime.changes == 3
    snapshot = await load_snapshot(runtime.session_factory)
    assert hash_key(str(key["key"])) not in snapshot.keys

    # Revoking again is a no-op; a revoked key cannot come back.
    assert (await client.delete(f"/admin/keys/{key['id']}")).status_code == 204
    assert runtime.changes == 3
    assert_problem(await client.patch(f"/admin/keys/{key['id']}", json={"is_active": True}), 409)
    assert_problem(await client.delete("/admin/keys/999"), 404)


async def test_rotate(client: httpx.AsyncClient, runtime: FakeRuntime, engine: AsyncEngine) -> None:
    tenant_id = await make_tenant(client)
    old = await make_key(
        client, tenant_id, name="prod", rate_limit_rps=7, rate_limit_burst=9, monthly_quota=100
    )
    changes = runtime.changes
    rotated = await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_seconds": 120})
    assert rotated.status_code == 201
    new = rotated.json()
    assert runtime.changes == changes + 1
    assert new["id"] != old["id"] and new["key"] != old["key"]
    assert KEY_FORMAT.match(new["key"])
    assert rotated.headers["location"] == f"/admin/keys/{new['id']}"
    assert new["rotated_from_id"] == old["id"]
    copied = ("tenant_id", "name", "rate_limit_rps", "rate_limit_burst", "monthly_quota")
    assert {f: new[f] for f in copied} == {f: old[f] for f in copied}
    assert new["expires_at"] is None

    previous = new["previous_key"]
    assert previous["id"] == old["id"] and previous["status"] == "expiring"
    assert when(previous["expires_at"]) == when(new["created_at"]) + timedelta(seconds=120)
    assert (await client.get(f"/admin/keys/{old['id']}")).json()["expires_at"] == previous[
        "expires_at"
    ]

    hashes = await stored_hashes(engine)
    assert hashes[new["id"]] == hash_key(new["key"])
    # Both work while the grace period runs: the hot path's snapshot holds both hashes.
    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.keys[hash_key(new["key"])].id == new["id"]
    assert snapshot.keys[hash_key(str(old["key"]))].expires_at == when(previous["expires_at"])

    async with make_session_factory(engine)() as session:
        actions = [a.action for a in await session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions[-2:] == ["key.rotate", "key.create"]


async def test_rotate_uses_the_configured_grace_by_default(client: httpx.AsyncClient) -> None:
    old = await make_key(client, await make_tenant(client))
    new = (await client.post(f"/admin/keys/{old['id']}/rotate")).json()
    expires = when(new["previous_key"]["expires_at"])
    assert expires == when(new["created_at"]) + timedelta(seconds=GRACE_SECONDS)


async def test_rotating_twice_never_extends_the_old_key(client: httpx.AsyncClient) -> None:
    old = await make_key(client, await make_tenant(client))
    first = (
        await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_seconds": 60})
    ).json()
    second = await client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_seconds": 3600})
    assert second.status_code == 201
    assert second.json()["previous_key"]["expires_at"] == first["previous_key"]["expires_at"]


async def test_rotate_refusals(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    tenant_id = await make_tenant(client)
    revoked = await make_key(client, tenant_id)
    await client.delete(f"/admin/keys/{revoked['id']}")
    expired = await make_key(client, tenant_id)
    await client.post(f"/admin/keys/{expired['id']}/rotate", json={"grace_seconds": 0})
    changes = runtime.changes
    assert_problem(await client.post(f"/admin/keys/{revoked['id']}/rotate"), 409)
    assert_problem(await client.post(f"/admin/keys/{expired['id']}/rotate"), 409)
    assert_problem(await client.post("/admin/keys/999/rotate"), 404)
    bad = await client.post(f"/admin/keys/{expired['id']}/rotate", json={"grace_seconds": -1})
    assert_problem(bad, 422)
    assert runtime.changes == changes
