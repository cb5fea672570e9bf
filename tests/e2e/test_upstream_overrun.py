"""An upstream that sends more body than its `Content-Length` declares, through the running
gateway.

Handled as nginx does: the client gets the response cut at the declared length (status and
headers as sent), the upstream connection is closed rather than pooled (the surplus is never read
as the start of the next response on it), and the response is not stored in the cache.

The upstream here is the test's own HTTP/1.1 server on keep-alive connections: paths under
`/overrun` answer `Content-Length: 5` followed by `hello` and surplus bytes (in the same write,
or in a second write `SPLIT` later); every other path answers a correct `ok`.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.e2e.hardening_support import LoopServer, create_route, tag
from tests.e2e.harness import ACME, Gateway, wait_until

ACME_H = {"X-API-Key": ACME}
SURPLUS = b"EXTRA-BYTES"
SPLIT = 0.02  # seconds between the declared body and the surplus, in the split mode


class OverrunUpstream(LoopServer):
    """Answers `/overrun...` with 5 declared bytes and `SURPLUS` after them (`split`: in a write
    of its own, `SPLIT` later; `late`: only once the next request arrives on the connection, just
    before its answer), anything else with a correct 2-byte body. Records, per connection, the
    paths it answered, and counts the connections the gateway closed."""

    def __init__(
        self, *, split: bool = False, late: bool = False, surplus: bytes = SURPLUS
    ) -> None:
        self.split = split
        self.late = late  # the surplus leaves just before the answer to the next request
        self.surplus = surplus
        self.connections: list[list[str]] = []  # per connection: the paths answered on it
        self.closed_by_gateway = 0
        self.surplus_sent = 0
        self._lock = threading.Lock()
        super().__init__()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        paths: list[str] = []
        with self._lock:
            self.connections.append(paths)
        owed = b""  # `late`: the surplus still to send
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        with self._lock:
                            self.closed_by_gateway += 1
                    return
                path = head.split(b" ", 2)[1].decode()
                with self._lock:
                    paths.append(path)  # before the answer leaves: a test that has it sees it
                if owed:
                    writer.write(owed)  # where the gateway waits for this request's answer
                    owed = b""
                    self._count_surplus()
                if not path.startswith("/overrun"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                        b"Cache-Control: max-age=60\r\n\r\nok"
                    )
                    await writer.drain()
                    continue
                declared = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                    b"Cache-Control: max-age=60\r\n\r\nhello"
                )
                if self.late:
                    writer.write(declared)
                    owed = self.surplus
                elif self.split:
                    writer.write(declared)
                    await writer.drain()
                    # The upstream's own timing: its surplus leaves in a later segment.
                    await asyncio.sleep(SPLIT)
                    writer.write(self.surplus)
                    self._count_surplus()
                else:
                    writer.write(declared + self.surplus)  # one segment
                    self._count_surplus()
                await writer.drain()
        except ConnectionError:
            return

    def _count_surplus(self) -> None:
        with self._lock:
            self.surplus_sent += 1

    def snapshot(self) -> list[list[str]]:
        with self._lock:
            return [list(paths) for paths in self.connections]


def get(gw: Gateway, path: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers=ACME_H, timeout=10)


def test_connections_are_reused_when_the_upstream_sends_what_it_declares(
    gateway: Gateway,
) -> None:
    """The control for the tests below: without an overrun, the second request reuses the
    upstream connection, so a new connection there is the gateway's doing."""
    with OverrunUpstream() as up:
        route = create_route(gateway, upstream_url=up.url)
        for i in range(2):
            r = get(gateway, f"/g/{route}/plain/{i}")
            assert (r.status_code, r.content) == (200, b"ok")
        assert up.snapshot() == [["/plain/0", "/plain/1"]]
        assert up.closed_by_gateway == 0


