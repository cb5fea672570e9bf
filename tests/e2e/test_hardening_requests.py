"""Hostile requests against the running gateway (docs/hardening.md, "Bad input"): paths,
headers, the API key's secrecy, authentication, rate-limit bypass, cache poisoning and deception,
admin.

The example upstream's `/respond` answers carry a per-call counter `n`, so a response served from
the cache is told apart from a fresh one; `/echo` shows exactly what the upstream received.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.hardening_support import (
    KEY,
    PROBLEM,
    assert_still_serving,
    create_key,
    create_route,
    exchange,
    key_is_live,
    request,
    rss_bytes,
    tag,
    upstream_hits,
    worker_pid,
)
from tests.e2e.harness import (
    ACME,
    TECHFLOW,
    Gateway,
    Upstream,
    gateway_env,
    start_gateway,
    wait_until,
)

ACME_H = {"X-API-Key": ACME}


def _get(
    gw: Gateway,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
) -> httpx.Response:
    # A tuple of pairs, not a list: httpx's list type is invariant in its value type.
    query = params if params is None or isinstance(params, Mapping) else tuple(params)
    return httpx.get(
        gw.url + path,
        headers=headers if headers is not None else ACME_H,
        params=query,
        timeout=10,
    )


def _raw_get(
    gw: Gateway, target: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, object] | bytes]:
    reply = exchange(gw.port, request("GET", target, headers))
    if reply.header("content-type") == "application/json":
        return reply.status, reply.json()
    return reply.status, reply.body


# --- paths ------------------------------------------------------------------------------------


def test_every_spelling_of_a_path_is_one_cache_entry_and_one_upstream_path(
    gateway: Gateway, upstream: Upstream
) -> None:
    """One canonical path, decoded once: the cache key and the forwarded path agree for every
    spelling, so the first fills the entry and the others are HITs on it."""
    t = tag()
    spellings = [
        f"/g/demo/respond/{t}/x",
        f"/g/demo/respond/{t}/./x",
        f"/g/demo//respond///{t}/x",
        f"/g/demo/respond/{t}/y/../x",
        f"/g/demo/respond/{t}/%78",
        f"/g/demo/%72espond/{t}/x",
        f"/g/demo/respond/{t}/y/..;/x",
    ]
    seen = []
    for target in spellings:
        status, body = _raw_get(gateway, target)
        assert status == 200, (target, body)
        assert isinstance(body, dict)
        seen.append(body["n"])
    assert len(set(seen)) == 1, seen
    assert upstream_hits(upstream, f"/respond/{t}/x") == 1


def test_route_name_is_matched_before_any_decoding(embedded_gateway: Gateway) -> None:
    gateway = embedded_gateway
    status, _ = _raw_get(gateway, "/g/%64emo/items")
    assert status == 400


@pytest.fixture(scope="module")
def based_route(embedded_gateway: Gateway, upstream: Upstream) -> str:
    """A route whose upstream URL has a base path: nothing may climb above /echo/base."""
    return create_route(embedded_gateway, upstream_url=upstream.url + "/echo/base")


@pytest.mark.parametrize(
    "tail",
    [
        "../x",
        "%2e%2e/x",
        "..%2fx",
        "%2E%2E%2Fx",
        "a/../../x",
        "..;/x",
        ".%2e/x",
        "a/%2e%2e/%2e%2e/x",
    ],
)
def test_nothing_climbs_above_the_route_base_path(
    embedded_gateway: Gateway, based_route: str, tail: str
) -> None:
    status, body = _raw_get(embedded_gateway, f"/g/{based_route}/{tail}")
    assert status == 400, body
    assert_still_serving(embedded_gateway)


@pytest.mark.parametrize(
    ("tail", "upstream_path"),
    [
        ("%252e%252e%252fx", "/echo/base/%252e%252e%252fx"),
        ("/evil.test/x", "/echo/base/evil.test/x"),
        ("%2F%2Fevil.test/x", "/echo/base/evil.test/x"),
        ("@evil.test/x", "/echo/base/@evil.test/x"),
        ("a\\..\\..\\x", "/echo/base/a%5C..%5C..%5Cx"),
        ("caf\xc3\xa9", "/echo/base/caf%C3%A9"),
        ("a%3Fb%23c", "/echo/base/a%3Fb%23c"),
    ],
    ids=["double-encoded", "double-slash", "encoded-slashes", "userinfo", "backslashes",
         "raw-utf8", "encoded-query-and-fragment"],
)  # fmt: skip
def test_upstream_url_is_built_from_parts(
    embedded_gateway: Gateway, upstream: Upstream, based_route: str, tail: str, upstream_path: str
) -> None:
    """urljoin("http://up/api/", "//evil.com/x") is http://evil.com/x: the gateway never joins
    strings, so the host stays the route's and the path stays under its base."""
    status, body = _raw_get(embedded_gateway, f"/g/{based_route}/{tail}")
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["path"] == upstream_path
    sent = {name.lower(): value for name, value in body["headers"]}  # type: ignore[attr-defined]
    assert sent["host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize("target", ["/g/demo/a%00b", "/g/demo/a%0d%0ab", "/g/demo/a%23b%00"])
def test_control_characters_in_paths_are_400(embedded_gateway: Gateway, target: str) -> None:
    gateway = embedded_gateway
    status, _ = _raw_get(gateway, target)
    assert status == 400


def test_raw_fragment_is_cut_once_before_routing(
    embedded_gateway: Gateway, based_route: str
) -> None:
    """A raw "#" never belongs in a request line. granian cuts the target there (query
    included) before the gateway sees it, so routing, the cache key and the forwarded path all
    use the part before it: what follows can never climb or smuggle a query."""
    status, body = _raw_get(embedded_gateway, f"/g/{based_route}/a#/../../../admin?x=1")
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["path"] == "/echo/base/a"
    assert body["query"] == ""


# --- headers ----------------------------------------------------------------------------------


def test_hop_by_hop_response_headers_are_stripped(embedded_gateway: Gateway) -> None:
    gateway = embedded_gateway
    r = _get(
        gateway,
        f"/g/webhooks/respond/{tag()}",
        params=[
            ("header", "Connection: X-Secret, X-Other"),
            ("header", "X-Secret: 1"),
            ("header", "X-Other: 2"),
            ("header", "Keep-Alive: timeout=5"),
            ("header", "Upgrade: h2c"),
            ("header", "Proxy-Authenticate: Basic"),
            ("header", "Proxy-Connection: keep-alive"),
            ("header", "Trailer: X-T"),
        ],
    )
    assert r.status_code == 200
    for name in ("x-secret", "x-other", "keep-alive", "upgrade", "proxy-authenticate",
                 "proxy-connection", "trailer"):  # fmt: skip
        assert name not in r.headers, name


@pytest.mark.parametrize("route", ["webhooks", "demo"], ids=["pass-through", "cached"])
def test_gateway_owned_response_headers_are_never_taken_from_the_upstream(
    gateway: Gateway, route: str
) -> None:
    """An upstream (or whoever controls it) must not be able to say HIT, hand out rate-limit
    numbers, or set the gateway's internal headers: the gateway's own values are the only ones."""
    r = _get(
        gateway,
        f"/g/{route}/respond/{tag()}",
        params=[
            ("header", "X-Cache: HIT"),
            ("header", "X-RateLimit-Remaining: 999999"),
            ("header", "RateLimit-Limit: 5"),
            ("header", "RateLimit-Remaining: 5"),
            ("header", "X-Heliox-Tenant: 1"),
        ],
    )
    assert r.status_code == 200
    headers = r.headers
    assert headers.get_list("x-cache") in (["BYPASS"], ["MISS"])
    assert "999999" not in headers.get_list("x-ratelimit-remaining")
    assert headers.get_list("ratelimit-limit") == ["1000"]
    assert "x-heliox-tenant" not in headers


def test_connection_cannot_strip_what_the_gateway_adds(embedded_gateway: Gateway) -> None:
    gateway = embedded_gateway
    named = "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP, Via, X-Request-Id"
    r = _get(gateway, f"/g/webhooks/echo/{tag()}", {**ACME_H, "Connection": named})
    assert r.status_code == 200
    sent = {name.lower() for name, _ in r.json()["headers"]}
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-real-ip", "via", "x-request-id"):
        assert name in sent, name


def test_spoofed_forwarding_and_override_headers_never_reach_the_upstream(
    embedded_gateway: Gateway,
) -> None:
    gateway = embedded_gateway
    t = tag()
    r = _get(
        gateway,
        f"/g/webhooks/echo/{t}",
        {
            **ACME_H,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.test",
            "X-Forwarded-Port": "443",
            "Forwarded": "for=6.6.6.6;host=evil.test;proto=https",
            "True-Client-IP": "6.6.6.6",
            "X-Client-IP": "6.6.6.6",
            "CF-Connecting-IP": "6.6.6.6",
            "X-Original-URL": "/admin",
            "X-Rewrite-URL": "/admin",
            "X-HTTP-Method-Override": "DELETE",
            "X-Heliox-Route": "admin",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        },
    )
    assert r.status_code == 200
    seen = r.json()
    assert seen["method"] == "GET"
    assert seen["path"] == f"/echo/{t}"
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert sent["x-forwarded-proto"] == "http"
    assert sent.get("x-forwarded-host") != "evil.test"
    for name in ("forwarded", "true-client-ip", "x-client-ip", "cf-connecting-ip",
                 "x-original-url", "x-rewrite-url", "x-http-method-override", "x-heliox-route",
                 "proxy-authorization"):  # fmt: skip
        assert name not in sent, name
    assert "6.6.6.6" not in r.text


@pytest.fixture(scope="module")
def behind_proxy(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    """A gateway that trusts 127.0.0.1 as a proxy (TRUSTED_PROXIES)."""
    d = workdir / "trusted-proxy"
    d.mkdir()
    env = gateway_env(upstream, extra={"TRUSTED_PROXIES": "127.0.0.1/32"})
    env["ADMIN_API_KEY"] = "admin-secret-key"
    gw = start_gateway(d, env)
    try:
        yield gw
    finally:
        gw.proc.stop()


def test_x_forwarded_for_is_read_only_from_a_trusted_proxy(
    behind_proxy: Gateway, embedded_gateway: Gateway
) -> None:
    chain = {**ACME_H, "X-Forwarded-For": "6.6.6.6, 10.1.2.3"}
    trusted = _get(behind_proxy, f"/g/webhooks/echo/{tag()}", chain).json()
    sent = {name.lower(): value for name, value in trusted["headers"]}
    assert sent["x-real-ip"] == "10.1.2.3"  # the right-most untrusted hop, not the spoofable left
    assert sent["x-forwarded-for"] == "6.6.6.6, 10.1.2.3, 127.0.0.1"
    untrusted = _get(embedded_gateway, f"/g/webhooks/echo/{tag()}", chain).json()
    sent = {name.lower(): value for name, value in untrusted["headers"]}
    assert sent["x-real-ip"] == sent["x-forwarded-for"] == "127.0.0.1"


def test_x_forwarded_for_lines_are_read_together(behind_proxy: Gateway) -> None:
    """A proxy that adds its own X-Forwarded-For line (HAProxy's `option forwardfor`) is read as
    one list: the address it vouches for is on the last line, not the client's first one."""
    lines = [("X-API-Key", ACME), ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "10.1.2.3")]
    r = httpx.get(f"{behind_proxy.url}/g/webhooks/echo/{tag()}", headers=lines, timeout=10)
    assert r.status_code == 200, r.text
    sent = {name.lower(): value for name, value in r.json()["headers"]}
    assert sent["x-real-ip"] == "10.1.2.3"
    assert sent["x-forwarded-for"] == "6.6.6.6, 10.1.2.3, 127.0.0.1"


# --- the API key's secrecy --------------------------------------------------------------------


@contextmanager
def _ui_session(gw: Gateway) -> Iterator[httpx.Client]:
    """A signed-in admin UI session (the login form, its token cookie, then the session)."""
    with httpx.Client(base_url=gw.url, timeout=10, follow_redirects=False) as client:
        yield _signed_in(client, gw)


def _signed_in(client: httpx.Client, gw: Gateway) -> httpx.Client:
    page = client.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    r = client.post(
        "/ui/login", data={"admin_key": gw.env["ADMIN_API_KEY"], "login_token": token.group(1)}
    )
    assert r.status_code == 303, r.text[:300]
    return client


def test_api_key_never_reaches_logs_ui_or_upstream_in_plaintext(gateway: Gateway) -> None:
    t = tag()
    _, key = create_key(gateway)
    unknown = "hx_prod_never_valid_" + t
    r = _get(gateway, f"/g/webhooks/echo/{t}", {"X-API-Key": key, "User-Agent": f"ua-{t}"})
    assert r.status_code == 200
    assert key not in r.text
    assert _get(gateway, f"/g/webhooks/echo/{t}", {"X-API-Key": unknown}).status_code == 401

    def logged() -> bool:
        with gateway.admin() as admin:
            rows = admin.get("/admin/analytics/logs", params={"path_prefix": f"/echo/{t}"})
        return len(rows.json()["items"]) >= 2

    wait_until(logged, timeout=15)
    with gateway.admin() as admin:
        texts = [
            admin.get("/admin/analytics/logs", params={"path_prefix": f"/echo/{t}"}).text,
            admin.get("/admin/keys", params={"limit": 200}).text,
            admin.get("/admin/audit").text,
        ]
    with _ui_session(gateway) as ui:
        for page in ("/ui/dashboard", "/ui/keys", "/ui/logs", "/ui/tenants"):
            got = ui.get(page)
            assert got.status_code == 200, page
            texts.append(got.text)
    texts.append(gateway.proc.output())
    for text in texts:
        assert key not in text
        assert unknown not in text


def test_logged_paths_and_agents_are_never_markup(embedded_gateway: Gateway) -> None:
    """XSS through the logs: a hostile path and User-Agent are stored, then shown by the UI as
    text. Pages never carry them raw, the log API is JSON, and the UI scripts never build HTML
    from data."""
    gateway = embedded_gateway
    t = tag()
    payload = "</script><script>alert(1)</script>"
    r = _get(
        gateway,
        f"/g/webhooks/{t}/" + quote(payload, safe=""),
        {**ACME_H, "User-Agent": payload + t},
    )
    assert r.status_code in (200, 404)
    assert "<script>" not in r.text

    def logged() -> bool:
        with gateway.admin() as admin:
            rows = admin.get("/admin/analytics/logs", params={"path_prefix": f"/{t}/"})
        return bool(rows.json()["items"])

    wait_until(logged, timeout=15)
    with gateway.admin() as admin:
        logs = admin.get("/admin/analytics/logs", params={"path_prefix": f"/{t}/"})
    assert logs.headers["content-type"].startswith("application/json")
    assert logs.json()["items"][0]["user_agent"] == payload + t
    with _ui_session(gateway) as ui:
        for page in ("/ui/logs", "/ui/dashboard"):
            html = ui.get(page).text
            assert "<script>alert(1)" not in html
        for script in ("/ui/static/js/logs.js", "/ui/static/js/common.js",
                       "/ui/static/js/dashboard.js"):  # fmt: skip
            source = ui.get(script)
            assert source.status_code == 200, script
            assert "innerHTML" not in source.text and "insertAdjacentHTML" not in source.text


# --- authentication ---------------------------------------------------------------------------


def _status_and_body(gw: Gateway, key_lines: list[bytes]) -> tuple[int, bytes]:
    reply = exchange(
        gw.port,
        request("GET", "/g/demo/items", [(b"X-API-Key", v) for v in key_lines], key=None),
    )
    return reply.status, reply.body


def test_every_bad_key_gets_the_same_401(gateway: Gateway) -> None:
    revoked_id, revoked = create_key(gateway)
    expiring_id, expiring = create_key(gateway)
    with gateway.admin() as admin:
        assert admin.delete(f"/admin/keys/{revoked_id}").status_code == 204
        rotated = admin.post(f"/admin/keys/{expiring_id}/rotate", json={"grace_seconds": 0})
        assert rotated.status_code == 201, rotated.text
    wait_until(lambda: not key_is_live(gateway, revoked), timeout=10)
    wait_until(lambda: not key_is_live(gateway, expiring), timeout=10)
    cases = {
        "missing": [],
        "empty": [b""],
        "unknown": [b"hx_prod_unknown_000000000000000000"],
        "revoked": [revoked.encode()],
        "expired": [expiring.encode()],
        "duplicated": [KEY, KEY],
        "one-good-one-bad": [KEY, b"nope"],
        "inner-space": [KEY[:8] + b" " + KEY[8:]],
        "inner-tab": [KEY[:8] + b"\t" + KEY[8:]],
        "case-changed": [KEY.upper()],
        "non-ascii": ["clé-ünïcode-🔑".encode()],
        "latin-1": [KEY + b"\xe9"],
        "oversize-300": [b"k" * 300],
        "oversize-60k": [b"k" * 60_000],
    }
    bodies = {}
    for why, lines in cases.items():
        status, body = _status_and_body(gateway, lines)
        assert status == 401, why
        bodies[why] = body
    assert len(set(bodies.values())) == 1, bodies
    assert _status_and_body(gateway, [KEY])[0] == 200


def test_one_megabyte_key_is_431(embedded_gateway: Gateway) -> None:
    gateway = embedded_gateway
    status, _ = _status_and_body(gateway, [b"k" * (1 << 20)])
    assert status == 431
    assert_still_serving(gateway)


# --- rate-limit bypass ------------------------------------------------------------------------

BURST = 6


def test_request_variants_never_get_a_fresh_counter(gateway: Gateway) -> None:
    """Varying X-Forwarded-For, path spelling, trailing slashes, query junk, method or route
    must all draw on the key's one bucket (refill here: one token per 1000 s)."""
    _, key = create_key(gateway, rate_limit_rps=0.001, rate_limit_burst=BURST)
    h = {"X-API-Key": key}
    variants: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/g/webhooks/items", {"X-Forwarded-For": "1.1.1.1"}),
        ("GET", "/g/webhooks/items/", {"X-Forwarded-For": "2.2.2.2"}),
        ("GET", "/g/webhooks//items", {"X-Real-IP": "3.3.3.3"}),
        ("GET", "/g/webhooks/%69tems", {}),
        ("GET", "/g/webhooks/items?junk=" + tag(), {}),
        ("HEAD", "/g/webhooks/items", {}),
        ("OPTIONS", "/g/webhooks/items", {}),
        ("GET", "/g/demo/items", {}),
        ("GET", "/g/products/items", {"Forwarded": "for=4.4.4.4"}),
    ]
    codes = []
    for method, target, extra in variants * 2:
        reply = exchange(
            gateway.port,
            request(method, target, [(k.encode(), v.encode()) for k, v in extra.items()],
                    key=key.encode()),
        )  # fmt: skip
        codes.append(reply.status)
    # Admitted requests are answered by the upstream (the trailing-slash one with its 404).
    assert [c != 429 for c in codes] == [True] * BURST + [False] * (len(codes) - BURST), codes
    upper = httpx.get(gateway.url + "/g/webhooks/items", headers={"X-API-Key": key.upper()})
    assert upper.status_code == 401  # another spelling of a key is no key at all
    assert httpx.get(gateway.url + "/g/webhooks/items", headers=h).status_code == 429


