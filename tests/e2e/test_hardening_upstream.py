"""Upstream faults against the running gateway (docs/hardening.md, "Faults"): refused, timing
out, resetting or cutting a body short, sending a huge or trickling body, or malformed headers.

Expected: 502 / 504 (or stale-if-error inside its window), the client connection aborted when
the headers are already out, nothing stored from an unfinished or refused answer, bodies
streamed rather than buffered, and the gateway serving normally afterwards.

`ScriptedUpstream` is an upstream the test owns, on raw sockets, so it can misbehave in ways a
well-behaved HTTP server library will not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.faults import TcpProxy
from tests.e2e.hardening_support import (
    PROBLEM,
    assert_still_serving,
    create_route,
    rss_bytes,
    tag,
    upstream_hits,
    worker_pid,
)
from tests.e2e.harness import ACME, Gateway, Upstream, free_port, wait_until

ACME_H = {"X-API-Key": ACME}
STORABLE = b"Cache-Control: public, max-age=600\r\nContent-Type: application/octet-stream\r\n"

# Responses whose head an HTTP/1.1 client must refuse (RFC 9112 §2.2, §5, §6.3).
MALFORMED_HEADS = {
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "cr-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\rSet-Cookie: s=1\r\nContent-Length: 2\r\n\r\nok",
    "no-colon": b"HTTP/1.1 200 OK\r\nX-Bad\r\nContent-Length: 2\r\n\r\nok",
    "space-in-name": b"HTTP/1.1 200 OK\r\nX Bad: 1\r\nContent-Length: 2\r\n\r\nok",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    "cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "bad-status-line": b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\nok",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 100_000
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "many-headers": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
        + b"Content-Length: 2\r\n\r\nok"
    ),
}

# Heads RFC 9112 tells a proxy how to repair rather than refuse: obs-fold becomes spaces (§5.2),
# and a response whose last transfer coding is not chunked is read until the close (§6.3).
LENIENT_HEADS = {
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "unknown-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
}
HEADS = {**MALFORMED_HEADS, **LENIENT_HEADS}


class ScriptedUpstream:
    """An HTTP/1.1 upstream on raw sockets. The request path picks the behaviour:

    /ok/*            a storable 200 whose body names the call count
    /reset/*         promises 100 000 bytes, sends 50 000, then a TCP reset
    /short/*         promises 100 000 bytes, sends 50 000, then closes cleanly (FIN)
    /chunk-cut/*     chunked, two chunks, then closes without the last chunk
    /stall-body/*    promises 1 000 bytes, sends 10, then says nothing
    /gated/*         chunked: one chunk, then waits for `release` before the rest
    /malformed/NAME  the bytes of HEADS[NAME]
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        self.first_chunk_sent = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def close(self) -> None:
        self.release.set()

        async def stop() -> None:
            for w in list(self._writers):
                w.transport.abort()
            if self._server is not None:
                self._server.close()
            # Handlers still running (a stalled body sleeps an hour) end here, not as pending
            # tasks destroyed with the loop.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()  # its self-pipe sockets are not closed otherwise

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                target = head.split(b" ", 2)[1].decode("latin-1")
                path = target.split("?", 1)[0]
                self.hits[path] = self.hits[path] + 1
                if not await self._respond(path, writer):
                    return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(self, path: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is finished."""
        kind = path.split("/")[1]
        if kind == "ok":
            body = b"call %d of %s" % (self.hits[path], path.encode())
            writer.write(b"HTTP/1.1 200 OK\r\n" + STORABLE + b"Content-Length: %d\r\n\r\n"
                         % len(body) + body)  # fmt: skip
            await writer.drain()
            return True
        if kind in ("reset", "short"):
            writer.write(b"HTTP/1.1 200 OK\r\n" + STORABLE + b"Content-Length: 100000\r\n\r\n")
            writer.write(b"x" * 50_000)
            await writer.drain()
            if kind == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            return False
        if kind == "chunk-cut":
            writer.write(b"HTTP/1.1 200 OK\r\n" + STORABLE + b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n5\r\nworld\r\n")
            await writer.drain()
            writer.close()
            return False
        if kind == "stall-body":
            writer.write(b"HTTP/1.1 200 OK\r\n" + STORABLE + b"Content-Length: 1000\r\n\r\n")
            writer.write(b"0123456789")
            await writer.drain()
            await asyncio.sleep(3600)  # until the gateway gives up and closes
            return False
        if kind == "gated":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            self.first_chunk_sent.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
            writer.write(b"4\r\nlast\r\n0\r\n\r\n")
            await writer.drain()
            return True
        if kind == "malformed":
            writer.write(HEADS[path.split("/")[2]])
            await writer.drain()
            writer.close()
            return False
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def scripted_route(embedded_gateway: Gateway, scripted: ScriptedUpstream) -> str:
    """A cached route (seeded policy "standard": 60 s; read timeout 1 s) in front of the
    scripted upstream."""
    return create_route(
        embedded_gateway, upstream_url=scripted.url, cache_policy="standard", timeout_seconds=1
    )


def _get(gw: Gateway, path: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers=ACME_H, timeout=15)


def _aborted(gw: Gateway, path: str) -> tuple[int, int]:
    """(status, bytes received) of a response the gateway must cut off mid-body."""
    received = 0
    status: int | None = None
    with (
        pytest.raises(httpx.HTTPError) as failure,  # peer closed / incomplete chunked read
        httpx.stream("GET", gw.url + path, headers=ACME_H, timeout=15) as r,
    ):
        status = r.status_code
        for chunk in r.iter_raw():
            received += len(chunk)
    # The error must end the body, not come before the answer: say which one came too early.
    assert status is not None, f"no answer before the connection failed: {failure.value!r}"
    return status, received


# --- refused and timing out --------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket is closed


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A listener that never accepts: connects succeed (the kernel queues them), nothing is
    ever answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def test_refused_upstream_is_502(gateway: Gateway, closed_port: int) -> None:
    name = create_route(gateway, upstream_url=f"http://127.0.0.1:{closed_port}")
    r = _get(gateway, f"/g/{name}/x")
    assert r.status_code == 502
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["cache-control"] == "no-store"
    assert_still_serving(gateway)


def test_silent_upstream_is_504_after_the_route_timeout(gateway: Gateway, blackhole: int) -> None:
    name = create_route(gateway, upstream_url=f"http://127.0.0.1:{blackhole}", timeout_seconds=1)
    r = _get(gateway, f"/g/{name}/x")
    assert r.status_code == 504
    assert r.headers["content-type"] == PROBLEM
    assert_still_serving(gateway)


def test_gateway_errors_are_not_stored(gateway: Gateway, closed_port: int) -> None:
    name = create_route(
        gateway, upstream_url=f"http://127.0.0.1:{closed_port}", cache_policy="standard"
    )
    first, second = _get(gateway, f"/g/{name}/x"), _get(gateway, f"/g/{name}/x")
    assert first.status_code == second.status_code == 502
    assert second.headers.get("x-cache") != "HIT"


def test_stale_if_error_serves_the_old_entry_inside_its_window(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """Policy: fresh 1 s, stale-if-error 600 s. With the upstream cut off, the expired entry is
    served instead of a 502; a URL never cached still gets the 502."""
    proxy = TcpProxy("127.0.0.1", scripted.port)
    try:
        with gateway.admin() as admin:
            policy = admin.post(
                "/admin/policies",
                json={"name": f"sie-{tag()}", "ttl_seconds": 1, "stale_if_error_seconds": 600},
            )
            assert policy.status_code == 201, policy.text
        name = create_route(
            gateway, upstream_url=f"http://127.0.0.1:{proxy.port}",
            cache_policy_id=policy.json()["id"],
        )  # fmt: skip
        t = tag()
        filled = _get(gateway, f"/g/{name}/ok/{t}")
        assert filled.status_code == 200
        proxy.cut()

        def served_stale() -> bool:
            r = _get(gateway, f"/g/{name}/ok/{t}")
            assert r.status_code == 200, r.text
            assert r.content == filled.content
            x_cache: str | None = r.headers.get("x-cache")
            return x_cache != "HIT"

        wait_until(served_stale, timeout=10)
        assert _get(gateway, f"/g/{name}/ok/{t}-never-cached").status_code == 502
        proxy.restore()
    finally:
        proxy.close()


# --- bodies that break off -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reset", "short", "chunk-cut"])
def test_body_broken_off_aborts_the_client_and_stores_nothing(
    embedded_gateway: Gateway, scripted: ScriptedUpstream, scripted_route: str, kind: str
) -> None:
    path = f"/g/{scripted_route}/{kind}/{tag()}"
    status, received = _aborted(embedded_gateway, path)
    assert status == 200  # the headers were already out: only an abort can say it failed
    assert received < 100_000
    status, _ = _aborted(embedded_gateway, path)
    assert scripted.hits[path.split(scripted_route, 1)[1]] == 2  # nothing stored
    assert_still_serving(embedded_gateway)


def _upstream_errors(gw: Gateway, route: str, status: int) -> float:
    with gw.admin() as c:
        text = c.get("/metrics/prometheus").text
    labels = {"route": route, "status": str(status)}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "heliox_upstream_errors_total" and sample.labels == labels
    )


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
def test_the_head_of_a_broken_answer_always_reaches_the_client(
    embedded_gateway: Gateway, scripted: ScriptedUpstream, scripted_route: str, cached: bool
) -> None:
    """A body that breaks off right after its first ten bytes: the abort must come after the
    head and those bytes are on the wire, not overtake them. (When it overtook them, about one
    client in a hundred got no answer at all: 200 tries catch that nearly every time.) Each
    break counts as an upstream error, and the server's traceback for the abort, which reads as
    a crash of the application, stays out of the log."""
    gw = embedded_gateway
    route = scripted_route if cached else create_route(gw, upstream_url=scripted.url)
    before = _upstream_errors(gw, route, 502)
    for _ in range(200):
        status, received = _aborted(gw, f"/g/{route}/chunk-cut/{tag()}")
        assert (status, received) == (200, 10)
    wait_until(lambda: _upstream_errors(gw, route, 502) - before == 200, timeout=5)
    log = gw.proc.output()
    assert "Application callable raised an exception" not in log
    assert "the answer was under way, so its connection was cut" in log  # Heliox says it


def test_reset_mid_body_from_the_example_upstream(gateway: Gateway, upstream: Upstream) -> None:
    """The example upstream's /abort (its answers say no-store, so this checks the abort), in
    both modes: counted as an upstream error, and not logged by the server as a crash."""
    t = tag()
    before = _upstream_errors(gateway, "demo", 502)
    status, received = _aborted(gateway, f"/g/demo/abort?after=200000&length=400000&t={t}")
    assert status == 200
    assert received < 400_000
    wait_until(lambda: _upstream_errors(gateway, "demo", 502) - before == 1, timeout=5)
    assert "Application callable raised an exception" not in gateway.proc.output()
    assert_still_serving(gateway)


def test_stalled_body_times_out_and_stores_nothing(
    embedded_gateway: Gateway, scripted: ScriptedUpstream, scripted_route: str
) -> None:
    path = f"/g/{scripted_route}/stall-body/{tag()}"
    for _ in range(2):
        status, received = _aborted(embedded_gateway, path)
        assert status == 200 and received < 1000
    assert scripted.hits[path.split(scripted_route, 1)[1]] == 2


# --- malformed responses -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADS))
def test_malformed_upstream_response_is_502_and_never_relayed(
    embedded_gateway: Gateway, scripted: ScriptedUpstream, scripted_route: str, name: str
) -> None:
    r = _get(embedded_gateway, f"/g/{scripted_route}/malformed/{name}")
    assert r.status_code == 502, (r.status_code, r.headers, r.content[:200])
    assert r.headers["content-type"] == PROBLEM
    assert "x-bad" not in r.headers and "set-cookie" not in r.headers
    again = _get(embedded_gateway, f"/g/{scripted_route}/malformed/{name}")
    assert again.status_code == 502  # and not stored
    assert scripted.hits[f"/malformed/{name}"] >= 2
    assert_still_serving(embedded_gateway)


def test_folded_header_reaches_the_client_unfolded(
    embedded_gateway: Gateway, scripted_route: str
) -> None:
    r = _get(embedded_gateway, f"/g/{scripted_route}/malformed/obs-fold")
    assert r.status_code == 200
    value = r.headers["x-folded"]
    assert "\r" not in value and "\n" not in value and value.split() == ["a", "b"]


def test_unknown_response_coding_is_read_to_the_close_and_reframed(
    embedded_gateway: Gateway, scripted_route: str
) -> None:
    r = _get(embedded_gateway, f"/g/{scripted_route}/malformed/unknown-te")
    assert r.status_code == 200
    assert r.content == b"2\r\nok\r\n0\r\n\r\n"  # the bytes as sent: nothing decoded
    assert r.headers.get("transfer-encoding") in (None, "chunked")  # the gateway's own framing


# --- big and slow bodies ---------------------------------------------------------------------

HUGE = 200 * 1024 * 1024


def _reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM (the peak resident size) to the current size.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.mark.parametrize(
    ("which", "route"),
    [("embedded_gateway", "demo"), ("pg_gateway", "demo"), ("embedded_gateway", "webhooks")],
    ids=["cached-embedded", "cached-production", "pass-through"],
)
def test_huge_body_is_streamed_in_bounded_memory(
    request: pytest.FixtureRequest, which: str, route: str
) -> None:
    """200 MB through the gateway: the worker's peak resident memory grows by a few MB at most,
    and on the cached route (1 MB object cap) nothing is stored. The cached route runs in both
    modes (the memory and Redis stores), pass-through on the embedded gateway."""
    gateway: Gateway = request.getfixturevalue(which)
    pid = worker_pid(gateway)
    path = f"/g/{route}/bytes/{HUGE}"
    before = rss_bytes(pid)
    _reset_peak(pid)
    total = 0
    with httpx.stream("GET", gateway.url + path, headers=ACME_H, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers.get("content-length") == str(HUGE)
        for chunk in r.iter_raw(1 << 20):
            total += len(chunk)
    assert total == HUGE
    grown = _peak_rss(pid) - before
    assert grown < 64 * 1024 * 1024, f"peak resident memory grew by {grown / 1e6:.0f} MB"
    if route == "demo":
        with httpx.stream("GET", gateway.url + path, headers=ACME_H, timeout=60) as again:
            assert again.headers.get("x-cache") != "HIT"


def test_object_over_the_size_cap_is_delivered_but_not_stored(
    gateway: Gateway, upstream: Upstream
) -> None:
    size = 2 * 1024 * 1024 + 7  # the demo policy stores at most 1 MB
    path = f"/g/demo/respond/{tag()}?size={size}&cache_control=public,max-age=600"
    first, second = _get(gateway, path), _get(gateway, path)
    assert len(first.content) == len(second.content) == size
    assert second.headers.get("x-cache") != "HIT"
    assert upstream_hits(upstream, path.split("/g/demo", 1)[1].split("?")[0]) == 2


def test_trickling_body_arrives_whole(gateway: Gateway) -> None:
    r = httpx.get(
        gateway.url + "/g/webhooks/drip?chunks=20&interval=0.02&size=100",
        headers=ACME_H,
        timeout=15,
    )
    assert r.status_code == 200
    assert r.content == bytes(range(100)) * 20


def test_body_is_relayed_as_it_arrives(
    embedded_gateway: Gateway, scripted: ScriptedUpstream, scripted_route: str
) -> None:
    """The client gets the first chunk while the upstream still holds back the rest: streamed,
    not buffered (no timing involved: the upstream waits for the test)."""
    scripted.release.clear()
    scripted.first_chunk_sent.clear()
    try:
        with httpx.stream(
            "GET", f"{embedded_gateway.url}/g/{scripted_route}/gated/{tag()}",
            headers=ACME_H, timeout=15,
        ) as r:  # fmt: skip
            assert r.status_code == 200
            chunks = r.iter_raw()
            first = next(chunks)
            assert first.startswith(b"first")
            assert not scripted.release.is_set()
            scripted.release.set()
            rest = b"".join(chunks)
        assert (first + rest).endswith(b"last")
    finally:
        scripted.release.set()


def test_unaffected_routes_keep_serving_while_an_upstream_hangs(
    embedded_gateway: Gateway, blackhole: int
) -> None:
    name = create_route(embedded_gateway, upstream_url=f"http://127.0.0.1:{blackhole}",
                        timeout_seconds=2)  # fmt: skip

    async def both() -> tuple[list[int], int]:
        async with httpx.AsyncClient(base_url=embedded_gateway.url, timeout=15) as client:
            stuck = [asyncio.create_task(client.get(f"/g/{name}/x", headers=ACME_H))
                     for _ in range(20)]  # fmt: skip
            fine = [await client.get("/g/webhooks/items", headers=ACME_H) for _ in range(20)]
            done = await asyncio.gather(*stuck)
        return [r.status_code for r in fine], len([r for r in done if r.status_code == 504])

    fine, timed_out = asyncio.run(both())
    assert fine == [200] * 20
    assert timed_out == 20
