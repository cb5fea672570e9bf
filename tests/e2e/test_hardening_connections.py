"""Client connections that send nothing, idle, or crowd a worker, against the running gateway
(docs/hardening.md, "Connections cost file descriptors before the first byte").

granian starts its header read timeout at a connection's first byte and has no idle timeout or
connection cap of its own that sheds; `heliox serve` adds them (heliox.connection_guard). Each
gateway here runs with one short timeout, so a test waits a second or two, not a minute.
"""

from __future__ import annotations

import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.hardening_support import RawConnection, assert_still_serving, request
from tests.e2e.harness import ACME, Gateway, Upstream, gateway_env, gateway_in, wait_until

SHORT = "1"  # seconds: the one timeout each gateway below shortens
CAP = 20  # CLIENT_MAX_CONNECTIONS of the crowded gateway
CROWDED_OPEN_FILES = 512  # its open-file limit: fewer descriptors than the flood has connections
FLOOD = 600


@pytest.fixture(scope="module")
def head_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    """A request head must arrive within 1 s of accept; idle connections keep the default."""
    env = gateway_env(upstream, extra={"HTTP_HEADER_READ_TIMEOUT": SHORT})
    with gateway_in(workdir, "short-head", env) as gw:
        yield gw


@pytest.fixture(scope="module")
def idle_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    """Idle keep-alive connections close after 1 s; heads keep the default (30 s)."""
    env = gateway_env(upstream, extra={"CLIENT_IDLE_TIMEOUT": SHORT})
    with gateway_in(workdir, "short-idle", env) as gw:
        yield gw


def limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CROWDED_OPEN_FILES, CROWDED_OPEN_FILES))


@pytest.fixture(scope="module")
def crowded_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    """At most CAP idle connections per worker, and fewer descriptors than FLOOD (`ulimit -n`
    for the gateway's processes only: granian raises the soft limit to the hard one, so both)."""
    env = gateway_env(upstream, extra={"CLIENT_MAX_CONNECTIONS": str(CAP)})
    with gateway_in(workdir, "crowded", env, preexec_fn=limit_open_files) as gw:
        yield gw


class Silent:
    """Connections that are opened and then send nothing."""

    def __init__(self, port: int, count: int) -> None:
        self.socks = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)
        ]
        self.closed: set[socket.socket] = set()

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.socks:
            s.close()

    def count_closed(self) -> int:
        """How many the gateway has closed so far (without a byte of answer)."""
        live = {s.fileno(): s for s in self.socks if s not in self.closed}
        poller = select.poll()  # select() takes no descriptor past 1023
        for fd in live:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            try:
                data = live[fd].recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b"", f"a silent connection got an answer: {data!r}"
            self.closed.add(live[fd])
        return len(self.closed)


def closed_by_server(conn: RawConnection, within: float) -> bool:
    conn.sock.settimeout(within)
    try:
        return conn.sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def keep_alive_get(conn: RawConnection) -> int:
    conn.send(request("GET", "/g/webhooks/items", close=False))
    return conn.read_reply().status


# --- the header read timeout starts at accept ------------------------------------------------
def test_silent_connections_close_after_the_header_timeout(head_gateway: Gateway) -> None:
    """A connection that never sends a byte used to stay open for good (granian's timer starts at
    the first byte): 200 of them are now closed HTTP_HEADER_READ_TIMEOUT after accept."""
    with Silent(head_gateway.port, 200) as silent:
        wait_until(lambda: silent.count_closed() == 200, timeout=15, interval=0.1)
    assert_still_serving(head_gateway)


def test_a_dribbled_head_is_cut_at_the_header_timeout(head_gateway: Gateway) -> None:
    """One byte of head at a time: the head's timeout counts from accept and is not reset by
    what arrives (granian's own timer is now the longer idle one)."""
    head = request("GET", "/g/webhooks/items", close=False)[:-2]  # never the final CRLF
    with RawConnection(head_gateway.port) as conn:
        deadline = time.monotonic() + 15
        closed = False
        for byte in head:
            try:
                conn.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_server(conn, 0.2):
                closed = True
                break
            assert time.monotonic() < deadline, "the head is still being read after 15 s"
        assert closed, f"all {len(head)} bytes of head sent slowly, connection still open"


def test_a_kept_alive_connection_outlives_the_header_timeout(head_gateway: Gateway) -> None:
    """Between requests a connection is idle, not reading a head: it has CLIENT_IDLE_TIMEOUT
    (75 s here), not HTTP_HEADER_READ_TIMEOUT (1 s), as nginx's keepalive_timeout. granian alone
    closed it after the header timeout."""
    with RawConnection(head_gateway.port) as conn:
        assert keep_alive_get(conn) == 200
        # The pause is the input under test (an idle gap longer than the header timeout), not a
        # wait for some state.
        time.sleep(2.5)
        assert keep_alive_get(conn) == 200


# --- idle keep-alive connections close after CLIENT_IDLE_TIMEOUT -------------------------------
def test_idle_keep_alive_connection_closes_after_the_idle_timeout(idle_gateway: Gateway) -> None:
    """It used to last as long as the header timeout (30 s here)."""
    with RawConnection(idle_gateway.port) as conn:
        assert keep_alive_get(conn) == 200
        assert closed_by_server(conn, 10), "idle connection still open 10 s after its request"


def test_a_long_request_is_not_idle(idle_gateway: Gateway) -> None:
    """A request in progress keeps its connection, however long the upstream takes; the idle
    time starts when it ends."""
    with RawConnection(idle_gateway.port) as conn:
        conn.send(request("GET", "/g/webhooks/slow?delay=2.5", close=False))
        assert conn.read_reply().status == 200
        assert keep_alive_get(conn) == 200


# --- a cap per worker that sheds, instead of accept failing for everyone ----------------------
def test_a_flood_of_silent_connections_is_shed_and_others_are_served(
    crowded_gateway: Gateway,
) -> None:
    """FLOOD silent connections against a worker with fewer descriptors than that: they used to
    exhaust them, after which the gateway accepted nothing until the flood went away. Now the
    worker stops accepting before its descriptors run out, closes the connections over
    CLIENT_MAX_CONNECTIONS at once, and keeps serving: a new client, a kept-alive connection
    that has been served, and a request in progress all get their answers."""
    with RawConnection(crowded_gateway.port) as kept:
        assert keep_alive_get(kept) == 200
        slow: dict[str, int] = {}

        def slow_request() -> None:
            r = httpx.get(
                crowded_gateway.url + "/g/webhooks/slow?delay=3",
                headers={"X-API-Key": ACME},
                timeout=20,
            )
            slow["status"] = r.status_code

        worker = threading.Thread(target=slow_request)
        worker.start()
        with Silent(crowded_gateway.port, FLOOD) as silent:
            assert_still_serving(crowded_gateway)  # answered within 10 s, in the flood
            # All but the cap are closed at once (the header timeout, 30 s, is far off).
            wait_until(lambda: silent.count_closed() >= FLOOD - CAP, timeout=20, interval=0.1)
            assert keep_alive_get(kept) == 200
            worker.join(20)
            assert slow.get("status") == 200, slow