def test_parallel_requests_never_exceed_the_burst(gateway: Gateway) -> None:
    _, key = create_key(gateway, rate_limit_rps=0.001, rate_limit_burst=BURST)

    async def fire() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            rs = await asyncio.gather(
                *(client.get(f"/g/webhooks/items?i={i}", headers={"X-API-Key": key})
                  for i in range(60))
            )  # fmt: skip
        return [r.status_code for r in rs]

    codes = asyncio.run(fire())
    assert Counter(codes) == {200: BURST, 429: 60 - BURST}


def test_public_route_limit_ignores_spoofed_client_addresses(
    gateway: Gateway, upstream: Upstream
) -> None:
    name = create_route(
        gateway, upstream_url=upstream.url, is_public=True, rate_limit_rps=0.001,
        rate_limit_burst=3,
    )  # fmt: skip
    codes = [
        _get(gateway, f"/g/{name}/items", {"X-Forwarded-For": f"10.0.0.{i}",
                                            "X-Real-IP": f"10.0.1.{i}"}).status_code
        for i in range(8)
    ]  # fmt: skip
    assert codes == [200] * 3 + [429] * 5, codes


# --- cache poisoning and deception --------------------------------------------------------------


def test_tenants_never_see_each_others_entries(gateway: Gateway, upstream: Upstream) -> None:
    t = tag()
    a1 = _get(gateway, f"/g/demo/respond/{t}", ACME_H)
    b1 = _get(gateway, f"/g/demo/respond/{t}", {"X-API-Key": TECHFLOW})
    a2 = _get(gateway, f"/g/demo/respond/{t}", ACME_H)
    b2 = _get(gateway, f"/g/demo/respond/{t}", {"X-API-Key": TECHFLOW})
    assert a1.json()["n"] != b1.json()["n"]
    assert a2.json()["n"] == a1.json()["n"] and b2.json()["n"] == b1.json()["n"]
    assert (a2.headers["x-cache"], b2.headers["x-cache"]) == ("HIT", "HIT")
    assert upstream_hits(upstream, f"/respond/{t}") == 2


