"""Upstreams that close idle keep-alive connections, through the running gateway.

The upstream here is the test's own HTTP/1.1 server. It closes a connection once it has been idle
for exactly `IDLE` (1 s), as Node.js does after 5 s; its close reaches the gateway `FIN_DELAY`
later, as over a real network, so a request the gateway sends on the connection in between
arrives at a closed connection and is never answered (the upstream counts it as `dropped`).
Requests are spaced 0.9-1.1 s apart, right around that timeout.

The gateway must not turn that into errors: it keeps idle connections no longer than
UPSTREAM_KEEPALIVE_TIMEOUT (and less when the upstream announces `Keep-Alive: timeout=`), and a
request that fails on a reused connection before any response byte is sent once more on a new
connection when it can be replayed. The requests here are on embedded gateways: connections do
not depend on the mode.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.hardening_support import LoopServer, create_route
from tests.e2e.harness import ACME, Gateway, gateway_env, gateway_in

ACME_H = {"X-API-Key": ACME}
IDLE = 1.0  # the upstream's keep-alive timeout
FIN_DELAY = 0.1  # how long its close takes to reach the gateway
REQUESTS = 36
BURST = 3


class IdleClosingUpstream(LoopServer):
    """An HTTP/1.1 server that closes idle connections after exactly `idle` seconds.

    `announce`: send `Keep-Alive: timeout=<idle>` with every response (as Node.js does).
    `drop_reused`: instead, never answer a second request on a connection (close it at once):
    every reused connection fails. `/slow` answers after 0.3 s.
    """

    def __init__(self, *, announce: bool = False, drop_reused: bool = False) -> None:
        self.announce = announce
        self.drop_reused = drop_reused
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        super().__init__()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        served = 0
        closes_at: float | None = None  # when this connection's idle timeout ran out
        close_handle: asyncio.TimerHandle | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if (closes_at is not None and loop.time() >= closes_at) or (
                    self.drop_reused and served
                ):
                    self.dropped += 1  # it crossed our close on the wire: never answered
                    return
                if close_handle is not None:
                    close_handle.cancel()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                # A little work per request, so that a round's requests overlap.
                await asyncio.sleep(0.3 if head.split(b" ", 2)[1] == b"/slow" else 0.05)
                keep_alive = b"Keep-Alive: timeout=%d\r\n" % IDLE if self.announce else b""
                # Counted before the answer leaves, so a test that has its response reads it.
                served += 1
                self.answered += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                    + keep_alive
                    + b"\r\nok"
                )
                await writer.drain()
                closes_at = loop.time() + IDLE
                close_handle = loop.call_at(closes_at + FIN_DELAY, writer.close)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            if close_handle is not None:
                close_handle.cancel()


@pytest.fixture(scope="module")
def long_keepalive_gateway(workdir: Path) -> Iterator[Gateway]:
    """Keeps idle upstream connections far longer than the upstream does."""
    env = gateway_env(None, extra={"UPSTREAM_KEEPALIVE_TIMEOUT": "30"})
    with gateway_in(workdir, "keepalive-30", env) as gw:
        yield gw


@pytest.fixture(scope="module")
def short_keepalive_gateway(workdir: Path) -> Iterator[Gateway]:
    """Closes idle upstream connections before the upstream does."""
    env = gateway_env(None, extra={"UPSTREAM_KEEPALIVE_TIMEOUT": "0.5"})
    with gateway_in(workdir, "keepalive-0.5", env) as gw:
        yield gw


def paced_requests(gw: Gateway, route: str, n: int = REQUESTS) -> list[str]:
    """`n` GETs in rounds 0.9-1.1 s apart, each round `BURST` at once (so the gateway holds as
    many connections to the upstream, all idle about as long); the failures, described."""
    rng = random.Random(20260)
    errors: list[str] = []
    clients = [gw.client(headers=ACME_H) for _ in range(BURST)]
    try:
        with ThreadPoolExecutor(BURST) as pool:
            for first in range(0, n, BURST):
                if first:
                    time.sleep(rng.uniform(0.9, 1.1))  # pacing the traffic, not waiting for state
                paths = [f"/g/{route}/item/{i}" for i in range(first, min(first + BURST, n))]
                for path, r in zip(paths, pool.map(httpx.Client.get, clients, paths), strict=False):
                    if r.status_code != 200:
                        errors.append(f"{path}: {r.status_code} {r.text}")
    finally:
        for client in clients:
            client.close()
    return errors


def upstream_retries(gw: Gateway) -> int:
    with gw.admin() as admin:
        events: dict[str, int] = admin.get("/metrics").json()["events"]
    return events.get("upstream_retries", 0)


def test_a_silent_upstreams_idle_closes_cause_no_errors(long_keepalive_gateway: Gateway) -> None:
    """The upstream does not announce its timeout and the gateway keeps connections longer: the
    upstream closes connections under requests, and each such request is sent again."""
    gw = long_keepalive_gateway
    with IdleClosingUpstream() as up:
        route = create_route(gw, upstream_url=up.url)
        retries_before = upstream_retries(gw)
        errors = paced_requests(gw, route)
        assert errors == [], f"{len(errors)} of {REQUESTS} requests failed: {errors}"
        assert up.answered == REQUESTS
        assert up.dropped > 0  # the fault did happen: requests met closed connections
        assert upstream_retries(gw) - retries_before >= up.dropped  # a close may also meet one


def test_an_announced_keep_alive_timeout_is_honoured(long_keepalive_gateway: Gateway) -> None:
    """`Keep-Alive: timeout=1`: no connection is reused after it, so none is closed under a
    request (with the margin, a 1 s timeout means no reuse at all)."""
    gw = long_keepalive_gateway
    with IdleClosingUpstream(announce=True) as up:
        route = create_route(gw, upstream_url=up.url)
        errors = paced_requests(gw, route)
        assert errors == [], f"{len(errors)} of {REQUESTS} requests failed: {errors}"
        assert (up.answered, up.dropped) == (REQUESTS, 0)
        assert up.connections == REQUESTS  # none reused


def test_idle_connections_are_closed_before_the_upstream_does(
    short_keepalive_gateway: Gateway,
) -> None:
    """UPSTREAM_KEEPALIVE_TIMEOUT below the upstream's timeout: no request meets a closed
    connection, without any retry."""
    gw = short_keepalive_gateway
    with IdleClosingUpstream() as up:
        route = create_route(gw, upstream_url=up.url)
        errors = paced_requests(gw, route, REQUESTS // 2)
        assert errors == [], errors
        assert (up.answered, up.dropped) == (REQUESTS // 2, 0)
        assert upstream_retries(gw) == 0


def test_the_retry_takes_a_new_connection(long_keepalive_gateway: Gateway) -> None:
    """Two pooled connections, each of which fails when reused: the retry must not take the
    other pooled one."""
    gw = long_keepalive_gateway
    with IdleClosingUpstream(drop_reused=True) as up:
        route = create_route(gw, upstream_url=up.url)
        with ThreadPoolExecutor(2) as pool:  # two at once: two connections in the pool
            first = list(
                pool.map(
                    lambda _: httpx.get(f"{gw.url}/g/{route}/slow", headers=ACME_H, timeout=10),
                    range(2),
                )
            )
        assert [r.status_code for r in first] == [200, 200]
        assert up.connections == 2
        r = httpx.get(f"{gw.url}/g/{route}/item", headers=ACME_H, timeout=10)
        assert r.status_code == 200, r.text
        assert (up.dropped, up.connections, up.answered) == (1, 3, 3)


@pytest.mark.parametrize("body", [b"", b"payload"], ids=["no-body", "body"])
def test_a_post_is_not_sent_twice(long_keepalive_gateway: Gateway, body: bytes) -> None:
    """POST is not idempotent and its body had been sent (or it had none): the upstream may have
    acted on it, so the failure is the client's to handle (502), as nginx does by default."""
    gw = long_keepalive_gateway
    with IdleClosingUpstream(drop_reused=True) as up:
        route = create_route(gw, upstream_url=up.url)
        with gw.client(headers=ACME_H) as client:
            assert client.get(f"/g/{route}/item").status_code == 200  # a connection to reuse
            r = client.post(f"/g/{route}/orders", content=body)
        assert r.status_code == 502, r.text
        assert (up.dropped, up.connections, up.answered) == (1, 1, 1)
