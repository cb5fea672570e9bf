"""Bulkheads around the upstream connections, through the running gateway (docs/hardening.md,
"A shared pool is a shared failure"): an upstream that never answers, or one key with many slow
uploads, may only hurt itself. Everybody else is answered at once; the excess gets a 503
problem+json with Retry-After.

The gateways here run with small limits (4 connections per route, 3 in-flight upstream requests
per key, half a second of waiting) so that a handful of requests fills them. `BlackHole` is an
upstream that accepts connections, reads them and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.hardening_support import (
    PROBLEM,
    LoopServer,
    RawConnection,
    Reply,
    create_key,
    create_route,
    request,
    tag,
    upstream_hits,
)
from tests.e2e.harness import Gateway, Upstream, gateway_in_both_modes, wait_until

LIMITS = {
    "UPSTREAM_POOL_SIZE": "4",
    "UPSTREAM_MAX_REQUESTS_PER_KEY": "3",
    "UPSTREAM_POOL_TIMEOUT": "0.5",
}
HANG = 10.0  # a hang detector, not a performance bound: the other requests would take 30 s


class BlackHole(LoopServer):
    """Accepts, reads and never answers; `open` counts the connections it holds."""

    def __init__(self) -> None:
        self.open = 0
        super().__init__()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
        finally:
            self.open -= 1
            writer.transport.abort()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    with BlackHole() as hole:
        yield hole


small_gateway = gateway_in_both_modes("small_gateway", LIMITS)


# --- helpers ----------------------------------------------------------------------------------
def send_all(gw: Gateway, raws: list[bytes]) -> list[RawConnection]:
    conns = []
    for raw in raws:
        conn = RawConnection(gw.port)
        conn.send(raw)
        conns.append(conn)
    return conns


def replies_within(conns: list[RawConnection], count: int, seconds: float) -> list[Reply]:
    """The first `count` replies among `conns` (fails when fewer come within `seconds`); the
    connections that answered are closed and removed from `conns`."""
    got: list[Reply] = []
    deadline = time.monotonic() + seconds
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {count} replies within {seconds} s"
        readable, _, _ = select.select([c.sock for c in conns], [], [], remaining)
        for conn in [c for c in conns if c.sock in readable]:
            got.append(conn.read_reply())
            conn.sock.close()
            conns.remove(conn)
    return got


def assert_busy(reply: Reply, detail: str) -> None:
    assert reply.status == 503, reply.body
    assert reply.header("content-type") == PROBLEM
    assert reply.header("retry-after") == "1"
    body = reply.json()
    assert body["status"] == 503
    assert body["title"] == "Service unavailable"
    assert detail in str(body["detail"]), body


def assert_answered_now(gw: Gateway, key: str, path: str) -> None:
    """The hang detector: answered (200) while the noise is still in flight."""
    t0 = time.monotonic()
    r = httpx.get(gw.url + path, headers={"X-API-Key": key}, timeout=HANG)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < HANG


def get(route: str, path: str, key: str) -> bytes:
    return request("GET", f"/g/{route}{path}", key=key.encode())


# --- a dead upstream ---------------------------------------------------------------------------
def test_an_upstream_that_never_answers_holds_only_its_routes_connections(
    small_gateway: Gateway, black_hole: BlackHole
) -> None:
    """7 requests to a route whose upstream never answers: 4 (UPSTREAM_POOL_SIZE) hold its
    connections, the other 3 get a 503 after the bounded wait, and another tenant's request to
    another route is answered at once. With one pool for every route, it waited for the dead
    upstream's read timeout."""
    gw = small_gateway
    dead = create_route(gw, upstream_url=black_hole.url)
    keys = [create_key(gw)[1] for _ in range(3)]  # at most 3 each: below the per-key cap
    conns = send_all(gw, [get(dead, "/x", keys[i % 3]) for i in range(7)])
    try:
        wait_until(lambda: black_hole.open == 4, timeout=HANG)
        _, other = create_key(gw)
        assert_answered_now(gw, other, "/g/webhooks/items")
        for reply in replies_within(conns, 3, HANG):
            assert_busy(reply, f"all 4 upstream connections of route {dead!r} are in use")
        assert black_hole.open == 4
    finally:
        for conn in conns:
            conn.sock.close()