@pytest.fixture(scope="module")
def shared_route(embedded_gateway: Gateway, upstream: Upstream) -> str:
    """A route on a cache policy shared across tenants (public data)."""
    with embedded_gateway.admin() as admin:
        r = admin.post(
            "/admin/policies", json={"name": f"shared-{tag()}", "ttl_seconds": 60, "shared": True}
        )
        assert r.status_code == 201, r.text
    return create_route(embedded_gateway, upstream_url=upstream.url, cache_policy_id=r.json()["id"])


def test_unkeyed_host_cannot_poison_a_shared_entry(
    embedded_gateway: Gateway, shared_route: str
) -> None:
    """Host is not part of the cache key, so it must not reach the upstream either (it goes as
    X-Forwarded-Host today): otherwise one tenant's Host lands in the entry every tenant gets."""
    t = tag()
    target = f"/g/{shared_route}/echo/{t}"
    first = exchange(embedded_gateway.port, request("GET", target, host=b"evil.example"))
    assert first.status == 200
    second = _get(embedded_gateway, target, {"X-API-Key": TECHFLOW})
    assert second.status_code == 200
    assert "evil.example" not in first.body.decode()
    assert "evil.example" not in second.text


def test_method_and_path_overrides_cannot_change_a_cached_answer(
    gateway: Gateway, upstream: Upstream
) -> None:
    t = tag()
    poisoned = _get(
        gateway,
        f"/g/demo/respond/{t}",
        {**ACME_H, "X-HTTP-Method-Override": "POST", "X-Original-URL": "/status/500",
         "X-Forwarded-Prefix": "/evil"},
    )  # fmt: skip
    assert poisoned.status_code == 200
    assert poisoned.json()["method"] == "GET"
    assert poisoned.json()["path"] == f"/respond/{t}"


