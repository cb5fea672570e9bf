"""Numeric limits of the admin API: every number has documented bounds, values outside them are a
422 that changes nothing, and every value inside them keeps the data plane answering (both modes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.hardening_support import PROBLEM, create_key, create_route, tag
from tests.e2e.harness import Gateway, wait_until

MAX_INT32 = 2**31 - 1


def _problem_fields(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == 422
    return {str(e["loc"][-1]): e["msg"] for e in body["errors"]}


def _tenant(admin: httpx.Client) -> int:
    r = admin.post("/admin/tenants", json={"name": f"t-{tag()}"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


# (field, value, words the message must contain): each is outside the documented range.
KEY_CASES = [
    ("rate_limit_rps", 1e-300, "0.001"),
    ("rate_limit_rps", 5e-324, "0.001"),
    ("rate_limit_rps", 0, "0.001"),
    ("rate_limit_rps", -1, "0.001"),
    ("rate_limit_rps", 2e9, "1000000000"),
    ("rate_limit_burst", 0, "1"),
    ("rate_limit_burst", 2**31, str(MAX_INT32)),
    ("rate_limit_window_seconds", 0, "1"),
    ("rate_limit_window_seconds", 86_401, "86400"),
    ("daily_quota", 0, "1"),
    ("monthly_quota", 2**63, str(2**63 - 1)),
    ("tenant_id", 0, "1"),
    ("tenant_id", 2**31, str(MAX_INT32)),
]


@pytest.mark.parametrize(("field", "value", "bound"), KEY_CASES)
def test_key_numbers_outside_their_bounds_are_422_and_create_nothing(
    gateway: Gateway, field: str, value: float, bound: str
) -> None:
    with gateway.admin() as admin:
        tenant_id = _tenant(admin)
        before = admin.get("/admin/keys", params={"tenant_id": tenant_id}).json()["total"]
        body: dict[str, Any] = {"tenant_id": tenant_id, "name": "k", field: value}
        errors = _problem_fields(admin.post("/admin/keys", json=body))
        assert field in errors, errors
        assert bound in errors[field], errors
        after = admin.get("/admin/keys", params={"tenant_id": tenant_id}).json()["total"]
        assert after == before


def test_a_patch_outside_the_bounds_leaves_the_key_as_it_was(gateway: Gateway) -> None:
    key_id, key = create_key(gateway, rate_limit_rps=50, rate_limit_burst=100)
    with gateway.admin() as admin:
        for value in (1e-300, 0.0009, 1.5e9):
            errors = _problem_fields(
                admin.patch(f"/admin/keys/{key_id}", json={"rate_limit_rps": value})
            )
            assert "rate_limit_rps" in errors
        got = admin.get(f"/admin/keys/{key_id}").json()
    assert (got["rate_limit_rps"], got["rate_limit_burst"]) == (50, 100)
    r = httpx.get(gateway.url + "/g/demo/items", headers={"X-API-Key": key}, timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/routes", {"rate_limit_rps": 1e-300}, "rate_limit_rps"),
        ("/admin/routes", {"timeout_seconds": 1e-300}, "timeout_seconds"),
        ("/admin/routes", {"timeout_seconds": 3601}, "timeout_seconds"),
        ("/admin/routes", {"cache_policy_id": 2**40}, "cache_policy_id"),
        ("/admin/routes", {"max_request_body_bytes": -1}, "max_request_body_bytes"),
        ("/admin/policies", {"ttl_seconds": -1}, "ttl_seconds"),
        ("/admin/policies", {"max_object_bytes": 2**31}, "max_object_bytes"),
    ],
)
def test_route_and_policy_numbers_outside_their_bounds_are_422(
    gateway: Gateway, path: str, body: dict[str, Any], field: str
) -> None:
    name = f"b-{tag()}"
    full = {"name": name, **body}
    if path == "/admin/routes":
        full["upstream_url"] = "http://127.0.0.1:9"
    with gateway.admin() as admin:
        errors = _problem_fields(admin.post(path, json=full))
        assert field in errors, errors
        listed = admin.get(path, params={"limit": 1000}).json()["items"]
    assert name not in {item["name"] for item in listed}


def _schema(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        found: dict[str, Any] = doc
        for part in ref.removeprefix("#/").split("/"):
            found = found[part]
        return found
    return node


def _numeric_leaves(
    doc: dict[str, Any], node: dict[str, Any], where: str, seen: set[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Every number or integer schema under `node`, with a path naming it."""
    if "$ref" in node:
        if node["$ref"] in seen:
            return []
        seen = seen | {node["$ref"]}
    node = _schema(doc, node)
    out: list[tuple[str, dict[str, Any]]] = []
    if node.get("type") in ("number", "integer"):
        out.append((where, node))
    for option in node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", []):
        out += _numeric_leaves(doc, option, where, seen)
    for name, prop in node.get("properties", {}).items():
        out += _numeric_leaves(doc, prop, f"{where}.{name}", seen)
    if "items" in node:
        out += _numeric_leaves(doc, node["items"], f"{where}[]", seen)
    return out


