"""The live streams (SSE), read whole: each ends by itself after its (shortened) lifetime, or
at a shutdown that a test starts once it has seen the events it waits for."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from heliox.gateway.app import Gateway
from tests.ui.conftest import client_for, sign_in, ui_state

XSS_PATH = "/<img src=x onerror=alert(1)>"


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events as {"event", "id", "data"} (data parsed); comments and `retry:` lines skipped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def log_row(route: str, path: str, status: int = 200, key_id: int | None = 1) -> tuple[Any, ...]:
    """A request-log row as the gateway enqueues it (see heliox.db.logwriter.COLUMNS)."""
    return (
        time.time(), "req-1", 1, key_id, 1, route, "GET", path, status, "MISS",
        1.5, 1.0, 0, 10, "127.0.0.1", "<script>alert('ua')</script>", None,
        None, None, None, None,
    )  # fmt: skip


async def wait_for_rows(client: httpx.AsyncClient, count: int) -> None:
    async def poll() -> None:
        while True:
            page = (await client.get("/admin/analytics/logs", params={"limit": 100})).json()
            if len(page["items"]) >= count:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 10)


async def read_stream(client: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    # A stream that never ends would hang here: the deadline turns that into a failure.
    return await asyncio.wait_for(client.get(path, **kw), 15)


@contextlib.asynccontextmanager
async def watching(
    app: Gateway, signed_in: httpx.AsyncClient, seen: Callable[[dict[str, Any]], None]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client in `signed_in`'s session whose streams hand each event to `seen` as it is sent:
    the test transport gives a response only once it has ended, and a test that acts between
    events must know which have left (not guess it by waiting)."""

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def send_and_tell(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                for sent in parse_sse(message.get("body", b"").decode()):  # one event per chunk
                    seen(sent)

        await app(scope, receive, send_and_tell)

    transport = httpx.ASGITransport(app=watched, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url=signed_in.base_url, cookies=signed_in.cookies
    ) as client:
        yield client


def outlive_the_read(app: Gateway) -> None:
    """Streams that do not end by their lifetime within `read_stream`'s deadline: a test ends
    them by starting a shutdown (`runtime.draining`) once it has seen what it waits for."""
    ui = ui_state(app)
    ui.timing = dataclasses.replace(ui.timing, lifetime=3600)
    ui.feed.timing = ui.timing


async def test_streams_need_a_session(anon: httpx.AsyncClient) -> None:
    for path in ("/ui/stream/dashboard", "/ui/stream/logs"):
        assert (await anon.get(path)).status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"status": "abc"},
        {"status": "99"},
        {"key_id": "x"},
        {"cache_status": "hit;"},
        {"method": "G T"},
        {"request_id": "has space"},
        {"request_id": "x" * 129},
        {"key": "k" * 201},
        {"key": "a\x01b"},
    ],
)
async def test_malformed_tail_filters_are_refused(
    signed_in: httpx.AsyncClient, params: dict[str, str]
) -> None:
    assert (await signed_in.get("/ui/stream/logs", params=params)).status_code == 400


