"""/admin/routes: CRUD, names, cache policy by id or name, upstream URL validation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from heliox.db.snapshot_loader import load_snapshot
from tests.admin.admin_support import FakeRuntime, assert_problem

DEMO = {"name": "demo", "upstream_url": "http://127.0.0.1:8001"}


async def make_route(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/admin/routes", json=DEMO | fields)
    assert response.status_code == 201, response.text
    route: dict[str, Any] = response.json()
    return route


async def make_policy(client: httpx.AsyncClient, name: str = "standard") -> dict[str, Any]:
    response = await client.post("/admin/policies", json={"name": name, "ttl_seconds": 30})
    assert response.status_code == 201, response.text
    policy: dict[str, Any] = response.json()
    return policy


async def test_create_with_defaults(client: httpx.AsyncClient, runtime: FakeRuntime) -> None:
    route = await make_route(client, upstream_url="http://127.0.0.1:8001/base/")
    assert route["upstream_url"] == "http://127.0.0.1:8001/base"
    assert route["path_pattern"] == "/*"
    assert route["methods"] == ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    assert (route["fail_mode"], route["is_public"], route["allow_private_upstream"]) == (
        "open",
        False,
        False,
    )
    assert route["cache_policy_id"] is None and route["cache_policy"] is None
    assert runtime.changes == 1
    snapshot = await load_snapshot(runtime.session_factory)
    loaded = snapshot.routes["demo"]
    assert (loaded.upstream_host, loaded.upstream_port, loaded.upstream_base_path) == (
        "127.0.0.1",
        8001,
        "/base",
    )


async def test_full_create_get_patch_delete(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    policy = await make_policy(client)
    route = await make_route(
        client,
        name="api.v2_items-x",
        path_pattern="/items/*",
        methods=["GET", "POST", "GET"],
        cache_policy="standard",
        is_public=True,
        rate_limit_rps=5,
        rate_limit_burst=10,
        rate_limit_algorithm="token_bucket",
        fail_mode="closed",
        max_request_body_bytes=1024,
        timeout_seconds=2.5,
        hide_ratelimit_headers=True,
    )
    assert route["methods"] == ["GET", "POST"]
    assert (route["cache_policy_id"], route["cache_policy"]) == (policy["id"], "standard")
    assert (route["fail_mode"], route["timeout_seconds"]) == ("closed", 2.5)
    assert (await client.get(f"/admin/routes/{route['id']}")).json() == route

    patched = await client.patch(
        f"/admin/routes/{route['id']}",
        json={"cache_policy_id": None, "timeout_seconds": None, "is_active": False},
    )
    assert patched.status_code == 200
    body = patched.json()
    assert (body["cache_policy_id"], body["timeout_seconds"], body["is_active"]) == (
        None,
        None,
        False,
    )
    relinked = await client.patch(f"/admin/routes/{route['id']}", json={"cache_policy": "standard"})
    assert relinked.json()["cache_policy_id"] == policy["id"]
    listed = (await client.get("/admin/routes")).json()
    assert listed["total"] == 1 and listed["items"][0]["cache_policy"] == "standard"
    changes = runtime.changes
    assert (await client.delete(f"/admin/routes/{route['id']}")).status_code == 204
    assert runtime.changes == changes + 1
    assert_problem(await client.get(f"/admin/routes/{route['id']}"), 404)
    assert_problem(await client.delete(f"/admin/routes/{route['id']}"), 404)


async def test_request_body_limits_are_stored_loaded_and_cleared(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    route = await make_route(client, request_body_timeout_seconds=12.5, request_body_min_rate=0)
    assert (route["request_body_timeout_seconds"], route["request_body_min_rate"]) == (12.5, 0)
    loaded = (await load_snapshot(runtime.session_factory)).routes["demo"]
    assert (loaded.request_body_timeout_seconds, loaded.request_body_min_rate) == (12.5, 0)
    patched = await client.patch(
        f"/admin/routes/{route['id']}",
        json={"request_body_timeout_seconds": None, "request_body_min_rate": 2048},
    )
    body = patched.json()
    assert (body["request_body_timeout_seconds"], body["request_body_min_rate"]) == (None, 2048)
    loaded = (await load_snapshot(runtime.session_factory)).routes["demo"]
    assert (loaded.request_body_timeout_seconds, loaded.request_body_min_rate) == (None, 2048)


async def test_duplicate_names_are_409(client: httpx.AsyncClient) -> None:
    await make_route(client)
    other = await make_route(client, name="other")
    assert_problem(await client.post("/admin/routes", json=DEMO), 409)
    assert_problem(await client.patch(f"/admin/routes/{other['id']}", json={"name": "demo"}), 409)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "slash/name"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": ".."}, "name"),
        ({"name": "é"}, "name"),
        ({"path_pattern": "items/*"}, "path_pattern"),
        ({"path_pattern": "/a b"}, "path_pattern"),
        ({"path_pattern": "/a?b=1"}, "path_pattern"),
        ({"methods": []}, "methods"),
        ({"methods": ["get"]}, "methods"),
        ({"methods": ["GET POST"]}, "methods"),
        ({"fail_mode": "sideways"}, "fail_mode"),
        ({"rate_limit_algorithm": "fixed"}, "rate_limit_algorithm"),
        ({"rate_limit_rps": 0}, "rate_limit_rps"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_request_body_bytes": -1}, "max_request_body_bytes"),
        ({"request_body_timeout_seconds": 0}, "request_body_timeout_seconds"),
        ({"request_body_min_rate": -1}, "request_body_min_rate"),
        ({"cache_policy": "missing"}, "cache_policy"),
        ({"cache_policy_id": 12345}, "cache_policy_id"),
        ({"cache_policy_id": 2**40}, "cache_policy_id"),
        ({"upstream": "http://x"}, "upstream"),
    ],
)
async def test_invalid_fields_are_422(
    client: httpx.AsyncClient, runtime: FakeRuntime, fields: dict[str, Any], loc: str
) -> None:
    body = assert_problem(await client.post("/admin/routes", json=DEMO | fields), 422)
    assert [e["loc"][:2] for e in body["errors"]] == [["body", loc]]
    assert runtime.changes == 0


async def test_policy_id_and_name_together_are_refused(client: httpx.AsyncClient) -> None:
    policy = await make_policy(client)
    both = DEMO | {"cache_policy_id": policy["id"], "cache_policy": "standard"}
    assert_problem(await client.post("/admin/routes", json=both), 422)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://169.254.10.10/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://user:secret@example.com/", "credentials"),
        ("http://example.com/?debug=1", "query"),
        ("http://2852039166/", "canonical"),
    ],
)
async def test_dangerous_upstreams_are_422_with_the_reason(
    client: httpx.AsyncClient, url: str, reason: str
) -> None:
    body = assert_problem(
        await client.post("/admin/routes", json=DEMO | {"upstream_url": url}), 422
    )
    [error] = body["errors"]
    assert error["loc"] == ["body", "upstream_url"]
    assert reason in error["msg"]


async def test_link_local_needs_the_explicit_opt_in(client: httpx.AsyncClient) -> None:
    metadata = {"upstream_url": "http://169.254.169.254/"}
    route = await make_route(client, **metadata, allow_private_upstream=True)
    assert route["upstream_url"] == "http://169.254.169.254"
    # Withdrawing the opt-in re-checks the stored upstream.
    withdrawn = await client.patch(
        f"/admin/routes/{route['id']}", json={"allow_private_upstream": False}
    )
    assert_problem(withdrawn, 422)
    # The opt-in never admits a non-HTTP scheme.
    file_url = {"upstream_url": "file:///etc/passwd", "allow_private_upstream": True}
    assert_problem(await client.patch(f"/admin/routes/{route['id']}", json=file_url), 422)


async def test_loopback_and_private_upstreams_are_allowed(client: httpx.AsyncClient) -> None:
    for i, url in enumerate(["http://localhost:9000", "http://10.1.2.3", "https://[::1]:8443"]):
        await make_route(client, name=f"r{i}", upstream_url=url)


async def test_patching_the_upstream_is_validated(
    client: httpx.AsyncClient, runtime: FakeRuntime
) -> None:
    route = await make_route(client)
    changes = runtime.changes
    bad = await client.patch(
        f"/admin/routes/{route['id']}", json={"upstream_url": "http://169.254.169.254/"}
    )
    assert_problem(bad, 422)
    assert runtime.changes == changes
    good = await client.patch(
        f"/admin/routes/{route['id']}", json={"upstream_url": "https://api.example.com/"}
    )
    assert good.json()["upstream_url"] == "https://api.example.com"
    assert_problem(await client.patch(f"/admin/routes/{route['id']}", json={"methods": None}), 422)
