"""The gateway end to end: real gateway and upstream processes, both modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ACME, SEEDED_KEYS, Gateway, Upstream

PROBLEM = "application/problem+json"


def test_health_reports_each_dependency(gateway: Gateway) -> None:
    body = httpx.get(gateway.url + "/health", timeout=5).json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    if gateway.env.get("REDIS_URL"):
        assert body["checks"]["redis"] == "ok"
        assert body["mode"] == "production"
    else:
        assert "redis" not in body["checks"]
        assert body["mode"] == "demo"


@pytest.mark.parametrize("key", SEEDED_KEYS)
def test_every_seeded_key_reaches_the_demo_route(gateway: Gateway, key: str) -> None:
    r = httpx.get(gateway.url + "/g/demo/items", headers={"X-API-Key": key}, timeout=10)
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list) and items


def test_demo_route_reaches_upstream_items(gateway: Gateway, upstream: Upstream) -> None:
    r = httpx.get(
        gateway.url + "/g/demo/echo/items",
        params={"b": "2", "a": "1"},
        headers={"X-API-Key": ACME},
        timeout=10,
    )
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"].startswith("/echo/items")
    assert seen["query"] == "b=2&a=1"


def test_admin_lists_seeded_tenants_routes_and_keys_without_plaintext(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        tenants = admin.get("/admin/tenants").json()
        routes = admin.get("/admin/routes").json()
        keys_resp = admin.get("/admin/keys")
    names = {t["name"] for t in _items(tenants)}
    assert {"Acme Corporation", "TechFlow Solutions", "CloudBridge Inc"} <= names
    route_names = {r["name"] for r in _items(routes)}
    assert {
        "products",
        "inventory",
        "analytics",
        "reports",
        "services",
        "webhooks",
        "demo",
    } <= route_names
    assert keys_resp.status_code == 200
    assert keys_resp.headers["cache-control"] == "no-store"
    for key in SEEDED_KEYS:
        assert key not in keys_resp.text
    prefixes = {k["key_prefix"] for k in _items(keys_resp.json())}
    assert "hx_prod_acme" in prefixes


def _items(payload: Any) -> list[dict[str, Any]]:
    """The listed objects, whether the endpoint pages them (under "items") or not."""
    items: list[dict[str, Any]] = payload["items"] if isinstance(payload, dict) else payload
    return items


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing"),
        ({"X-API-Key": "hx_prod_unknown_000000000000000000"}, "unknown"),
        ({"X-API-Key": ACME.upper()}, "case-changed"),
        ({"X-API-Key": "k" * 5000}, "oversize"),
    ],
)
def test_bad_keys_get_the_same_401(gateway: Gateway, headers: dict[str, str], why: str) -> None:
    r = httpx.get(gateway.url + "/g/demo/items", headers=headers, timeout=10)
    assert r.status_code == 401, why
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["detail"] == "a valid API key is required in the X-API-Key header"


def test_whitespace_padded_and_duplicated_keys_are_401(gateway: Gateway) -> None:
    import socket

    for extra in (
        b"X-API-Key: " + ACME[:8].encode() + b" " + ACME[8:].encode() + b"\r\n",
        b"X-API-Key: " + ACME.encode() + b"\r\nX-API-Key: " + ACME.encode() + b"\r\n",
    ):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
            s.sendall(
                b"GET /g/demo/items HTTP/1.1\r\nHost: x\r\n" + extra + b"Connection: close\r\n\r\n"
            )
            head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 401"), head[:100]


def test_non_ascii_key_is_401_not_500(gateway: Gateway) -> None:
    r = httpx.get(
        gateway.url + "/g/demo/items", headers=[(b"X-API-Key", "clé-ünïcode".encode())], timeout=10
    )
    assert r.status_code == 401


def test_unknown_route_is_404_problem(gateway: Gateway) -> None:
    r = httpx.get(gateway.url + "/g/nope/items", headers={"X-API-Key": ACME}, timeout=10)
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert "nope" in r.json()["detail"]


def test_api_key_never_reaches_upstream_and_forwarding_headers_are_set(gateway: Gateway) -> None:
    r = httpx.get(
        gateway.url + "/g/demo/echo",
        headers={
            "X-API-Key": ACME,
            "X-Forwarded-For": "6.6.6.6",
            "X-Real-IP": "6.6.6.6",
            "X-Heliox-Tenant": "999",
            "Connection": "keep-alive, X-Custom-Hop",
            "X-Custom-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
        timeout=10,
    )
    assert r.status_code == 200
    sent = {name.lower(): value for name, value in r.json()["headers"]}
    assert "x-api-key" not in sent
    assert ACME not in r.text
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent.get("x-real-ip") == "127.0.0.1"
    assert "x-heliox-tenant" not in sent
    assert "x-custom-hop" not in sent
    assert "keep-alive" not in sent
    assert "te" not in sent
    assert "heliox" in sent["via"]


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/g/demo/../../etc/passwd",
        b"/g/demo/%2e%2e/%2e%2e/etc/passwd",
        b"/g/demo/..%2f..%2fetc/passwd",
        b"/g/demo/..;/..;/admin",
        b"/g/demo/items%00.json",
    ],
)
def test_paths_that_climb_or_smuggle_are_400(gateway: Gateway, raw_path: bytes) -> None:
    status, body = _raw_get(gateway, raw_path)
    assert status == 400, body
    assert b"problem+json" in body


def test_double_encoded_dots_stay_data(gateway: Gateway) -> None:
    status, body = _raw_get(gateway, b"/g/demo/echo/%252e%252e%252f")
    assert status == 200
    assert b"%252e%252e%252f" in body


def test_double_slashes_collapse_and_host_cannot_escape(gateway: Gateway) -> None:
    status, body = _raw_get(gateway, b"/g/demo//echo//evil.com/x")
    assert status == 200, body
    assert b'"/echo/evil.com/x"' in body


def _raw_get(gateway: Gateway, raw_path: bytes) -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side normalisation)."""
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(
            b"GET "
            + raw_path
            + b" HTTP/1.1\r\nHost: localhost\r\nX-API-Key: "
            + ACME.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head + b"\n" + body


def test_declared_oversize_body_is_413_without_reading(gateway: Gateway) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(
            b"POST /g/demo/upload HTTP/1.1\r\nHost: localhost\r\nX-API-Key: "
            + ACME.encode()
            + b"\r\nContent-Length: 62914560\r\nContent-Type: application/octet-stream\r\n\r\n"
            + b"x" * 1024
        )
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_streamed_upload_within_limit_is_forwarded(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"y" * 16384

    r = httpx.post(
        gateway.url + "/g/demo/upload", content=chunks(), headers={"X-API-Key": ACME}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["received"] == 64 * 16384


def test_chunked_upload_over_limit_is_413(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(12 * 64):  # 12 MiB > 10 MiB default
            yield b"z" * 16384

    r = httpx.post(
        gateway.url + "/g/demo/upload", content=chunks(), headers={"X-API-Key": ACME}, timeout=30
    )
    assert r.status_code == 413


def test_large_download_is_streamed_intact(gateway: Gateway) -> None:
    n = 20 * 1024 * 1024
    total = 0
    with httpx.stream(
        "GET", gateway.url + f"/g/demo/bytes/{n}", headers={"X-API-Key": ACME}, timeout=30
    ) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            total += len(chunk)
    assert total == n


def test_metrics_count_real_requests(gateway: Gateway) -> None:
    admin = {"X-Admin-Key": gateway.env["ADMIN_API_KEY"]}  # production: metrics need the key
    before = httpx.get(gateway.url + "/metrics", headers=admin, timeout=5).json()
    for _ in range(3):
        httpx.get(gateway.url + "/g/products/items", headers={"X-API-Key": ACME}, timeout=10)
    after = httpx.get(gateway.url + "/metrics", headers=admin, timeout=5).json()
    assert after["requests_total"] - before["requests_total"] == 3
    prom = httpx.get(gateway.url + "/metrics/prometheus", headers=admin, timeout=5).text
    assert 'heliox_requests_total{route="products",status="200"}' in prom
    assert "heliox_request_duration_seconds_bucket" in prom