@pytest.mark.parametrize(
    "surplus",
    [SURPLUS, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"],
    ids=["junk", "a-whole-response"],
)
def test_the_client_gets_the_declared_body_and_the_connection_is_not_reused(
    gateway: Gateway, surplus: bytes
) -> None:
    """Declared body and surplus in one write: the client gets 200 and exactly `hello`; the
    gateway closes that connection, and the next request (on a new one) gets its own answer, not
    a 502 and not the surplus."""
    with OverrunUpstream(surplus=surplus) as up:
        route = create_route(gateway, upstream_url=up.url)
        r = get(gateway, f"/g/{route}/overrun")
        assert r.status_code == 200, r.text
        assert r.content == b"hello"
        assert r.headers["content-type"] == "text/plain"
        wait_until(lambda: up.closed_by_gateway == 1, timeout=10)

        after = get(gateway, f"/g/{route}/plain")
        assert (after.status_code, after.content) == (200, b"ok"), after.text
        assert up.snapshot() == [["/overrun"], ["/plain"]]


def test_a_surplus_that_arrives_after_the_response_closes_the_idle_connection(
    gateway: Gateway,
) -> None:
    """The surplus arrives `SPLIT` after the declared body, once the response has been relayed
    and its connection pooled: the gateway closes the pooled connection when it arrives, and the
    next request goes out on a new one."""
    with OverrunUpstream(split=True) as up:
        route = create_route(gateway, upstream_url=up.url)
        r = get(gateway, f"/g/{route}/overrun")
        assert (r.status_code, r.content) == (200, b"hello"), r.text
        wait_until(lambda: up.surplus_sent == 1, timeout=10)
        wait_until(lambda: up.closed_by_gateway == 1, timeout=10)

        after = get(gateway, f"/g/{route}/plain")
        assert (after.status_code, after.content) == (200, b"ok"), after.text
        assert up.snapshot() == [["/overrun"], ["/plain"]]


def test_requests_right_after_an_overrun_do_not_fail(gateway: Gateway) -> None:
    """Overrunning and correct answers in turn, each request sent as soon as the previous one is
    answered: none of them is a 502, and no connection answers after an overrun."""
    with OverrunUpstream() as up:
        route = create_route(gateway, upstream_url=up.url)
        failures = []
        with gateway.client(headers=ACME_H) as client:
            for i in range(10):
                path = f"/overrun/{i}" if i % 2 == 0 else f"/plain/{i}"
                r = client.get(f"/g/{route}{path}")
                expected = b"hello" if i % 2 == 0 else b"ok"
                if (r.status_code, r.content) != (200, expected):
                    failures.append(f"{path}: {r.status_code} {r.content[:200]!r}")
        assert failures == []
        for paths in up.snapshot():
            overruns = [p for p in paths if p.startswith("/overrun")]
            assert overruns == [] or paths[-1] == overruns[0], paths


def test_an_overrunning_response_is_not_stored(gateway: Gateway) -> None:
    """On a route with a cache policy: the overrunning response is relayed (MISS) but not stored,
    so the next request goes to the upstream again, on a new connection."""
    with gateway.admin() as admin:
        policy = admin.post("/admin/policies", json={"name": f"p-{tag()}", "ttl_seconds": 60})
        assert policy.status_code == 201, policy.text
    with OverrunUpstream() as up:
        route = create_route(gateway, upstream_url=up.url, cache_policy_id=policy.json()["id"])
        # The control: a correct response on this route is stored.
        plain = [get(gateway, f"/g/{route}/plain") for _ in range(2)]
        assert [r.headers["x-cache"] for r in plain] == ["MISS", "HIT"]

        first = get(gateway, f"/g/{route}/overrun")
        assert (first.status_code, first.content) == (200, b"hello"), first.text
        assert first.headers["x-cache"] == "MISS"
        wait_until(lambda: up.closed_by_gateway == 1, timeout=10)
        deadline = time.monotonic() + 1.0
        # A store can complete after the response was relayed: ask again for a while.
        while time.monotonic() < deadline:
            again = get(gateway, f"/g/{route}/overrun")
            assert (again.status_code, again.content) == (200, b"hello"), again.text
            assert again.headers["x-cache"] != "HIT"
        assert sum(p.count("/overrun") for p in up.snapshot()) >= 2


def upstream_retries(gw: Gateway) -> int:
    with gw.admin() as admin:
        events: dict[str, int] = admin.get("/metrics").json()["events"]
    return events.get("upstream_retries", 0)


@pytest.mark.parametrize("mode", ["split", "late"])
def test_a_late_surplus_does_not_fail_the_next_request(gateway: Gateway, mode: str) -> None:
    """The surplus arrives after the declared body (`split`: `SPLIT` later; `late`: once the next
    request is on the connection, always) and the next request is sent at once: it can go out on
    the connection before the surplus arrives, which then comes where its response's head is
    due. That request is sent again on a new connection (it is a GET), as when a reused
    connection closes under a request: no 502, and the surplus is never read as an answer."""
    with OverrunUpstream(split=mode == "split", late=mode == "late") as up:
        route = create_route(gateway, upstream_url=up.url)
        retries_before = upstream_retries(gateway)
        failures = []
        with gateway.client(headers=ACME_H) as client:
            for i in range(10):
                for path, expected in ((f"/overrun/{i}", b"hello"), (f"/plain/{i}", b"ok")):
                    r = client.get(f"/g/{route}{path}")
                    if (r.status_code, r.content) != (200, expected):
                        failures.append(f"{path}: {r.status_code} {r.content[:200]!r}")
        assert failures == []
        if mode == "late":
            # Each /plain went out on its overrun's connection first, then on a new one, which
            # the next /overrun reused; no connection carried a request after that.
            assert upstream_retries(gateway) - retries_before == 10
            for paths in up.snapshot():
                overruns = [n for n, p in enumerate(paths) if p.startswith("/overrun")]
                assert overruns == [] or overruns[0] >= len(paths) - 2, paths
            assert len(up.snapshot()) == 11
