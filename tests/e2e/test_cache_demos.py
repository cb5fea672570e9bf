"""The response cache end to end, in both modes: the demo commands (MISS then HIT, stale
answers, remembered 404s), then keys, conditional requests, invalidation and purge, through real
gateway and upstream processes. Every test works on paths of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.harness import ACME, TECHFLOW, Gateway, Upstream, wait_until

PROBLEM = "application/problem+json"


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def get(gw: Gateway, path: str, key: str = ACME, **kw: Any) -> httpx.Response:
    headers = {"X-API-Key": key, **kw.pop("headers", {})}
    return httpx.request(kw.pop("method", "GET"), gw.url + path, headers=headers, timeout=15, **kw)


def calls(upstream: Upstream, path: str) -> int:
    by_path: dict[str, int] = upstream.stats()["by_path"]
    return by_path.get(path, 0)


def poll(
    fetch: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool]
) -> list[httpx.Response]:
    """Answers of `fetch` up to and including the first that satisfies `until` (10 s deadline)."""
    seen: list[httpx.Response] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen.append(fetch())
        if until(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"condition not met; last X-Cache values {_labels(seen[-5:])}")


def _labels(answers: list[httpx.Response]) -> list[str | None]:
    return [a.headers.get("x-cache") for a in answers]


def make_route(gw: Gateway, upstream_url: str, **policy: Any) -> tuple[str, int]:
    """A new route with its own cache policy (created through `gw`); returns (name, id)."""
    name = unique("c")
    with gw.admin() as admin:
        created = admin.post("/admin/policies", json={"name": name, **policy})
        assert created.status_code == 201, created.text
        route = admin.post(
            "/admin/routes",
            json={"name": name, "upstream_url": upstream_url, "cache_policy": name},
        )
        assert route.status_code == 201, route.text
    return name, int(route.json()["id"])


# --- the demo commands ---------------------------------------------------------------------------
def test_cache_miss_then_hit(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/g/demo/slow?delay=0.3&run={unique('hit')}"
    before = calls(upstream, "/slow")
    first = get(gateway, path)
    second = get(gateway, path)
    assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
    assert (second.status_code, second.headers["x-cache"]) == (200, "HIT")
    assert second.content == first.content
    assert second.headers["cache-status"].startswith("heliox; hit; ttl=")
    assert int(second.headers["age"]) >= 0
    assert calls(upstream, "/slow") - before == 1


def test_swr_serves_stale_at_once_then_hits_again(gateway: Gateway, upstream: Upstream) -> None:
    route, _ = make_route(gateway, upstream.url, ttl_seconds=1, stale_while_revalidate_seconds=60)
    token = unique("swr")
    path = f"/g/{route}/respond/{token}?delay=0.3"
    first = get(gateway, path)
    assert first.headers["x-cache"] == "MISS"
    # Fresh for a second; the first answer after that is the stale copy, not a wait upstream.
    answers = poll(lambda: get(gateway, path), lambda r: r.headers["x-cache"] != "HIT")
    stale = answers[-1]
    assert stale.headers["x-cache"] == "STALE"
    assert stale.json()["n"] == first.json()["n"]
    refreshed = poll(lambda: get(gateway, path), lambda r: r.headers["x-cache"] == "HIT")
    assert set(_labels(refreshed[:-1])) <= {"STALE", "UPDATING"}
    assert refreshed[-1].json()["n"] > first.json()["n"]
    assert calls(upstream, f"/respond/{token}") == 2  # one fill, one background refresh


def test_bloom_filter_effect(gateway: Gateway, upstream: Upstream) -> None:
    item = unique("nonexistent-product")
    first = get(gateway, f"/g/demo/items/{item}")
    assert (first.status_code, first.headers["x-cache"]) == (404, "MISS")
    assert calls(upstream, f"/items/{item}") == 1
    second = get(gateway, f"/g/demo/items/{item}")
    assert (second.status_code, second.headers["x-cache"]) == (404, "NEGATIVE")
    assert calls(upstream, f"/items/{item}") == 1  # upstream stats unchanged
    bypass = get(gateway, f"/g/demo/items/{item}", headers={"Cache-Control": "no-cache"})
    assert (bypass.status_code, bypass.headers["x-cache"]) == (404, "MISS")
    assert calls(upstream, f"/items/{item}") == 2


def test_gateway_requests_outnumber_upstream_calls(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/respond/{unique('stats')}"
    for _ in range(5):
        assert get(gateway, "/g/demo" + path).status_code == 200
    assert calls(upstream, path) == 1
    admin = {"X-Admin-Key": gateway.env["ADMIN_API_KEY"]}  # production: metrics need the key

    def metrics() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(
            gateway.url + "/metrics", headers=admin, timeout=5
        ).json()
        return answer

    now = metrics()
    assert now["cache"]["HIT"] >= 4
    assert now["routes"]["demo"]["cache"]["MISS"] >= 1
    # The entry just stored is counted once the gauge's background read has run.
    wait_until(lambda: metrics()["gauges"].get("cache_entries", 0) >= 1, timeout=30)


# --- keys ----------------------------------------------------------------------------------------
def test_query_order_is_one_entry(gateway: Gateway, upstream: Upstream) -> None:
    token = unique("order")
    assert get(gateway, f"/g/demo/respond/{token}?color=red&shape=round").status_code == 200
    again = get(gateway, f"/g/demo/respond/{token}?shape=round&color=red")
    assert again.headers["x-cache"] == "HIT"
    assert calls(upstream, f"/respond/{token}") == 1


def test_tenants_are_isolated_unless_shared(gateway: Gateway, upstream: Upstream) -> None:
    token = unique("tenant")
    assert get(gateway, f"/g/demo/respond/{token}", key=ACME).headers["x-cache"] == "MISS"
    assert get(gateway, f"/g/demo/respond/{token}", key=TECHFLOW).headers["x-cache"] == "MISS"
    assert calls(upstream, f"/respond/{token}") == 2
    shared, _ = make_route(gateway, upstream.url, ttl_seconds=60, shared=True)
    assert get(gateway, f"/g/{shared}/respond/{token}", key=ACME).headers["x-cache"] == "MISS"
    assert get(gateway, f"/g/{shared}/respond/{token}", key=TECHFLOW).headers["x-cache"] == "HIT"
    assert calls(upstream, f"/respond/{token}") == 3


def test_cookies_private_and_no_store_are_never_stored(
    gateway: Gateway, upstream: Upstream
) -> None:
    for query in ("set_cookie=sid%3D1", "cache_control=private", "cache_control=no-store"):
        token = unique("never")
        for _ in range(2):
            answer = get(gateway, f"/g/demo/respond/{token}?{query}")
            assert answer.headers["x-cache"] == "MISS", query
        assert calls(upstream, f"/respond/{token}") == 2, query


# --- conditional requests and invalidation -------------------------------------------------------
def test_conditional_request_is_304_from_cache(gateway: Gateway, upstream: Upstream) -> None:
    token = unique("etag")
    path = f"/g/demo/respond/{token}?etag=%22{token}%22"
    assert get(gateway, path).status_code == 200
    hit = get(gateway, path, headers={"If-None-Match": f'"{token}"'})
    assert (hit.status_code, hit.headers["x-cache"], hit.content) == (304, "HIT", b"")
    assert hit.headers["etag"] == f'"{token}"'
    assert calls(upstream, f"/respond/{token}") == 1


def test_successful_post_invalidates_the_uri(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/g/demo/echo/{unique('post')}"
    get(gateway, path)
    assert get(gateway, path).headers["x-cache"] == "HIT"
    posted = get(gateway, path, method="POST", content=b"{}")
    assert (posted.status_code, posted.headers["x-cache"]) == (200, "BYPASS")
    assert get(gateway, path).headers["x-cache"] == "MISS"


def test_stale_if_error_when_the_upstream_answers_500(gateway: Gateway, upstream: Upstream) -> None:
    # First the route's base is /respond (200s); then it points at the bare upstream, where the
    # same gateway URL reaches /status/500. The key is the gateway's URL: one entry throughout.
    route, route_id = make_route(
        gateway, upstream.url + "/respond", ttl_seconds=1, stale_if_error_seconds=60
    )
    path = f"/g/{route}/status/500"
    first = get(gateway, path)
    assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
    with gateway.admin() as admin:
        patched = admin.patch(f"/admin/routes/{route_id}", json={"upstream_url": upstream.url})
        assert patched.status_code == 200, patched.text
    answers = poll(lambda: get(gateway, path), lambda r: r.headers["x-cache"] != "HIT")
    stale = answers[-1]
    assert (stale.status_code, stale.headers["x-cache"]) == (200, "STALE")
    assert stale.content == first.content
    assert "fwd=stale; fwd-status=500" in stale.headers["cache-status"]
    assert calls(upstream, "/status/500") >= 1


# --- purge ---------------------------------------------------------------------------------------
def purge(gw: Gateway, body: dict[str, Any]) -> httpx.Response:
    with gw.admin() as admin:
        return admin.post("/admin/cache/purge", json=body)


def test_purge_by_url_tag_prefix_route_and_all(gateway: Gateway) -> None:
    token = unique("purge")
    plain = f"/g/demo/respond/{token}/a?x=1"
    other = f"/g/demo/respond/{token}/b"
    tagged = f"/g/demo/respond/{token}/t?surrogate_key=grp-{token}"
    for path in (plain, other, tagged):
        get(gateway, path)
        assert get(gateway, path).headers["x-cache"] == "HIT"
    get(gateway, plain, key=TECHFLOW)

    by_url = purge(gateway, {"url": f"/g/demo/respond/{token}/a?x=1"})
    assert by_url.json() == {"purged": 2}  # both tenants' copies
    assert get(gateway, plain).headers["x-cache"] == "MISS"
    assert get(gateway, other).headers["x-cache"] == "HIT"

    assert purge(gateway, {"tag": f"grp-{token}"}).json() == {"purged": 1}
    assert get(gateway, tagged).headers["x-cache"] == "MISS"

    by_prefix = purge(gateway, {"route": "demo", "prefix": f"/respond/{token}/"})
    assert by_prefix.json()["purged"] >= 3
    assert get(gateway, other).headers["x-cache"] == "MISS"

    assert purge(gateway, {"route": "demo"}).json()["purged"] >= 1
    assert get(gateway, other).headers["x-cache"] == "MISS"

    assert purge(gateway, {"all": True}).json()["purged"] >= 1
    assert get(gateway, other).headers["x-cache"] == "MISS"


def test_purge_validates_and_needs_the_admin_key(gateway: Gateway) -> None:
    for body in ({}, {"prefix": "/x"}, {"all": True, "route": "demo"}, {"url": "/nope"}):
        refused = purge(gateway, body)
        assert refused.status_code == 422, body
        assert refused.headers["content-type"] == PROBLEM
    anonymous = httpx.post(gateway.url + "/admin/cache/purge", json={"all": True}, timeout=5)
    assert anonymous.status_code == 401