def test_a_routes_own_connection_limit_overrides_the_default(
    small_gateway: Gateway, black_hole: BlackHole
) -> None:
    gw = small_gateway
    dead = create_route(gw, upstream_url=black_hole.url, max_upstream_connections=2)
    with gw.admin() as admin:
        routes = admin.get("/admin/routes", params={"limit": 500}).json()["items"]
    assert [r["max_upstream_connections"] for r in routes if r["name"] == dead] == [2]
    _, key = create_key(gw)
    conns = send_all(gw, [get(dead, "/x", key) for _ in range(3)])
    try:
        wait_until(lambda: black_hole.open == 2, timeout=HANG)
        (reply,) = replies_within(conns, 1, HANG)
        assert_busy(reply, f"all 2 upstream connections of route {dead!r} are in use")
        assert black_hole.open == 2
    finally:
        for conn in conns:
            conn.sock.close()


def test_the_route_setting_is_validated(small_gateway: Gateway) -> None:
    with small_gateway.admin() as admin:
        for bad in (0, -1, 100_001, "many"):
            r = admin.post(
                "/admin/routes",
                json={
                    "name": f"r-{tag()}",
                    "upstream_url": "http://127.0.0.1:9",
                    "max_upstream_connections": bad,
                },
            )
            assert r.status_code == 422, (bad, r.text)
            assert "max_upstream_connections" in r.text


# --- one noisy key -----------------------------------------------------------------------------
def test_one_keys_slow_uploads_cannot_take_every_upstream_connection(
    small_gateway: Gateway, upstream: Upstream
) -> None:
    """5 slow uploads with one key: 3 (UPSTREAM_MAX_REQUESTS_PER_KEY) reach the upstream, 2 wait
    for one of them (UPSTREAM_POOL_TIMEOUT), then get a 503; another tenant on the same route and
    on another route is answered at once, and the key works again when its uploads end. With one
    pool for everything, 4 uploads took it and every other request waited for them."""
    gw = small_gateway
    _, noisy = create_key(gw)
    path = f"/echo/{tag()}"
    upload = request(
        "POST", f"/g/webhooks{path}", [(b"Content-Length", b"100")], b"x", key=noisy.encode()
    )
    conns = send_all(gw, [upload] * 5)
    try:
        for reply in replies_within(conns, 2, HANG):
            assert_busy(reply, "this API key already has 3 requests waiting on upstreams")
        wait_until(lambda: upstream_hits(upstream, path) == 3, timeout=HANG)
        _, other = create_key(gw)
        assert_answered_now(gw, other, "/g/webhooks/items")
        assert_answered_now(gw, other, "/g/products/items")
        # The cap is the key's, across routes.
        r = httpx.get(gw.url + "/g/products/items", headers={"X-API-Key": noisy}, timeout=HANG)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
    finally:
        for conn in conns:
            conn.sock.close()

    # The uploads' clients are gone: their slots come back (nothing is left counted).
    def works_again() -> bool:
        r = httpx.get(gw.url + "/g/webhooks/items", headers={"X-API-Key": noisy}, timeout=HANG)
        return r.status_code == 200

    wait_until(works_again, timeout=HANG)
    assert upstream_hits(upstream, path) == 3

    # Nothing stays counted once every upstream request has ended (the dead upstream's too).
    def idle() -> bool:
        with gw.admin() as admin:
            process = admin.get("/metrics").json()["process"]
        return (process["upstream_busy_routes"], process["upstream_busy_keys"]) == (0, 0)

    wait_until(idle, timeout=HANG)


def test_a_key_over_its_cap_queues_instead_of_failing(
    small_gateway: Gateway, upstream: Upstream
) -> None:
    """One client with more requests in flight than its key's cap (5 against 3), on an upstream
    that answers in 0.1 s: the 2 beyond the cap wait for the key's own requests to finish and
    are answered 200, not 503. A burst from one busy service is queueing, not an error."""
    gw = small_gateway
    _, key = create_key(gw)
    marker = tag()
    conns = send_all(
        gw, [get("webhooks", f"/slow?delay=0.1&n={marker}-{i}", key) for i in range(5)]
    )
    try:
        replies = replies_within(conns, 5, HANG)
    finally:
        for conn in conns:
            conn.sock.close()
    assert [r.status for r in replies] == [200] * 5, [r.body[:200] for r in replies]