@pytest.mark.parametrize(
    "params",
    [
        {"cache_control": "private, max-age=60"},
        {"cache_control": "no-store"},
        {"cache_control": "public, max-age=60", "set_cookie": "session=abc"},
        {"cache_control": "public, max-age=60", "vary": "*"},
    ],
    ids=["private", "no-store", "set-cookie", "vary-star"],
)
def test_static_looking_urls_are_not_stored_when_the_upstream_says_no(
    gateway: Gateway, upstream: Upstream, params: dict[str, str]
) -> None:
    """Web cache deception: /account.css is stored only if the upstream's headers allow it."""
    t = tag()
    for ext in ("css", "js", "png", "jpg"):
        path = f"/g/demo/respond/{t}/account.{ext}"
        first = _get(gateway, path, params=params)
        second = _get(gateway, path, params=params)
        assert first.json()["n"] != second.json()["n"], ext
        assert second.headers.get("x-cache") != "HIT"
    assert "session=abc" not in str(
        _get(gateway, f"/g/demo/respond/{t}/again.css", params=params).json()
    )


def test_uncached_route_never_stores_static_looking_urls(
    gateway: Gateway, upstream: Upstream
) -> None:
    t = tag()
    params = {"cache_control": "public, max-age=600"}
    ns = [_get(gateway, f"/g/webhooks/respond/{t}/logo.png", params=params).json()["n"]
          for _ in range(2)]  # fmt: skip
    assert ns[0] != ns[1]


