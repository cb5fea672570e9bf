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
    "keep_seconds": 3600,
    "lock_timeout_seconds": 0.25,
    "lock_age_seconds": 12.5,
    "max_variants": 3,
}
ENGINE_FIELDS = ("keep_seconds", "lock_timeout_seconds", "lock_age_seconds", "max_variants")


async def test_create_get_patch_delete(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    created = await client.post("/admin/policies", json=FULL)
    assert created.status_code == 201, created.text
    policy = created.json()
    assert policy["vary_headers"] == ["accept", "accept-encoding"]
    assert policy["cacheable_statuses"] == [200, 404]
    assert (policy["mode"], policy["shared"], policy["negative_cache"]) == ("origin", True, False)
    assert policy["route_count"] == 0
    assert {f: policy[f] for f in ENGINE_FIELDS} == {f: FULL[f] for f in ENGINE_FIELDS}
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
    # The lock pair is null: the gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE apply.
    assert {f: policy[f] for f in ENGINE_FIELDS} == {
        "keep_seconds": 600,
        "lock_timeout_seconds": None,
        "lock_age_seconds": None,
        "max_variants": 8,
    }


async def test_cache_engine_fields_reach_the_snapshot(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    policy = (await client.post("/admin/policies", json={"name": "engine"})).json()
    route = await client.post(
        "/admin/routes",
        json={"name": "e", "upstream_url": "http://127.0.0.1:9", "cache_policy_id": policy["id"]},
    )
    assert route.status_code == 201, route.text
    loaded = (await load_snapshot(runtime.session_factory)).routes["e"].cache_policy
    assert loaded is not None
    assert (
        loaded.keep_seconds,
        loaded.lock_timeout_seconds,
        loaded.lock_age_seconds,
        loaded.max_variants,
    ) == (600, None, None, 8)

    # The bounds themselves are accepted.
    edges = {
        "keep_seconds": 604800,
        "lock_timeout_seconds": 0.05,
        "lock_age_seconds": 60,
        "max_variants": 64,
    }
    patched = await client.patch(f"/admin/policies/{policy['id']}", json=edges)
    assert patched.status_code == 200, patched.text
    assert {f: patched.json()[f] for f in ENGINE_FIELDS} == edges
    loaded = (await load_snapshot(runtime.session_factory)).routes["e"].cache_policy
    assert loaded is not None
    assert (
        loaded.keep_seconds,
        loaded.lock_timeout_seconds,
        loaded.lock_age_seconds,
        loaded.max_variants,
    ) == (604800, 0.05, 60.0, 64)
    audit = (await client.get("/admin/audit", params={"action": "policy.update"})).json()
    assert audit["items"][0]["before"]["keep_seconds"] == 600
    assert audit["items"][0]["after"]["keep_seconds"] == 604800

    patched = await client.patch(
        f"/admin/policies/{policy['id']}",
        json={"keep_seconds": 0, "lock_timeout_seconds": 60, "max_variants": 1},
    )
    assert (patched.json()["keep_seconds"], patched.json()["max_variants"]) == (0, 1)
    assert patched.json()["lock_timeout_seconds"] == 60.0
    assert patched.json()["lock_age_seconds"] == 60.0  # left out: unchanged

    changes = runtime.changes
    for field, value in [
        ("keep_seconds", -1),
        ("keep_seconds", 604801),
        ("lock_timeout_seconds", 0),
        ("lock_age_seconds", 60.5),
        ("max_variants", 0),
        ("max_variants", 65),
        ("keep_seconds", None),
        ("max_variants", None),
    ]:
        body = assert_problem(
            await client.patch(f"/admin/policies/{policy['id']}", json={field: value}), 422
        )
        assert [e["loc"][:2] for e in body["errors"]] == [["body", field]], (field, value)
    assert runtime.changes == changes
    after = (await client.get(f"/admin/policies/{policy['id']}")).json()
    assert {f: after[f] for f in ENGINE_FIELDS} == {
        "keep_seconds": 0,
        "lock_timeout_seconds": 60.0,
        "lock_age_seconds": 60.0,
        "max_variants": 1,
    }


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
        ({"keep_seconds": -1}, "keep_seconds"),
        ({"keep_seconds": 604801}, "keep_seconds"),
        ({"keep_seconds": 1.5}, "keep_seconds"),
        ({"lock_timeout_seconds": 0}, "lock_timeout_seconds"),
        ({"lock_timeout_seconds": 0.049}, "lock_timeout_seconds"),
        ({"lock_timeout_seconds": 61}, "lock_timeout_seconds"),
        ({"lock_timeout_seconds": "inf"}, "lock_timeout_seconds"),
        ({"lock_age_seconds": 0}, "lock_age_seconds"),
        ({"lock_age_seconds": 60.01}, "lock_age_seconds"),
        ({"max_variants": 0}, "max_variants"),
        ({"max_variants": 65}, "max_variants"),
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


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("keep_seconds", -1, "greater than or equal to 0"),
        ("keep_seconds", 604801, "less than or equal to 604800"),
        ("lock_timeout_seconds", 0, "greater than or equal to 0.05"),
        ("lock_age_seconds", 61, "less than or equal to 60"),
        ("max_variants", 0, "greater than or equal to 1"),
        ("max_variants", 65, "less than or equal to 64"),
    ],
)
async def test_cache_engine_bounds_are_named_in_the_problem(
    client: httpx.AsyncClient, runtime: FakeRuntime, field: str, value: float, bound: str
) -> None:
    body = assert_problem(
        await client.post("/admin/policies", json={"name": "p", field: value}), 422
    )
    [error] = body["errors"]
    assert error["loc"] == ["body", field]
    assert bound in error["msg"], error
    assert (await client.get("/admin/policies")).json()["total"] == 0
    assert runtime.changes == 0