def test_openapi_states_the_bounds_of_every_number_the_admin_api_takes(
    embedded_gateway: Gateway,
) -> None:
    doc = httpx.get(embedded_gateway.url + "/admin/openapi.json", timeout=10).json()
    leaves: list[tuple[str, dict[str, Any]]] = []
    for path, item in doc["paths"].items():
        if not path.startswith("/admin"):
            continue
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            for media in content.values():
                leaves += _numeric_leaves(doc, media["schema"], f"{method} {path} body", set())
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    continue  # ids: a value no row can have is a 404, like any missing row
                where = f"{method} {path} ?{param['name']}"
                leaves += _numeric_leaves(doc, param["schema"], where, set())
    assert len(leaves) > 20  # the walk found the request bodies and query parameters
    unbounded = [
        where
        for where, schema in leaves
        if not (
            ({"minimum", "exclusiveMinimum"} & set(schema))
            and ({"maximum", "exclusiveMaximum"} & set(schema))
        )
    ]
    assert unbounded == []


def _reset_ok(r: httpx.Response, most: float) -> None:
    for name in ("ratelimit-reset", "x-ratelimit-reset", "retry-after"):
        if name in r.headers:
            value = r.headers[name]
            assert value.isdigit() and int(value) <= most, (name, value)


def _redis_keys_without_ttl(gw: Gateway) -> list[str]:
    import redis

    prefix = gw.env["REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(gw.env["REDIS_URL"])
    try:
        bookkeeping = (":i:all", ":sz", ":bytes", ":gen")  # the cache store's own counters
        return [
            key.decode()
            for key in client.scan_iter(match=prefix + "*", count=1000)
            if client.pttl(key) < 0 and not key.decode().endswith(bookkeeping)
        ]
    finally:
        client.close()


def test_the_extremes_the_api_admits_keep_the_data_plane_answering(gateway: Gateway) -> None:
    """The slowest rate with the largest burst, the slowest with the smallest, the fastest route
    override and the longest sliding window: 200s, then a clean 429 with finite reset times; on
    Redis every counter has a TTL."""
    _, slow_big = create_key(gateway, rate_limit_rps=0.001, rate_limit_burst=MAX_INT32)
    _, slow_one = create_key(gateway, rate_limit_rps=0.001, rate_limit_burst=1)
    _, window = create_key(
        gateway,
        rate_limit_rps=0.001,
        rate_limit_algorithm="sliding_window",
        rate_limit_window_seconds=86_400,
        daily_quota=2**63 - 1,
        monthly_quota=2**63 - 1,
    )
    fast = create_route(
        gateway, upstream_url=gateway.env["EXAMPLE_UPSTREAM_URL"], rate_limit_rps=1e9
    )
    with gateway.client() as c:
        r = c.get("/g/demo/items", headers={"X-API-Key": slow_big})
        assert r.status_code == 200, r.text
        _reset_ok(r, 3 * 10**12)
        for key in (slow_one, window):
            first = c.get("/g/demo/items", headers={"X-API-Key": key})
            assert first.status_code == 200, first.text
            for _ in range(100):  # the window allows round(0.001 * 86400) = 86 requests
                refused = c.get("/g/demo/items", headers={"X-API-Key": key})
                if refused.status_code != 200:
                    break
            assert refused.status_code == 429, refused.text
            assert refused.headers["content-type"] == PROBLEM
            _reset_ok(refused, 2 * 86_400)
            reset_at = refused.json()["reset_at"]
            assert dt.datetime.fromisoformat(reset_at.replace("Z", "+00:00")).year < 2100
        for _ in range(3):
            r = c.get(f"/g/{fast}/items", headers={"X-API-Key": slow_big})
            assert r.status_code == 200, r.text
    if "REDIS_URL" in gateway.env:
        assert _redis_keys_without_ttl(gateway) == []


def _force_rate(gw: Gateway, key_id: int, rps: float) -> None:
    """Write a rate straight into the database, as a row from before the bounds would hold."""
    if "DATABASE_URL" not in gw.env:
        db = Path(gw.proc.log_path.parent) / "heliox.db"
        with sqlite3.connect(db) as con:
            con.execute("UPDATE api_keys SET rate_limit_rps = ? WHERE id = ?", (rps, key_id))
        return
    import asyncpg

    async def update() -> None:
        url = gw.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE api_keys SET rate_limit_rps = $1 WHERE id = $2", rps, key_id)
        finally:
            await conn.close()

    asyncio.run(update())


def test_a_stored_rate_below_the_bounds_is_served_as_the_slowest_rate(gateway: Gateway) -> None:
    """A limit already in the database from before the bounds (1e-300 requests/s) is applied as
    the slowest admitted rate: a 429 with finite reset times, never a 500."""
    key_id, key = create_key(gateway, rate_limit_rps=5, rate_limit_burst=1)
    _force_rate(gateway, key_id, 1e-300)
    new_name = f"renamed-{tag()}"
    with gateway.admin() as admin:  # any change reloads the configuration, rate included
        assert admin.patch(f"/admin/keys/{key_id}", json={"name": new_name}).status_code == 200
        assert admin.get(f"/admin/keys/{key_id}").json()["rate_limit_rps"] == 1e-300

    def reloaded() -> bool:
        r = httpx.get(gateway.url + "/g/demo/items", headers={"X-API-Key": key}, timeout=10)
        assert r.status_code in (200, 429), r.text
        return r.status_code == 429 and r.headers.get("ratelimit-reset") not in (None, "1")

    wait_until(reloaded, timeout=15)
    with gateway.client() as c:
        for _ in range(3):
            r = c.get("/g/demo/items", headers={"X-API-Key": key})
            assert r.status_code == 429, r.text
            _reset_ok(r, 1000)
    if "REDIS_URL" in gateway.env:
        assert _redis_keys_without_ttl(gateway) == []