@pytest.mark.parametrize("status", [400, 401, 403, 413, 414, 429, 431, 500, 502, 503, 504])
def test_error_answers_are_never_stored(gateway: Gateway, status: int) -> None:
    """Client-triggered errors (CPDoS) and server errors: even with a public max-age, the next
    request goes to the upstream again."""
    path = f"/g/demo/respond/{tag()}"
    params = {"status": str(status), "cache_control": "public, max-age=600"}
    first = _get(gateway, path, params=params)
    second = _get(gateway, path, params=params)
    assert first.status_code == second.status_code == status
    assert first.json()["n"] != second.json()["n"]


def test_oversize_header_error_is_not_stored_for_others(
    gateway: Gateway, upstream: Upstream
) -> None:
    """HHO (CPDoS): a header the upstream would refuse (its limit is 8 KB) must not make its
    error everyone's answer for that URL. Not being in the cache key, it never reaches the
    upstream on a fill (errors are never stored either: test_error_answers_are_never_stored)."""
    t = tag()
    path = f"/g/demo/echo/{t}"
    attack = _get(gateway, path, {**ACME_H, "X-Oversize": "a" * 20_000})
    assert attack.status_code == 200
    assert "x-oversize" not in attack.text.lower()
    normal = _get(gateway, path)
    assert (normal.status_code, normal.headers["x-cache"]) == (200, "HIT")
    assert normal.json()["path"] == f"/echo/{t}"


