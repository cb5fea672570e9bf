"""What reaches the upstream, and what a write evicts, on cached routes, through the running
gateway in both modes (docs/hardening.md, "Cache poisoning and deception").

- A request carrying `Cookie` is neither stored nor answered from the cache, unless its policy
  opts in (`cache_with_cookies`), and then the cookie is not forwarded.
- On a cache fill only the request headers the cache key holds (the policy's vary headers) and
  the documented `CACHE_FILL_FORWARDED` list reach the upstream, besides the gateway's own
  forwarding headers; pass-through routes and answers the cache never stores forward the rest.
- A successful unsafe request evicts the writer's own entries of the URL and shared ones, never
  another tenant's.
- Request headers whose names hold an underscore are dropped, as nginx does by default.

The example upstream's `/echo` reflects the request it received, headers included.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.hardening_support import tag, upstream_hits
from tests.e2e.harness import ACME, ACME_STAGE, TECHFLOW, Gateway, Upstream
from tests.e2e.test_cache_demos import make_route


def _send(
    gw: Gateway, path: str, key: str = ACME, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    return httpx.request(
        kw.pop("method", "GET"),
        gw.url + path,
        headers={"X-API-Key": key, **(headers or {})},
        timeout=15,
        **kw,
    )


def _seen(answer: httpx.Response) -> dict[str, str]:
    """The request headers the upstream's /echo received (lower-case names; repeats joined)."""
    assert answer.status_code == 200, answer.text
    seen: dict[str, list[str]] = {}
    for name, value in answer.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in seen.items()}


# --- Cookie --------------------------------------------------------------------------------------
def test_a_request_with_a_cookie_is_neither_stored_nor_answered_from_the_cache(
    gateway: Gateway, upstream: Upstream
) -> None:
    path = f"/g/demo/echo/{tag()}"
    with_cookie = _send(gateway, path, ACME, {"Cookie": "session=ALICE"})
    assert with_cookie.headers["x-cache"] == "BYPASS"
    assert "detail=cookie" in with_cookie.headers["cache-status"]
    assert _seen(with_cookie)["cookie"] == "session=ALICE"  # the upstream still personalises it

    # Same tenant, another key: nothing of Alice's was stored.
    other = _send(gateway, path, ACME_STAGE)
    assert other.headers["x-cache"] == "MISS"
    assert "ALICE" not in other.text and "cookie" not in _seen(other)
    assert _send(gateway, path, ACME_STAGE).headers["x-cache"] == "HIT"

    # And a stored answer is not handed to a request that carries a cookie.
    again = _send(gateway, path, ACME, {"Cookie": "session=BOB"})
    assert again.headers["x-cache"] == "BYPASS"
    assert _seen(again)["cookie"] == "session=BOB"
    assert upstream_hits(upstream, path.removeprefix("/g/demo")) == 3


def test_a_policy_may_cache_requests_with_cookies_without_forwarding_them(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url, ttl_seconds=60, cache_with_cookies=True)
    with gateway.admin() as admin:
        policy = admin.get("/admin/policies", params={"limit": 500}).json()["items"]
    assert [p["cache_with_cookies"] for p in policy if p["name"] == route] == [True]
    path = f"/g/{route}/echo/{tag()}"
    first = _send(gateway, path, ACME, {"Cookie": "session=ALICE"})
    assert first.headers["x-cache"] == "MISS"
    assert "cookie" not in _seen(first)
    second = _send(gateway, path, ACME_STAGE, {"Cookie": "session=BOB"})
    assert second.headers["x-cache"] == "HIT"
    assert "ALICE" not in second.text and "BOB" not in second.text


