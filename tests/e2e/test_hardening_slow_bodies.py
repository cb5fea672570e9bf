"""Request bodies that trickle in, against the running gateway (docs/hardening.md, "Sizes and
slowness"): a body has a deadline in all and a minimum average rate, per route with defaults
from the settings, not only a timeout between two parts that each new byte restarted.

The answer is the one a stalled body gets: 408 problem+json, and the connection closed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.hardening_support import (
    PROBLEM,
    RawConnection,
    assert_still_serving,
    create_route,
    request,
    tag,
)
from tests.e2e.harness import Gateway, Upstream, gateway_env, gateway_in

DEADLINE = 1.0  # REQUEST_BODY_TIMEOUT of the module's gateway
GRACE = 0.5  # its REQUEST_BODY_MIN_RATE_GRACE; REQUEST_BODY_MIN_RATE keeps its 1024 B/s
HANG = 15.0  # a hang detector, far above every limit here


@pytest.fixture(scope="module")
def body_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    env = gateway_env(
        upstream,
        extra={
            "REQUEST_BODY_TIMEOUT": str(DEADLINE),
            "REQUEST_BODY_MIN_RATE_GRACE": str(GRACE),
        },
    )
    with gateway_in(workdir, "short-bodies", env) as gw:
        yield gw


def trickle(gw: Gateway, route: str, piece: bytes, every: float, length: int = 1 << 20) -> bytes:
    """POST a body of `length` bytes, `piece` at a time every `every` seconds, until the gateway
    answers and closes (within HANG); returns all it sent back."""
    with RawConnection(gw.port, timeout=HANG) as conn:
        conn.send(request("POST", f"/g/{route}/echo", [(b"Content-Length", b"%d" % length)]))
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < HANG:
            conn.sock.settimeout(every)
            try:
                chunk = conn.sock.recv(65536)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                break
            if chunk == b"":
                break
            if chunk:
                conn.buf += chunk
                continue
            if sent + len(piece) < length:
                try:
                    conn.send(piece)
                except OSError:
                    break
                sent += len(piece)
        else:
            raise AssertionError(f"{sent} bytes trickled over {HANG} s and no answer yet")
        return conn.buf


def assert_timed_out(answer: bytes, detail: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"content-type: " + PROBLEM.encode() in head.lower()
    assert b"connection: close" in head.lower()
    problem = json.loads(body)
    assert detail in problem["detail"], problem


def test_trickled_body_meets_the_routes_deadline(gateway: Gateway, upstream: Upstream) -> None:
    """A byte every 0.2 s used to keep an upload open indefinitely: the gap never reached the
    route's timeout (5 s here). The route's own deadline (1 s, minimum rate off) ends it."""
    name = create_route(
        gateway,
        name=f"trickle-{tag()}",
        upstream_url=upstream.url,
        timeout_seconds=5,
        request_body_timeout_seconds=1,
        request_body_min_rate=0,
    )
    assert_timed_out(trickle(gateway, name, b"x", 0.2), "did not arrive in full within 1 s")
    with gateway.admin() as admin:
        routes = admin.get("/admin/routes", params={"limit": 500}).json()["items"]
    (route,) = [r for r in routes if r["name"] == name]
    assert (route["request_body_timeout_seconds"], route["request_body_min_rate"]) == (1, 0)
    assert_still_serving(gateway)


def test_body_below_the_minimum_rate_is_cut_after_the_grace(
    body_gateway: Gateway, upstream: Upstream
) -> None:
    """The settings' defaults apply to a route without its own: 1 byte every 0.2 s is far below
    REQUEST_BODY_MIN_RATE (1024 B/s), which applies once the grace (0.5 s) has passed."""
    name = create_route(body_gateway, name=f"slow-{tag()}", upstream_url=upstream.url)
    assert_timed_out(trickle(body_gateway, name, b"x", 0.2), "slower than 1024 bytes/s")
    assert_still_serving(body_gateway)


def test_body_above_the_minimum_rate_still_meets_the_deadline(
    body_gateway: Gateway, upstream: Upstream
) -> None:
    """300 bytes every 0.1 s keeps well above the minimum rate; the deadline in all
    (REQUEST_BODY_TIMEOUT, 1 s) still ends a body that would take an hour."""
    name = create_route(body_gateway, name=f"long-{tag()}", upstream_url=upstream.url)
    assert_timed_out(trickle(body_gateway, name, b"y" * 300, 0.1), "within 1 s")


def test_a_body_that_keeps_up_is_delivered(body_gateway: Gateway, upstream: Upstream) -> None:
    """Longer than the grace, at several times the minimum rate and within the route's deadline:
    the upstream gets it all."""
    name = create_route(
        body_gateway,
        name=f"steady-{tag()}",
        upstream_url=upstream.url,
        request_body_timeout_seconds=30,
    )
    pieces, piece = 8, b"z" * 2048
    with RawConnection(body_gateway.port, timeout=HANG) as conn:
        conn.send(
            request("POST", f"/g/{name}/echo", [(b"Content-Length", b"%d" % (pieces * 2048))])
        )
        for _ in range(pieces):
            conn.send(piece)
            time.sleep(0.1)  # the pace of the upload is the input under test (~20 KB/s)
        reply = conn.read_reply()
    assert reply.status == 200, reply
    assert reply.json()["body_length"] == pieces * 2048


def test_route_body_limits_are_validated(body_gateway: Gateway, upstream: Upstream) -> None:
    bad: list[dict[str, object]] = [
        {"request_body_timeout_seconds": 0},
        {"request_body_timeout_seconds": -1},
        {"request_body_timeout_seconds": 86_401},
        {"request_body_timeout_seconds": "soon"},
        {"request_body_min_rate": -1},
        {"request_body_min_rate": 2**31},
        {"request_body_min_rate": 1.5},
    ]
    with body_gateway.admin() as admin:
        for fields in bad:
            r = admin.post(
                "/admin/routes",
                json={"name": f"bad-{tag()}", "upstream_url": upstream.url, **fields},
            )
            assert r.status_code == 422, (fields, r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
            assert next(iter(fields)) in r.text
