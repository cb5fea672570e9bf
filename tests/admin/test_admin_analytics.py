"""/admin/analytics against hand-built request logs: exact counts, rates and percentiles."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.db.analytics_queries import PERCENTILES, _together, interpolate_percentile
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.db.models import ApiKey, RequestLog, Tenant
from heliox.db.rollup_queries import rebuild_rollups
from tests.admin.admin_support import (
    FakeRuntime,
    assert_problem,
    build_app,
    client_for,
    make_settings,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SINCE = T0.isoformat()
UNTIL = (T0 + timedelta(minutes=10)).isoformat()
RANGE = {"since": SINCE, "until": UNTIL}
KEY_HASH = "ab" * 32


@dataclass(frozen=True)
class Row:
    at: float  # seconds after T0
    route: str
    key_id: int | None
    status: int
    cache: str
    latency: float
    upstream: float | None
    bytes_out: int
    path: str = "/"
    method: str = "GET"

    def values(self) -> dict[str, Any]:
        return {
            "ts": T0 + timedelta(seconds=self.at),
            "request_id": f"req-{self.at}",
            "tenant_id": 1 if self.key_id is not None else None,
            "key_id": self.key_id,
            "route_id": None,
            "route_name": self.route,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "cache_status": self.cache,
            "latency_ms": self.latency,
            "upstream_latency_ms": self.upstream,
            "bytes_in": 7,
            "bytes_out": self.bytes_out,
            "client_ip": "203.0.113.9",
            "user_agent": "test-agent",
        }


# Inserted in this order, so row n has id n + 1.
ROWS = [
    Row(0, "orders", 1, 200, "HIT", 1.0, None, 100, path="/orders/1xa"),
    Row(10, "orders", 1, 200, "HIT", 2.0, None, 100),
    Row(20, "orders", 1, 200, "MISS", 30.0, 25.0, 100, path="/orders/1_a"),
    Row(70, "orders", 1, 200, "STALE", 3.0, None, 100),
    Row(80, "orders", 1, 500, "MISS", 50.0, 45.0, 10),
    Row(130, "orders", 1, 429, "", 0.5, None, 0),
    Row(140, "orders", 1, 200, "BYPASS", 20.0, 18.0, 100, method="POST"),
    Row(150, "orders", 1, 404, "NEGATIVE", 1.5, None, 20),
    Row(15, "users", 2, 200, "MISS", 40.0, 35.0, 200, path="/users/7"),
    Row(75, "users", 2, 200, "HIT", 2.5, None, 200, path="/users/7"),
    Row(135, "users", 2, 502, "MISS", 100.0, 99.0, 0, path="/users/8"),
    Row(30, "", None, 401, "", 0.2, None, 0, path="/nowhere"),
    # Outside [T0, T0 + 10 min): one just before, one exactly at `until` (exclusive).
    Row(-10, "orders", 1, 200, "HIT", 9.0, None, 100),
    Row(600, "orders", 1, 200, "HIT", 9.0, None, 100),
]
IN_RANGE = [r for r in ROWS if 0 <= r.at < 600]


def reference_percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


async def insert_rows(
    session_factory: async_sessionmaker[AsyncSession], rows: Sequence[Row]
) -> None:
    async with session_factory() as session:
        await session.execute(insert(RequestLog), [r.values() for r in rows])
        # Written around the log writer: the roll-ups (windows over an hour) are rebuilt.
        await rebuild_rollups(await session.connection())
        await session.commit()


async def seed(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        session.add(Tenant(id=1, name="Acme"))
        await session.flush()
        for key_id, name, prefix in ((1, "orders-bot", "hx_live_aaaa"), (2, "users-app", "hx_b")):
            session.add(
                ApiKey(
                    id=key_id,
                    tenant_id=1,
                    name=name,
                    key_hash=KEY_HASH[:-1] + str(key_id),
                    key_prefix=prefix,
                )
            )
        await session.commit()
    await insert_rows(session_factory, ROWS)


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


@pytest.fixture
async def seeded(runtime: FakeRuntime) -> FakeRuntime:
    await seed(runtime.session_factory)
    return runtime


# --- summary -------------------------------------------------------------------------------------
async def test_summary_counts_rates_and_percentiles(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    body = await get_json(client, "/admin/analytics/summary", **RANGE)
    assert body["window"] == "custom"
    assert body["window_seconds"] == 600
    assert body["requests"] == 12
    assert body["errors"] == 2
    assert body["client_errors"] == 3
    assert body["rate_limited"] == 1
    assert body["error_rate"] == round(2 / 12, 4)
    assert body["cache"] == {
        "hit": 3,
        "miss": 4,
        "stale": 1,
        "updating": 0,
        "revalidated": 0,
        "negative": 1,
        "bypass": 1,
        "expired": 0,
        "none": 2,
        "other": 0,
        "served_from_cache": 5,
        "lookups": 9,
        "hit_rate": round(5 / 9, 4),
    }
    assert body["upstream_calls"] == 5
    assert body["upstream_calls_saved"] == 7
    assert body["bytes_out"] == 930
    assert body["bytes_in"] == 7 * 12
    assert body["requests_per_second"] == 0.02
    latencies = [r.latency for r in IN_RANGE]
    assert body["latency_ms"] == {
        "avg": round(sum(latencies) / 12, 3),
        "p50": 2.75,
        "p95": 72.5,
        "p99": 94.5,
    }


async def test_summary_filters(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    users = await get_json(client, "/admin/analytics/summary", route="users", **RANGE)
    assert (users["requests"], users["errors"], users["upstream_calls"]) == (3, 1, 2)
    assert users["latency_ms"]["p50"] == 40.0
    tenant = await get_json(client, "/admin/analytics/summary", tenant_id=1, **RANGE)
    assert tenant["requests"] == 11
    key = await get_json(client, "/admin/analytics/summary", key_id=1, **RANGE)
    assert key["requests"] == 8
    assert key["cache"]["hit_rate"] == round(4 / 6, 4)


async def test_window_ending_at_until(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/admin/analytics/summary", window="10M", until=UNTIL)
    assert (body["window"], body["since"], body["requests"]) == ("10m", "2025-03-01T12:00:00Z", 12)
    # A naive timestamp is UTC.
    naive = await get_json(
        client, "/admin/analytics/summary", since="2025-03-01T12:00:00", until="2025-03-01T12:01:00"
    )
    assert naive["requests"] == 5


async def test_summary_of_nothing(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/admin/analytics/summary", route="no-such-route", **RANGE)
    assert body["requests"] == 0
    assert body["error_rate"] is None
    assert body["cache"]["hit_rate"] is None
    assert body["latency_ms"] == {"avg": None, "p50": None, "p95": None, "p99": None}
    assert body["requests_per_second"] == 0


async def test_default_window_is_the_last_hour(
    runtime: FakeRuntime, client: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    recent = [
        Row(0, "orders", None, 200, "HIT", 1.0, None, 1),
        Row(0, "orders", None, 200, "MISS", 1.0, 1.0, 1),
    ]
    async with runtime.session_factory() as session:
        values = [r.values() for r in recent]
        values[0]["ts"] = now - timedelta(minutes=5)
        values[1]["ts"] = now - timedelta(hours=2)
        await session.execute(insert(RequestLog), values)
        await rebuild_rollups(await session.connection())
        await session.commit()
    hour = await get_json(client, "/admin/analytics/summary")
    assert hour["window"] == "1h"
    assert hour["window_seconds"] == 3600
    assert hour["requests"] == 1
    day = await get_json(client, "/admin/analytics/summary", window="24h")
    assert (day["window"], day["requests"]) == ("24h", 2)


# --- top keys and routes -------------------------------------------------------------------------
async def test_top_keys(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/analytics/top-keys", params=RANGE)
    assert KEY_HASH[:-1] not in response.text
    items = response.json()["items"]
    assert [k["key_id"] for k in items] == [1, 2]
    first = items[0]
    assert first == {
        "key_id": 1,
        "tenant_id": 1,
        "tenant_name": "Acme",
        "name": "orders-bot",
        "key_prefix": "hx_live_aaaa",
        "requests": 8,
        "errors": 1,
        "client_errors": 2,
        "rate_limited": 1,
        "error_rate": round(1 / 8, 4),
        "hit_rate": round(4 / 6, 4),
        "avg_latency_ms": 13.5,
        "last_seen": (T0 + timedelta(seconds=150)).isoformat().replace("+00:00", "Z"),
    }
    assert items[1]["avg_latency_ms"] == 47.5
    limited = await get_json(client, "/admin/analytics/top-keys", limit=1, **RANGE)
    assert [k["key_id"] for k in limited["items"]] == [1]
    by_route = await get_json(client, "/admin/analytics/top-keys", route="users", **RANGE)
    assert [(k["key_id"], k["requests"]) for k in by_route["items"]] == [(2, 3)]


async def test_top_keys_of_a_deleted_key_have_no_name(
    runtime: FakeRuntime, client: httpx.AsyncClient
) -> None:
    await insert_rows(runtime.session_factory, [Row(5, "orders", 77, 200, "HIT", 1, None, 1)])
    items = (await get_json(client, "/admin/analytics/top-keys", **RANGE))["items"]
    assert items == [
        {
            **items[0],
            "key_id": 77,
            "tenant_id": 1,
            "tenant_name": None,
            "name": None,
            "key_prefix": None,
            "requests": 1,
        }
    ]


async def test_top_routes(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    items = (await get_json(client, "/admin/analytics/top-routes", **RANGE))["items"]
    assert [(r["route_name"], r["requests"]) for r in items] == [
        ("orders", 8),
        ("users", 3),
        ("", 1),
    ]
    orders = items[0]
    assert orders["hit_rate"] == round(4 / 6, 4)
    assert (orders["errors"], orders["client_errors"], orders["rate_limited"]) == (1, 2, 1)
    assert orders["upstream_calls"] == 3
    latencies = [r.latency for r in IN_RANGE if r.route == "orders"]
    assert orders["latency_ms"]["p95"] == 43.0
    for p, name in zip(PERCENTILES, ("p50", "p95", "p99"), strict=True):
        expected = reference_percentile(latencies, p)
        assert orders["latency_ms"][name] == pytest.approx(expected, abs=1e-3)
    assert items[2]["hit_rate"] is None  # only a 401: no cache lookup at all
    by_key = await get_json(client, "/admin/analytics/top-routes", key_id=2, **RANGE)
    assert [r["route_name"] for r in by_key["items"]] == ["users"]
    top = await get_json(client, "/admin/analytics/top-routes", limit=1, **RANGE)
    assert [r["route_name"] for r in top["items"]] == ["orders"]


# --- cache hit rate ------------------------------------------------------------------------------
async def test_cache_hit_rate_by_route_and_series(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    body = await get_json(client, "/admin/analytics/cache-hit-rate", bucket="1m", **RANGE)
    assert (body["bucket"], body["bucket_seconds"]) == ("1m", 60)
    orders = next(r for r in body["by_route"] if r["route"] == "orders")
    assert orders == {
        "route": "orders",
        "requests": 8,
        "hits": 2,
        "misses": 2,
        "stale": 1,
        "updating": 0,
        "revalidated": 0,
        "negative": 1,
        "bypass": 1,
        "served_from_cache": 4,
        "lookups": 6,
        "hit_rate": round(4 / 6, 4),
    }
    series = body["series"]
    assert len(series) == 10
    assert [p["ts"] for p in series[:2]] == ["2025-03-01T12:00:00Z", "2025-03-01T12:01:00Z"]
    assert [p["requests"] for p in series] == [5, 3, 4, 0, 0, 0, 0, 0, 0, 0]
    assert [p["hits"] for p in series[:3]] == [2, 2, 1]
    assert [p["lookups"] for p in series[:3]] == [4, 3, 2]
    assert [p["hit_rate"] for p in series[:4]] == [0.5, round(2 / 3, 4), 0.5, None]
    assert [p["rate_limited"] for p in series[:3]] == [0, 0, 1]
    assert [p["errors"] for p in series[:3]] == [0, 1, 1]
    assert series[0]["requests_per_second"] == round(5 / 60, 3)
    for point, lo in zip(series[:3], (0, 60, 120), strict=True):
        latencies = [r.latency for r in IN_RANGE if lo <= r.at < lo + 60]
        for p, name in zip(PERCENTILES, ("p50_ms", "p95_ms", "p99_ms"), strict=True):
            assert point[name] == pytest.approx(reference_percentile(latencies, p), abs=1e-3)
    assert series[5]["p95_ms"] is None


async def test_cache_hit_rate_without_series(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    full = await get_json(client, "/admin/analytics/cache-hit-rate", **RANGE)
    lean = await get_json(client, "/admin/analytics/cache-hit-rate", series="false", **RANGE)
    assert lean["series"] == []
    assert lean["by_route"] == full["by_route"]


async def test_series_buckets_align_and_cut_at_until(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    since = (T0 + timedelta(seconds=90)).isoformat()
    until = (T0 + timedelta(seconds=250)).isoformat()
    body = await get_json(
        client, "/admin/analytics/cache-hit-rate", bucket="1m", since=since, until=until
    )
    # Widened back to 12:01:00 so the first bucket is whole; the last is cut at 12:04:10.
    assert body["since"] == "2025-03-01T12:01:00Z"
    assert [p["seconds"] for p in body["series"]] == [60, 60, 60, 10]
    assert [p["requests"] for p in body["series"]] == [3, 4, 0, 0]


async def test_series_bucket_defaults_to_1m_and_widens_for_long_ranges(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    body = await get_json(client, "/admin/analytics/cache-hit-rate", **RANGE)
    assert body["bucket"] == "1m"
    week = await get_json(
        client,
        "/admin/analytics/cache-hit-rate",
        since=(T0 - timedelta(days=6)).isoformat(),
        until=UNTIL,
    )
    assert week["bucket"] == "5m"
    assert sum(p["requests"] for p in week["series"]) == 13
    ten_seconds = await get_json(client, "/admin/analytics/cache-hit-rate", bucket="10s", **RANGE)
    assert len(ten_seconds["series"]) == 60
    assert sum(p["requests"] for p in ten_seconds["series"]) == 12


# --- logs ----------------------------------------------------------------------------------------
def ids_of(body: dict[str, Any]) -> list[int]:
    return [item["id"] for item in body["items"]]


def row_ids(predicate: Any) -> list[int]:
    """Ids (newest first) of the rows matching `predicate`."""
    return [i + 1 for i, r in reversed(list(enumerate(ROWS))) if predicate(r)]


async def test_logs_rows_carry_no_key_material(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    response = await client.get("/admin/analytics/logs", params={"limit": 1})
    assert KEY_HASH[:-1] not in response.text
    (item,) = response.json()["items"]
    assert set(item) == {
        "id",
        "ts",
        "request_id",
        "tenant_id",
        "key_id",
        "route_id",
        "route_name",
        "method",
        "path",
        "status",
        "cache_status",
        "latency_ms",
        "upstream_latency_ms",
        "bytes_in",
        "bytes_out",
        "client_ip",
        "user_agent",
        "error",
    }
    assert item["id"] == len(ROWS)


async def test_logs_cursor_pages_have_no_gaps_or_duplicates(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 5}
    pages = 0
    while True:
        body = await get_json(client, "/admin/analytics/logs", **params)
        seen += ids_of(body)
        pages += 1
        if body["next_cursor"] is None:
            assert body["has_more"] is False
            break
        assert body["has_more"] is True
        params["before_id"] = body["next_cursor"]
    assert seen == list(range(len(ROWS), 0, -1))
    assert pages == 3


async def test_logs_filtered_pages(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2, "route": "orders"}
    while True:
        body = await get_json(client, "/admin/analytics/logs", **params)
        seen += ids_of(body)
        if body["next_cursor"] is None:
            break
        params["before_id"] = body["next_cursor"]
    assert seen == row_ids(lambda r: r.route == "orders")


LOG_FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({"status": "5xx"}, lambda r: r.status >= 500),
    ({"status": "4xx"}, lambda r: 400 <= r.status < 500),
    ({"status": "404"}, lambda r: r.status == 404),
    ({"cache_status": "hit"}, lambda r: r.cache == "HIT"),
    ({"cache_status": "none"}, lambda r: r.cache == ""),
    ({"method": "post"}, lambda r: r.method == "POST"),
    ({"key_id": 2}, lambda r: r.key_id == 2),
    ({"tenant_id": 1}, lambda r: r.key_id is not None),
    ({"path_prefix": "/users/"}, lambda r: r.path.startswith("/users/")),
    # "_" is a LIKE wildcard: it must match only itself.
    ({"path_prefix": "/orders/1_"}, lambda r: r.path == "/orders/1_a"),
    ({"path_prefix": "%"}, lambda r: False),
    (RANGE, lambda r: 0 <= r.at < 600),
    ({"since": SINCE}, lambda r: r.at >= 0),
    ({"until": SINCE}, lambda r: r.at < 0),
    (
        {"route": "users", "status": "2xx", **RANGE},
        lambda r: r.route == "users" and r.status < 300,
    ),
]


async def test_logs_filters(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    for params, predicate in LOG_FILTERS:
        body = await get_json(client, "/admin/analytics/logs", **params)
        assert ids_of(body) == row_ids(predicate), params


async def test_logs_window_bounds_rows_to_the_recent_past(
    seeded: FakeRuntime, client: httpx.AsyncClient
) -> None:
    # Every seeded row is from 2025: older than any window ending now.
    assert ids_of(await get_json(client, "/admin/analytics/logs", window="1h")) == []
    fresh = Row(0, "orders", 1, 200, "HIT", 1.0, None, 1)
    async with seeded.session_factory() as session:
        await session.execute(
            insert(RequestLog), [{**fresh.values(), "ts": datetime.now(UTC) - timedelta(minutes=1)}]
        )
        await session.commit()
    assert ids_of(await get_json(client, "/admin/analytics/logs", window="1h")) == [len(ROWS) + 1]


async def test_logs_tail_with_after_id(seeded: FakeRuntime, client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/admin/analytics/logs", after_id=10, limit=3)
    assert ids_of(body) == [11, 12, 13]
    assert (body["next_cursor"], body["has_more"]) == (13, True)
    body = await get_json(client, "/admin/analytics/logs", after_id=13, limit=3)
    assert ids_of(body) == [14]
    assert (body["next_cursor"], body["has_more"]) == (14, False)
    idle = await get_json(client, "/admin/analytics/logs", after_id=14)
    assert (ids_of(idle), idle["next_cursor"]) == ([], 14)
    await insert_rows(seeded.session_factory, [Row(1, "users", 2, 200, "HIT", 1, None, 1)] * 2)
    body = await get_json(client, "/admin/analytics/logs", after_id=14)
    assert ids_of(body) == [15, 16]
    filtered = await get_json(client, "/admin/analytics/logs", after_id=0, route="users")
    assert ids_of(filtered) == [9, 10, 11, 15, 16]


# --- validation and auth -------------------------------------------------------------------------
ENDPOINTS = ["summary", "top-keys", "top-routes", "cache-hit-rate", "logs"]


async def test_requires_the_admin_key(app: Any) -> None:
    async with (
        client_for(app, admin_key=None) as anonymous,
        client_for(app, admin_key="wrong-key-wrong-key-wrong") as wrong,
    ):
        for endpoint in ENDPOINTS:
            assert_problem(await anonymous.get(f"/admin/analytics/{endpoint}"), 401)
            assert_problem(await wrong.get(f"/admin/analytics/{endpoint}"), 401)


async def test_bad_window_is_422(client: httpx.AsyncClient) -> None:
    for endpoint in ENDPOINTS:
        for window in ("1x", "0h", "h", "-1h", "91d", "1.5h", "9999999999d"):
            response = await client.get(f"/admin/analytics/{endpoint}", params={"window": window})
            body = assert_problem(response, 422)
            assert body["errors"][0]["loc"] == ["query", "window"], (endpoint, window)


BAD_PARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    ("summary", {"since": UNTIL, "until": SINCE}, "since"),
    ("summary", {"since": SINCE, "until": SINCE}, "since"),
    ("summary", {"since": "yesterday"}, "since"),
    ("summary", {"since": "2024-01-01T00:00:00Z", "until": UNTIL}, "since"),
    ("summary", {"tenant_id": 0}, "tenant_id"),
    ("top-keys", {"limit": 101}, "limit"),
    ("top-routes", {"limit": 0}, "limit"),
    ("cache-hit-rate", {"bucket": "2m"}, "bucket"),
    ("cache-hit-rate", {"bucket": "10s", "window": "7d"}, "bucket"),
    ("logs", {"status": "6xx"}, "status"),
    ("logs", {"status": "20"}, "status"),
    ("logs", {"limit": 1001}, "limit"),
    ("logs", {"before_id": 5, "after_id": 1}, "after_id"),
    ("logs", {"since": UNTIL, "until": SINCE}, "since"),
    # Times no log row can have, including ones an offset pushes below year 1.
    ("summary", {"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ("summary", {"until": "0001-01-01T00:00:00"}, "until"),
    ("cache-hit-rate", {"since": "1960-01-01T00:00:00Z", "until": "1960-01-02T00:00:00Z"}, "until"),
    ("logs", {"until": "9999-12-31T23:59:59Z"}, "until"),
    # PostgreSQL refuses NUL in text; control characters never reach the database.
    ("summary", {"route": "a\x00b"}, "route"),
    ("logs", {"path_prefix": "/\x00"}, "path_prefix"),
    ("logs", {"method": "GE\nT"}, "method"),
    ("logs", {"cache_status": "\x7f"}, "cache_status"),
]


async def test_bad_parameters_are_422(client: httpx.AsyncClient) -> None:
    for endpoint, params, field in BAD_PARAMETERS:
        response = await client.get(f"/admin/analytics/{endpoint}", params=params)
        body = assert_problem(response, 422)
        assert ["query", field] in [e["loc"] for e in body["errors"]], (endpoint, params)


@pytest.mark.parametrize(
    ("n", "values"),
    [
        (1, [5.0]),
        (2, [1.0, 3.0]),
        (5, [0.0, 1.0, 2.0, 3.0, 100.0]),
        (101, [float(i) for i in range(101)]),
    ],
)
def test_interpolated_percentile_matches_the_definition(n: int, values: list[float]) -> None:
    by_rank = {i + 1: v for i, v in enumerate(sorted(values))}
    for p in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert interpolate_percentile(p, n, by_rank) == reference_percentile(values, p)


# --- the same numbers from PostgreSQL ------------------------------------------------------------
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("summary", RANGE),
    ("summary", {"route": "orders", **RANGE}),
    ("top-keys", RANGE),
    ("top-routes", RANGE),
    ("cache-hit-rate", {"bucket": "1m", **RANGE}),
    ("cache-hit-rate", {"bucket": "10s", "key_id": 1, **RANGE}),
    ("logs", {"limit": 1000}),
    ("logs", {"status": "4xx", "path_prefix": "/", "limit": 3}),
    ("logs", {"after_id": 3, "limit": 4}),
]


@dataclass
class Backend:
    client: httpx.AsyncClient
    runtime: FakeRuntime


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"


async def _backend(url: str) -> AsyncIterator[Backend]:
    await upgrade_database(url)
    engine = make_engine(url, pool_size=2)
    runtime = FakeRuntime(settings=make_settings(), session_factory=make_session_factory(engine))
    try:
        async with client_for(build_app(runtime)) as client:
            yield Backend(client, runtime)
    finally:
        await engine.dispose()


def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        # Values are rounded to 0.001 ms / 0.0001; summation order may differ in the last bit.
        assert a == pytest.approx(b, abs=1.1e-3), path
    else:
        assert a == b, path


@pytest.mark.postgres
async def test_postgresql_gives_the_same_numbers_as_sqlite(pg_url: str, sqlite_url: str) -> None:
    answers: list[dict[str, Any]] = []
    for url in (sqlite_url, pg_url):
        async for backend in _backend(url):
            await seed(backend.runtime.session_factory)
            results = {}
            for endpoint, params in QUERIES:
                key = f"{endpoint}?{urlencode(params)}"
                results[key] = await get_json(
                    backend.client, f"/admin/analytics/{endpoint}", **params
                )
            answers.append(results)
    sqlite_answers, pg_answers = answers
    assert sqlite_answers["summary?" + urlencode(RANGE)]["latency_ms"]["p95"] == 72.5
    assert_same(sqlite_answers, pg_answers)


# --- failures ------------------------------------------------------------------------------------
async def test_database_down_is_503(tmp_path: Path) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none", pool_size=1)
    runtime = FakeRuntime(settings=make_settings(), session_factory=make_session_factory(engine))
    try:
        async with client_for(build_app(runtime)) as client:
            for endpoint in ENDPOINTS:
                response = await client.get(f"/admin/analytics/{endpoint}")
                assert_problem(response, 503)
                assert response.headers["retry-after"]
    finally:
        await engine.dispose()


async def test_side_by_side_work_fails_with_the_first_error_and_stops_the_rest() -> None:
    stopped = asyncio.Event()

    async def fails() -> None:
        raise ValueError("boom")

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    with pytest.raises(ValueError, match="boom"):
        await _together(waits(), fails())
    assert stopped.is_set()
    assert await _together(asyncio.sleep(0, "a"), asyncio.sleep(0, "b")) == ["a", "b"]