def test_a_keyed_cookie_reaches_the_upstream_and_keys_the_entry(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(gateway, upstream.url, ttl_seconds=60, vary_headers=["Cookie"])
    path = f"/g/{route}/echo/{tag()}"
    alice = _send(gateway, path, ACME, {"Cookie": "session=ALICE"})
    assert (alice.headers["x-cache"], _seen(alice)["cookie"]) == ("MISS", "session=ALICE")
    bob = _send(gateway, path, ACME, {"Cookie": "session=BOB"})
    assert (bob.headers["x-cache"], _seen(bob)["cookie"]) == ("MISS", "session=BOB")
    alice_again = _send(gateway, path, ACME_STAGE, {"Cookie": "session=ALICE"})
    assert alice_again.headers["x-cache"] == "HIT"
    assert "BOB" not in alice_again.text


# --- the forward list ----------------------------------------------------------------------------
UNKEYED = {
    "X-Host": "evil.example",
    "Origin": "https://evil.example",
    "Accept": "application/evil",
    "Accept-Language": "xx-EVIL",
    "Accept-Encoding": "evil-encoding",
    "User-Agent": "evil-agent",
    "X-Original-Host": "evil.example",
    "Referer": "https://evil.example/",
}


def test_unkeyed_request_headers_never_shape_a_shared_entry(
    gateway: Gateway, upstream: Upstream
) -> None:
    route, _ = make_route(
        gateway, upstream.url, ttl_seconds=60, shared=True, vary_headers=["X-Variant"]
    )
    path = f"/g/{route}/echo/{tag()}"
    first = _send(gateway, path, ACME, {**UNKEYED, "X-Variant": "blue"})
    assert first.headers["x-cache"] == "MISS"
    seen = _seen(first)
    assert "evil" not in first.text.lower(), seen
    assert seen["x-variant"] == "blue"  # keyed: forwarded
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-real-ip", "via", "x-request-id"):
        assert name in seen, name  # the gateway's own

    # Another tenant with the same key values gets the same entry, and nothing of the first
    # request's unkeyed headers is in it.
    other = _send(gateway, path, TECHFLOW, {"X-Variant": "blue"})
    assert other.headers["x-cache"] == "HIT"
    assert other.content == first.content
    assert _send(gateway, path, TECHFLOW, {"X-Variant": "red"}).headers["x-cache"] == "MISS"

    # Authorization is on the documented list: forwarded, and the answer is stored only when
    # the upstream marks it shareable (RFC 9111 §3.5), which /echo does not.
    private = f"/g/{route}/echo/{tag()}"
    with_auth = _send(gateway, private, ACME, {"Authorization": "Bearer tenant-a"})
    assert _seen(with_auth)["authorization"] == "Bearer tenant-a"
    assert "detail=authorization" in with_auth.headers["cache-status"]
    later = _send(gateway, private, TECHFLOW)
    assert later.headers["x-cache"] == "MISS" and "tenant-a" not in later.text


def test_uncached_answers_still_carry_every_end_to_end_header(gateway: Gateway) -> None:
    """Pass-through routes, and writes on cached routes, are never stored: all is forwarded."""
    headers = {**UNKEYED, "Cookie": "session=ALICE"}
    for method, path in (
        ("GET", f"/g/webhooks/echo/{tag()}"),
        ("POST", f"/g/demo/echo/{tag()}"),
    ):
        body = b"{}" if method == "POST" else None
        seen = _seen(_send(gateway, path, ACME, headers, method=method, content=body))
        for name, value in headers.items():
            assert seen.get(name.lower()) == value, (method, name, seen)


# --- invalidation --------------------------------------------------------------------------------
def test_a_write_evicts_the_writers_own_and_shared_entries_only(
    gateway: Gateway, upstream: Upstream
) -> None:
    path = f"/g/demo/echo/{tag()}"
    for key in (ACME, TECHFLOW):
        assert _send(gateway, path, key).headers["x-cache"] == "MISS"
        assert _send(gateway, path, key).headers["x-cache"] == "HIT"

    posted = _send(gateway, path, TECHFLOW, method="POST", content=b"{}")
    assert (posted.status_code, posted.headers["x-cache"]) == (200, "BYPASS")
    assert _send(gateway, path, ACME).headers["x-cache"] == "HIT"  # another tenant's: kept
    assert _send(gateway, path, TECHFLOW).headers["x-cache"] == "MISS"  # the writer's: gone

    # Another key of the same tenant writes: that tenant's entry goes.
    assert _send(gateway, path, ACME_STAGE, method="PUT", content=b"{}").status_code == 200
    assert _send(gateway, path, ACME).headers["x-cache"] == "MISS"

    # On a shared route every tenant reads the one entry, so any tenant's write evicts it.
    shared, _ = make_route(gateway, upstream.url, ttl_seconds=60, shared=True)
    target = f"/g/{shared}/echo/{tag()}"
    assert _send(gateway, target, ACME).headers["x-cache"] == "MISS"
    assert _send(gateway, target, TECHFLOW).headers["x-cache"] == "HIT"
    assert _send(gateway, target, TECHFLOW, method="DELETE").status_code == 200
    assert _send(gateway, target, ACME).headers["x-cache"] == "MISS"


# --- underscores ---------------------------------------------------------------------------------
UNDERSCORED = {
    "X_Forwarded_For": "6.6.6.6",
    "X_Real_IP": "6.6.6.6",
    "Transfer_Encoding": "chunked",
    "X_API_KEY": ACME,
    "Client_Secret": "underscored-secret",
}


def test_headers_with_underscores_never_reach_the_upstream(gateway: Gateway) -> None:
    for path in (f"/g/webhooks/echo/{tag()}", f"/g/demo/echo/{tag()}"):
        for method in ("GET", "POST"):
            body = b"{}" if method == "POST" else None
            answer = _send(gateway, path, ACME, UNDERSCORED, method=method, content=body)
            seen = _seen(answer)
            assert not [name for name in seen if "_" in name], (method, path, seen)
            assert "6.6.6.6" not in answer.text and "underscored-secret" not in answer.text
            assert ACME not in answer.text


def test_an_underscored_api_key_header_does_not_authenticate(gateway: Gateway) -> None:
    answer = httpx.get(
        gateway.url + f"/g/webhooks/echo/{tag()}", headers={"X_API_KEY": ACME}, timeout=10
    )
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