async def test_patch_refuses_null(client: httpx.AsyncClient) -> None:
    policy = (await client.post("/admin/policies", json={"name": "p"})).json()
    for field in ("ttl_seconds", "vary_headers", "mode", "shared", "keep_seconds", "max_variants"):
        body = assert_problem(
            await client.patch(f"/admin/policies/{policy['id']}", json={field: None}), 422
        )
        assert [e["loc"][:2] for e in body["errors"]] == [["body", field]], field


async def test_lock_pair_null_means_the_gateway_settings_and_patch_resets_to_it(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    """A number overrides CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE for the policy's routes; null
    (also given explicitly on create) leaves them to the gateway, and PATCH null returns to it."""
    explicit = await client.post(
        "/admin/policies",
        json={"name": "explicit", "lock_timeout_seconds": None, "lock_age_seconds": None},
    )
    assert explicit.status_code == 201, explicit.text
    assert (explicit.json()["lock_timeout_seconds"], explicit.json()["lock_age_seconds"]) == (
        None,
        None,
    )
    policy = (
        await client.post(
            "/admin/policies",
            json={"name": "tuned", "lock_timeout_seconds": 1.5, "lock_age_seconds": 30},
        )
    ).json()
    assert (policy["lock_timeout_seconds"], policy["lock_age_seconds"]) == (1.5, 30.0)
    route = await client.post(
        "/admin/routes",
        json={"name": "t", "upstream_url": "http://127.0.0.1:9", "cache_policy_id": policy["id"]},
    )
    assert route.status_code == 201, route.text

    async def loaded() -> tuple[float | None, float | None]:
        config = (await load_snapshot(runtime.session_factory)).routes["t"].cache_policy
        assert config is not None
        return config.lock_timeout_seconds, config.lock_age_seconds

    assert await loaded() == (1.5, 30.0)

    changes = runtime.changes
    reset = await client.patch(
        f"/admin/policies/{policy['id']}", json={"lock_timeout_seconds": None}
    )
    assert reset.status_code == 200, reset.text
    assert (reset.json()["lock_timeout_seconds"], reset.json()["lock_age_seconds"]) == (None, 30.0)
    assert (await client.get(f"/admin/policies/{policy['id']}")).json() == reset.json()
    assert await loaded() == (None, 30.0)
    assert runtime.changes == changes + 1
    audit = (await client.get("/admin/audit", params={"action": "policy.update"})).json()
    assert audit["items"][0]["before"]["lock_timeout_seconds"] == 1.5
    assert audit["items"][0]["after"]["lock_timeout_seconds"] is None

    # Null again changes nothing: no write, no reload.
    again = await client.patch(
        f"/admin/policies/{policy['id']}", json={"lock_timeout_seconds": None}
    )
    assert again.json() == reset.json()
    assert runtime.changes == changes + 1

    reset = await client.patch(f"/admin/policies/{policy['id']}", json={"lock_age_seconds": None})
    assert (reset.json()["lock_timeout_seconds"], reset.json()["lock_age_seconds"]) == (None, None)
    assert await loaded() == (None, None)

    # And a number overrides the gateway's setting once more.
    tuned = await client.patch(
        f"/admin/policies/{policy['id']}",
        json={"lock_timeout_seconds": 0.75, "lock_age_seconds": 0.05},
    )
    assert (tuned.json()["lock_timeout_seconds"], tuned.json()["lock_age_seconds"]) == (
        0.75,
        0.05,
    )
    assert await loaded() == (0.75, 0.05)


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