def test_meta_character_header_error_is_not_stored_for_others(gateway: Gateway) -> None:
    """HMC (CPDoS): a header granian refuses never reaches the cache."""
    t = tag()
    reply = exchange(gateway.port, request("GET", f"/g/demo/respond/{t}", [(b"X-Meta", b"a\x01b")]))
    assert reply.status == 400
    assert _get(gateway, f"/g/demo/respond/{t}").status_code == 200


def test_head_never_poisons_the_full_entry(gateway: Gateway) -> None:
    path = f"/g/demo/respond/{tag()}"
    head = httpx.head(gateway.url + path, headers=ACME_H, timeout=10)
    assert head.status_code == 200 and head.content == b""
    get = _get(gateway, path)
    assert get.status_code == 200
    assert get.json()["path"].startswith("/respond/")
    assert int(get.headers["content-length"]) == len(get.content) > 0


def test_range_never_poisons_the_full_entry(gateway: Gateway) -> None:
    path = f"/g/demo/respond/{tag()}"
    ranged = _get(gateway, path, {**ACME_H, "Range": "bytes=0-3"})
    assert ranged.headers.get("x-cache") != "HIT"
    full = _get(gateway, path)
    assert full.status_code == 200
    assert full.json()["n"] != ranged.json()["n"]  # the ranged answer was not stored
    again = _get(gateway, path)
    assert again.headers["x-cache"] == "HIT" and again.json()["n"] == full.json()["n"]
    ranged_after = _get(gateway, path, {**ACME_H, "Range": "bytes=0-3"})
    assert ranged_after.status_code in (200, 206)
    assert _get(gateway, path).json()["n"] == full.json()["n"]  # the entry is still whole