async def test_the_log_tail_sends_recent_rows_then_new_ones_and_ends(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    app.runtime.logs.enqueue(log_row("demo", "/before"))
    await wait_for_rows(signed_in, 1)
    outlive_the_read(app)
    backfill_sent = asyncio.Event()

    def seen(sent: dict[str, Any]) -> None:
        if sent["event"] == "rows" and sent["data"]["initial"]:
            backfill_sent.set()
        elif sent["event"] == "rows":
            app.runtime.draining = True  # the new rows came: the stream ends at its next tick

    async def later() -> None:
        await backfill_sent.wait()  # so these are new rows, not part of the backfill
        app.runtime.logs.enqueue(log_row("demo", XSS_PATH, status=404))
        app.runtime.logs.enqueue(log_row("other", "/filtered-out"))

    writer = asyncio.create_task(later())
    async with watching(app, signed_in, seen) as client:
        answer = await read_stream(client, "/ui/stream/logs", params={"route": "demo"})
    await writer
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["cache-control"] == "no-store"
    events = [e for e in parse_sse(answer.text) if e["event"] == "rows"]
    assert events[0]["data"]["initial"] is True
    assert [r["path"] for r in events[0]["data"]["rows"]] == ["/before"]
    later_rows = [r for e in events[1:] for r in e["data"]["rows"]]
    assert [r["path"] for r in later_rows] == [XSS_PATH]
    assert later_rows[0]["status"] == 404
    # Each event's id is the last row id it carried: what the browser sends back on reconnect.
    assert events[-1]["id"] == str(later_rows[-1]["id"])


async def test_the_log_tail_resumes_after_the_last_event_id(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    for path in ("/one", "/two", "/three"):
        app.runtime.logs.enqueue(log_row("demo", path))
    await wait_for_rows(signed_in, 3)
    ids = [r["id"] for r in (await signed_in.get("/admin/analytics/logs")).json()["items"]]
    answer = await read_stream(
        signed_in, "/ui/stream/logs", headers={"Last-Event-ID": str(sorted(ids)[0])}
    )
    rows = [r for e in parse_sse(answer.text) if e["event"] == "rows" for r in e["data"]["rows"]]
    assert [r["path"] for r in rows] == ["/two", "/three"]


async def test_the_log_tail_filters_by_request_id_and_by_key_name(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    key = (await signed_in.get("/admin/keys", params={"limit": 1})).json()["items"][0]
    app.runtime.logs.enqueue(log_row("demo", "/req-1 of the key", key_id=key["id"]))
    app.runtime.logs.enqueue(log_row("demo", "/req-1 of no key", key_id=None))
    other = list(log_row("demo", "/another request id", key_id=key["id"]))
    other[1] = "req-2"
    app.runtime.logs.enqueue(tuple(other))
    await wait_for_rows(signed_in, 3)

    async def paths(**params: str) -> list[str]:
        answer = await read_stream(signed_in, "/ui/stream/logs", params=params)
        events = [e for e in parse_sse(answer.text) if e["event"] == "rows"]
        return sorted(r["path"] for e in events for r in e["data"]["rows"])

    assert await paths(request_id="req-1") == ["/req-1 of no key", "/req-1 of the key"]
    assert await paths(request_id="req-1", key=key["name"][:3].lower()) == ["/req-1 of the key"]
    assert await paths(key=key["key_prefix"]) == ["/another request id", "/req-1 of the key"]


async def test_the_dashboard_stream_sends_points_and_cluster_figures(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    metrics = app.runtime.metrics
    for _ in range(5):
        metrics.observe_request("demo", 200, 0.002, "HIT", None)
    metrics.observe_request("demo", 429, 0.0001, "", None)
    app.runtime.logs.enqueue(log_row("demo", "/items"))
    await wait_for_rows(signed_in, 1)

    outlive_the_read(app)
    feed = ui_state(app).feed

    def seen(sent: dict[str, Any]) -> None:
        if sent["event"] == "points" and any(p["requests"] for p in sent["data"]["points"]):
            app.runtime.draining = True  # traffic between two samples was sent: enough

    async def traffic() -> None:
        # A request after each sample the stream takes, however slowly it runs, so that the
        # next point counts it; 10 ms is only how often the samples are looked at.
        sampled = 0
        while True:
            if len(feed.samples) > sampled:
                sampled = len(feed.samples)
                metrics.observe_request("demo", 200, 0.003, "MISS", 0.002)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(traffic())
    try:
        async with watching(app, signed_in, seen) as client:
            answer = await read_stream(client, "/ui/stream/dashboard")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    events = parse_sse(answer.text)
    kinds = {e["event"] for e in events}
    assert {"points", "top"} <= kinds, events
    first = next(e for e in events if e["event"] == "points")["data"]
    assert first["instance"] == app.runtime.instance_id
    points = [p for e in events if e["event"] == "points" for p in e["data"]["points"]]
    assert sum(p["requests"] for p in points) >= 1
    assert all(p["hit_rate"] is None or 0 <= p["hit_rate"] <= 1 for p in points)
    assert all(isinstance(p["blocked_keys"], int) for p in points)  # the abuse API answered
    top = next(e for e in events if e["event"] == "top")["data"]
    assert top["available"] is True
    assert top["summary"]["requests"] == 1
    assert top["routes"]["items"][0]["route_name"] == "demo"


async def test_a_reconnecting_dashboard_gets_only_newer_points(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    first = parse_sse((await read_stream(signed_in, "/ui/stream/dashboard")).text)
    last_id = [e["id"] for e in first if e["event"] == "points" and "id" in e][-1]
    again = parse_sse(
        (
            await read_stream(signed_in, "/ui/stream/dashboard", headers={"Last-Event-ID": last_id})
        ).text
    )
    points = [p for e in again if e["event"] == "points" for p in e["data"]["points"]]
    assert points and all(p["ts"] > float(last_id) for p in points)


async def test_streams_authenticate_their_own_api_reads_with_the_session(app: Gateway) -> None:
    # A session cookie for /ui only (none for /admin) is enough: the stream forwards it.
    async with client_for(app) as client:
        await sign_in(client)
        for cookie in list(client.cookies.jar):
            if cookie.path == "/admin":
                client.cookies.delete(cookie.name, domain=cookie.domain, path=cookie.path)
        assert (await client.get("/admin/tenants")).status_code == 401
        events = parse_sse((await read_stream(client, "/ui/stream/logs")).text)
    assert events[0]["event"] == "rows"


async def test_streams_end_at_once_when_the_gateway_starts_draining(
    app: Gateway, signed_in: httpx.AsyncClient
) -> None:
    app.runtime.draining = True
    for path in ("/ui/stream/dashboard", "/ui/stream/logs"):
        events = parse_sse((await read_stream(signed_in, path)).text)
        # One round of events, then the end: no second poll.
        assert len([e for e in events if e["event"] in ("points", "rows")]) == 1
