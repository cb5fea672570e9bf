"""/admin/policies: CRUD, range and token validation, deleting a policy detaches its routes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from heliox.db.snapshot_loader import load_snapshot
from tests.admin.admin_support import FakeRuntime, assert_problem

FULL = {
    "name": "demo-swr",
    "mode": "origin",
    "ttl_seconds": 30,
    "stale_while_revalidate_seconds": 120,
    "stale_if_error_seconds": 300,
    "vary_headers": ["Accept", "accept-encoding", "ACCEPT"],
    "cacheable_methods": ["GET"],
    "cacheable_statuses": [404, 200, 200],
    "max_object_bytes": 65536,
    "shared": True,
    "negative_cache": False,
}


async def test_create_get_patch_delete(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    created = await client.post("/admin/policies", json=FULL)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["vary_headers"] == ["accept", "accept-encoding"]
    assert policy["cacheable_statuses"] == [200, 404]
    assert (policy["mode"], policy["shared"], policy["negative_cache"]) == ("origin", True, False)
    assert policy["route_count"] == 0
    assert (await client.get(f"/admin/policies/{policy['id']}")).json() == policy

    patched = await client.patch(
        f"/admin/policies/{policy['id']}", json={"ttl_seconds": 0, "vary_headers": []}
    )
    assert (patched.json()["ttl_seconds"], patched.json()["vary_headers"]) == (0, [])
    listed = (await client.get("/admin/policies")).json()
    assert listed["total"] == 1 and listed["items"][0]["ttl_seconds"] == 0
    assert (await client.delete(f"/admin/policies/{policy['id']}")).status_code == 204
    assert_problem(await client.get(f"/admin/policies/{policy['id']}"), 404)
    assert runtime.changes == 3


async def test_defaults(client: httpx.AsyncClient) -> None:
    policy = (await client.post("/admin/policies", json={"name": "plain"})).json()
    assert (policy["mode"], policy["ttl_seconds"], policy["stale_while_revalidate_seconds"]) == (
        "policy",
        60,
        0,
    )
    assert policy["cacheable_methods"] == ["GET", "HEAD"]
    assert policy["cacheable_statuses"] == [200, 203, 204, 300, 301, 308, 404, 410]
    assert policy["cache_with_cookies"] is False


async def test_cache_with_cookies_reaches_the_snapshot(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    policy = (
        await client.post("/admin/policies", json={"name": "cookies", "cache_with_cookies": True})
    ).json()
    assert policy["cache_with_cookies"] is True
    route = await client.post(
        "/admin/routes",
        json={"name": "c", "upstream_url": "http://127.0.0.1:9", "cache_policy_id": policy["id"]},
    )
    assert route.status_code == 201, route.text
    loaded = (await load_snapshot(runtime.session_factory)).routes["c"].cache_policy
    assert loaded is not None and loaded.cache_with_cookies is True
    patched = await client.patch(
        f"/admin/policies/{policy['id']}", json={"cache_with_cookies": False}
    )
    assert patched.json()["cache_with_cookies"] is False
    loaded = (await load_snapshot(runtime.session_factory)).routes["c"].cache_policy
    assert loaded is not None and loaded.cache_with_cookies is False
    assert_problem(
        await client.patch(f"/admin/policies/{policy['id']}", json={"cache_with_cookies": None}),
        422,
    )


async def test_duplicates_and_unknown_ids(client: httpx.AsyncClient) -> None:
    await client.post("/admin/policies", json={"name": "a"})
    b = (await client.post("/admin/policies", json={"name": "b"})).json()
    assert_problem(await client.post("/admin/policies", json={"name": "a"}), 409)
    assert_problem(await client.patch(f"/admin/policies/{b['id']}", json={"name": "a"}), 409)
    assert_problem(await client.patch("/admin/policies/999", json={"ttl_seconds": 1}), 404)
    assert_problem(await client.delete("/admin/policies/999"), 404)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 2**31}, "ttl_seconds"),
        ({"stale_while_revalidate_seconds": -5}, "stale_while_revalidate_seconds"),
        ({"stale_if_error_seconds": -5}, "stale_if_error_seconds"),
        ({"max_object_bytes": -1}, "max_object_bytes"),
        ({"cacheable_statuses": [99]}, "cacheable_statuses"),
        ({"cacheable_statuses": [600]}, "cacheable_statuses"),
        ({"cacheable_statuses": ["200x"]}, "cacheable_statuses"),
        ({"cacheable_methods": ["get"]}, "cacheable_methods"),
        ({"cacheable_methods": ["GET\r\n"]}, "cacheable_methods"),
        ({"vary_headers": ["bad header"]}, "vary_headers"),
        ({"vary_headers": ["x:y"]}, "vary_headers"),
        ({"vary_headers": ["*"]}, "vary_headers"),
        ({"mode": "magic"}, "mode"),
        ({"shared": "sometimes"}, "shared"),
        ({"name": "bad name"}, "name"),
    ],
)
async def test_invalid_fields_are_422(
    client: httpx.AsyncClient, runtime: FakeRuntime, fields: dict[str, Any], loc: str
) -> None:
    body = assert_problem(await client.post("/admin/policies", json={"name": "p"} | fields), 422)
    assert [e["loc"][:2] for e in body["errors"]] == [["body", loc]]
    assert runtime.changes == 0


async def test_patch_refuses_null(client: httpx.AsyncClient) -> None:
    policy = (await client.post("/admin/policies", json={"name": "p"})).json()
    for field in ("ttl_seconds", "vary_headers", "mode", "shared"):
        assert_problem(
            await client.patch(f"/admin/policies/{policy['id']}", json={field: None}), 422
        )


async def test_deleting_a_policy_detaches_its_routes(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    policy = (await client.post("/admin/policies", json={"name": "std"})).json()
    route = (
        await client.post(
            "/admin/routes",
            json={"name": "demo", "upstream_url": "http://127.0.0.1:8001", "cache_policy": "std"},
        )
    ).json()
    assert (await client.get(f"/admin/policies/{policy['id']}")).json()["route_count"] == 1
    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.routes["demo"].cache_policy is not None

    assert (await client.delete(f"/admin/policies/{policy['id']}")).status_code == 204
    assert (await client.get(f"/admin/routes/{route['id']}")).json()["cache_policy_id"] is None
    audit = (await client.get("/admin/audit", params={"action": "policy.delete"})).json()
    assert audit["items"][0]["before"]["detached_route_ids"] == [route["id"]]
    snapshot = await load_snapshot(runtime.session_factory)
    assert snapshot.routes["demo"].cache_policy is None