def test_upstream_206_is_never_stored(gateway: Gateway) -> None:
    path = f"/g/demo/respond/{tag()}"
    params = {"status": "206", "cache_control": "public, max-age=600",
              "header": "Content-Range: bytes 0-3/10"}  # fmt: skip
    ns = [_get(gateway, path, params=params).json()["n"] for _ in range(2)]
    assert ns[0] != ns[1]


def test_conditional_request_never_poisons_the_full_entry(gateway: Gateway) -> None:
    path = f"/g/demo/respond/{tag()}"
    params = {"etag": '"v1"'}
    cond = _get(gateway, path, {**ACME_H, "If-None-Match": '"v1"'}, params=params)
    assert cond.status_code in (200, 304)
    full = _get(gateway, path, params=params)
    assert full.status_code == 200
    assert full.json()["path"].startswith("/respond/")


# --- admin --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "source"),
    [(None, "127.0.0.11"), ("", "127.0.0.12"), ("wrong", "127.0.0.13"),
     ("test-admin-key-0123456789abcdeX", "127.0.0.14"), ("clé".encode(), "127.0.0.15"),
     (b"k" * 10_000, "127.0.0.16")],
    ids=["missing", "empty", "short", "one-char-off", "non-ascii", "long"],
)  # fmt: skip
def test_admin_without_the_right_key_is_401(
    embedded_gateway: Gateway, key: str | bytes | None, source: str
) -> None:
    """Each case from a client address of its own: four failures stay under the lock-out that
    guessing from one address earns (tests/e2e/test_auth_throttle.py)."""
    gateway = embedded_gateway
    headers = (
        [] if key is None else [(b"X-Admin-Key", key if isinstance(key, bytes) else key.encode())]
    )
    calls = [("GET", "/admin/keys"), ("POST", "/admin/tenants"), ("DELETE", "/admin/keys/1"),
             ("GET", "/admin/analytics/logs")]  # fmt: skip
    for method, target in calls:
        body = b'{"name":"x"}' if method == "POST" else b""
        extra = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        data = request(method, target, headers + extra, body, key=None)
        reply = exchange(gateway.port, data, source=source)
        assert reply.status == 401, (method, target, reply.status)
        assert reply.header("content-type") == PROBLEM
        assert reply.header("cache-control") == "no-store"


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/admin/tenants", b"{not json"),
        ("POST", "/admin/tenants", b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("POST", "/admin/tenants", b'{"name": "\xff\xfe"}'),
        ("POST", "/admin/keys", b'{"tenant_id": 99999999999999999999999, "name": "x"}'),
        ("GET", "/admin/keys/abc", b""),
        ("GET", "/admin/keys/99999999999999999999999", b""),
        ("GET", "/admin/keys/-1", b""),
        ("PATCH", "/admin/routes/1", b'{"upstream_url": 5}'),
        ("GET", "/admin/analytics/logs?since=not-a-date", b""),
        ("POST", "/admin/routes", b'{"name": "x", "upstream_url": "http://a\\u0000b"}'),
    ],
    ids=["bad-json", "deep-json", "bad-utf8", "huge-int", "id-not-int", "id-huge", "id-negative",
         "wrong-type", "bad-date", "nul-in-url"],
)  # fmt: skip
def test_admin_errors_are_problems_never_tracebacks(
    gateway: Gateway, method: str, target: str, body: bytes
) -> None:
    headers = [
        (b"X-Admin-Key", gateway.env["ADMIN_API_KEY"].encode()),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    reply = exchange(gateway.port, request(method, target, headers, body, key=None))
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    assert reply.header("cache-control") == "no-store"
    text = reply.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text and "sqlalchemy" not in text.lower()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:70/",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://[fe80::1]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://2852039166/",
        "http://0xA9FEA9FE/",
        "http://0251.0376.0251.0376/",
        "http://user:pass@127.0.0.1/",
        "http://127.0.0.1#@evil.test/",
        "http://127.0.0.1\\@evil.test/",
        "http://evil.test\t/",
    ],
)
def test_unsafe_route_upstreams_are_refused(embedded_gateway: Gateway, url: str) -> None:
    gateway = embedded_gateway
    with gateway.admin() as admin:
        r = admin.post("/admin/routes", json={"name": f"bad-{tag()}", "upstream_url": url})
    assert r.status_code == 422, (url, r.text)
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["cache-control"] == "no-store"


def test_link_local_upstream_needs_the_explicit_opt_in(embedded_gateway: Gateway) -> None:
    gateway = embedded_gateway
    with gateway.admin() as admin:
        r = admin.post(
            "/admin/routes",
            json={"name": f"imds-{tag()}", "upstream_url": "http://169.254.169.254",
                  "allow_private_upstream": True, "is_active": False},
        )  # fmt: skip
    assert r.status_code == 201, r.text


def test_route_pointing_back_at_the_gateway_is_detected(
    embedded_gateway: Gateway, upstream: Upstream
) -> None:
    """A route whose upstream is the gateway itself: the second pass sees the gateway's own Via
    and stops (508 Loop Detected) instead of recursing until some limit breaks."""
    t = tag()
    name = f"loop-{t}"
    create_route(
        embedded_gateway, name=name, upstream_url=f"{embedded_gateway.url}/g/{name}",
        is_public=True, timeout_seconds=2,
    )  # fmt: skip
    r = _get(embedded_gateway, f"/g/{name}/x", {})
    assert r.status_code == 508, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == PROBLEM
    assert_still_serving(embedded_gateway)


# --- amplification ------------------------------------------------------------------------------


def test_small_hostile_requests_cost_no_memory(gateway: Gateway) -> None:
    """Headers built to make a proxy work or allocate per token: a long Connection list, a deep
    X-Forwarded-For chain, thousands of Cache-Control directives and Range parts. Served
    normally, and the gateway's memory does not grow with them."""
    hostile = [
        (b"Connection", b", ".join(b"x-%d" % i for i in range(3000))),
        (b"X-Forwarded-For", b", ".join(b"10.0.%d.%d" % (i // 250, i % 250) for i in range(2500))),
        # Forwarded ones stay under the upstream's 8 KB line limit.
        (b"Cache-Control", b", ".join(b"max-age=%d" % i for i in range(600))),
        (b"Range", b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(600))),
    ]
    pid = worker_pid(gateway)
    for _ in range(20):  # warm up allocator pools first
        exchange(gateway.port, request("GET", f"/g/webhooks/echo/{tag()}", hostile))
    before = rss_bytes(pid)
    for _ in range(200):
        reply = exchange(gateway.port, request("GET", f"/g/demo/respond/{tag()}", hostile))
        assert reply.status == 200, reply.status
    grown = rss_bytes(pid) - before
    assert grown < 20 * 1024 * 1024, f"resident memory grew by {grown / 1e6:.1f} MB"
    assert_still_serving(gateway)
