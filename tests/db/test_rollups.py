"""Roll-ups: kept by the log writer on both databases, and the analytics they answer agree with
the raw rows (counts and averages exactly, percentiles within the histogram's precision)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from heliox.db import analytics_queries as q
from heliox.db import analytics_reads as reads
from heliox.db import logwriter, rollup_queries, rollups
from heliox.db.engine import make_engine
from heliox.db.logwriter import LogWriter, compact_rollups
from heliox.db.migrate import upgrade_database
from heliox.db.models import ROLLUP_MARKS, ROLLUPS, RequestLog
from heliox.metrics import Metrics

# A day boundary in the middle of the data, so days, hours, minutes and raw seconds all serve.
MIDNIGHT = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
START = MIDNIGHT - 26 * 3600 - 17.25
END = MIDNIGHT + 3 * 3600 + 41.5
ROUTES = ("catalog", "orders", "")
CACHES = ("HIT", "MISS", "STALE", "BYPASS", "", "EXPIRED", "REVALIDATED", "WEIRD")
STATUSES = (200, 200, 200, 404, 429, 401, 403, 500, 502)
# Relative error a histogram percentile may have: one bucket's width, plus a little for
# percentile_cont interpolating between two neighbouring values.
P_TOLERANCE = 2 ** (1 / rollups.HIST_PER_DOUBLING) - 1 + 0.02


def make_rows(n: int, seed: int = 7) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    rows: list[tuple[object, ...]] = []
    for i in range(n):
        ts = START + (END - START) * rng.random()
        key = rng.choice((None, 1, 2, 3, 4, 5))
        cache = rng.choice(CACHES)
        upstream = rng.lognormvariate(math.log(30), 0.7) if cache in ("MISS", "BYPASS") else None
        latency = (upstream or 0) + rng.lognormvariate(math.log(1.5), 0.9)
        rows.append(
            (
                ts,
                f"r-{i}",
                None if key is None else key % 2 + 1,
                key,
                None,
                rng.choice(ROUTES),
                "GET",
                "/x",
                rng.choice(STATUSES),
                cache,
                latency,
                upstream,
                rng.randrange(100),
                rng.randrange(5000),
                "127.0.0.1",
                "t",
                None,
                None,
                None,
                None,
                None,  # cache_key, upstream_status, refused_by, refusal
            )
        )
    return rows


@pytest.fixture
async def loaded(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession], tmp_path: Path
) -> async_sessionmaker[AsyncSession]:
    """3,000 rows written through the log writer (several batches, out of time order)."""
    writer = _writer(engine, tmp_path)
    for row in make_rows(3000):
        writer.enqueue(row)
    while writer.pending:
        await writer.flush()
    assert writer.written == 3000
    return session_factory


def test_histogram_buckets_and_percentiles() -> None:
    assert rollups.hist_bucket(0.0) == 0
    assert rollups.hist_bucket(rollups.HIST_LOWEST_MS) == 1
    assert rollups.hist_bucket(1e9) == rollups.HIST_BUCKETS - 1
    values = sorted(random.Random(1).lognormvariate(math.log(20), 1.0) for _ in range(5000))
    counts = [0] * rollups.HIST_BUCKETS
    for v in values:
        counts[rollups.hist_bucket(v)] += 1
    for p in (0.5, 0.95, 0.99):
        exact = q.interpolate_percentile(p, len(values), {i + 1: v for i, v in enumerate(values)})
        estimate = rollups.hist_percentile(p, counts)
        assert estimate is not None
        assert abs(estimate / exact - 1) <= P_TOLERANCE, (p, exact, estimate)
    assert rollups.hist_percentile(0.5, [0] * rollups.HIST_BUCKETS) is None


def test_cover_uses_the_coarsest_whole_buckets() -> None:
    segments = rollups.cover(START, END, (86400, 3600, 60))
    assert segments[0].since == START and segments[-1].until == END
    for a, b in pairwise(segments):
        assert a.until == b.since
    grains = [s.grain for s in segments]
    assert grains == [None, 60, 3600, 86400, 3600, 60, None] or grains.count(86400) <= 1
    for s in segments:
        if s.grain is not None:
            assert s.since % s.grain == 0 and s.until % s.grain == 0
        else:
            assert s.until - s.since < 60
    assert rollups.cover(10.0, 10.0, (60,)) == []
    assert rollups.cover(0.0, 30.0, (60,)) == [rollups.Segment(0.0, 30.0, None)]


def _same_counts(a: q.Counts, b: q.Counts, *, percentiles: bool) -> None:
    for name in ("requests", "errors", "client_errors", "rate_limited", "upstream_calls",
                 "served_from_cache", "cache_lookups"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    if a.latency.avg is None:
        assert b.latency.avg is None
    else:
        assert b.latency.avg == pytest.approx(a.latency.avg, rel=1e-9)
    if percentiles:
        for name in ("p50", "p95", "p99"):
            exact, estimate = getattr(a.latency, name), getattr(b.latency, name)
            if exact is None:
                assert estimate is None
            else:
                # Below the first bound a latency reads as that bound (1/16 ms).
                slack = P_TOLERANCE * exact + rollups.HIST_LOWEST_MS
                assert abs(estimate - exact) <= slack, (name, exact, estimate)


Scope = q.LogScope
WINDOWS = (
    (START, END),  # a day, hours, minutes and seconds at both ends
    (START + 3600 * 2 + 5, START + 3600 * 4 - 7),  # hours and minutes
)
FILTERS: Sequence[dict[str, object]] = ({}, {"route": "orders"}, {"key_id": 3}, {"tenant_id": 1})


async def _both(
    monkeypatch: pytest.MonkeyPatch, call: object, *args: object
) -> tuple[object, object]:
    assert callable(call)
    from_rollups = await call(*args)
    with monkeypatch.context() as m:
        m.setattr(rollup_queries, "ROLLUP_ABOVE", timedelta(days=3650))
        from_raw = await call(*args)
    return from_raw, from_rollups


async def test_rollups_answer_like_the_raw_rows(
    loaded: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await _compare(loaded, monkeypatch, WINDOWS, FILTERS)


async def test_compaction_fills_keyed_hours_and_days_and_answers_stay_the_same(
    engine: AsyncEngine,
    session_factory: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows written after the compaction mark reach the keyed minutes only; reads take them
    from there, and compaction (a day per run at most) moves them to hours and days."""
    mark = int(START) // 3600 * 3600 - 3600
    async with engine.begin() as conn:
        await conn.execute(update(ROLLUP_MARKS).values(upto=mark))
    writer = _writer(engine, tmp_path)
    for row in make_rows(1500, seed=3):
        writer.enqueue(row)
    while writer.pending:
        await writer.flush()
    hours = ROLLUPS[rollups.grain(3600, True)]
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(hours)) == 0
    windows = ((START, END),)
    filters: Sequence[dict[str, object]] = ({}, {"key_id": 3})
    await _compare(session_factory, monkeypatch, windows, filters)

    runs = []
    while (moved := await compact_rollups(engine, END + 3 * 3600)) is not None:
        runs.append(moved.timestamp())
    assert runs[-1] == (END + 3 * 3600 - rollups.COMPACT_DELAY) // 3600 * 3600
    assert runs[0] - mark == rollups.COMPACT_MAX_HOURS * 3600  # a day per run
    async with session_factory() as session:
        rows = await session.scalar(select(func.count()).select_from(RequestLog))
        for g in (hours, ROLLUPS[rollups.grain(86400, True)]):
            assert await session.scalar(select(func.sum(g.c.requests))) == rows
    await _compare(session_factory, monkeypatch, windows, filters)


def _writer(engine: AsyncEngine, tmp_path: Path) -> LogWriter:
    return LogWriter(
        engine,
        is_postgres=engine.dialect.name == "postgresql",
        metrics=Metrics(),
        queue_size=10_000,
        spill_path=tmp_path / "spill.jsonl",
    )


async def _compare(
    loaded: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    windows: Sequence[tuple[float, float]],
    filters_to_try: Sequence[dict[str, object]],
) -> None:
    for since, until in windows:
        for filters in filters_to_try:
            scope = Scope(
                since=datetime.fromtimestamp(since, UTC),
                until=datetime.fromtimestamp(until, UTC),
                **filters,  # type: ignore[arg-type]
            )
            raw, rolled = await _both(monkeypatch, reads.summary, loaded, scope)
            assert isinstance(raw, q.Counts) and isinstance(rolled, q.Counts)
            assert raw.requests > 0
            _same_counts(raw, rolled, percentiles=True)
            assert (raw.bytes_in, raw.bytes_out) == (rolled.bytes_in, rolled.bytes_out)
            for status in (*q.CACHE_STATUSES, q.NO_CACHE_STATUS):
                assert raw.cache.get(status, 0) == rolled.cache.get(status, 0), status

            raw_routes, rolled_routes = await _both(monkeypatch, reads.by_route, loaded, scope, 10)
            assert isinstance(raw_routes, list) and isinstance(rolled_routes, list)
            assert [g.group for g in raw_routes] == [g.group for g in rolled_routes]
            for a, b in zip(raw_routes, rolled_routes, strict=True):
                _same_counts(a.counts, b.counts, percentiles=True)

            raw_cache, rolled_cache = await _both(
                monkeypatch, reads.cache_by_route, loaded, scope, 10
            )
            assert isinstance(raw_cache, list) and isinstance(rolled_cache, list)
            assert [
                (c.route, c.requests, c.served_from_cache, c.cache_lookups) for c in raw_cache
            ] == [(c.route, c.requests, c.served_from_cache, c.cache_lookups) for c in rolled_cache]

            if "key_id" not in filters:
                raw_keys, rolled_keys = await _both(monkeypatch, reads.top_keys, loaded, scope, 3)
                assert isinstance(raw_keys, list) and isinstance(rolled_keys, list)
                assert [k.key_id for k in raw_keys] == [k.key_id for k in rolled_keys]
                for a, b in zip(raw_keys, rolled_keys, strict=True):
                    assert a.tenant_id == b.tenant_id
                    assert a.last_seen is not None and b.last_seen is not None
                    assert abs((a.last_seen - b.last_seen).total_seconds()) < 0.001
                    _same_counts(a.counts, b.counts, percentiles=False)

            for bucket in (60, 3600) if filters.keys() <= {"key_id"} else ():
                raw_series, rolled_series = await _both(
                    monkeypatch, reads.series, loaded, scope, bucket
                )
                assert isinstance(raw_series, list) and isinstance(rolled_series, list)
                assert [p.group for p in raw_series] == [p.group for p in rolled_series]
                for a, b in zip(raw_series, rolled_series, strict=True):
                    _same_counts(a.counts, b.counts, percentiles=True)


async def test_writer_keeps_every_grain_in_step_with_the_rows(
    loaded: async_sessionmaker[AsyncSession],
) -> None:
    async with loaded() as session:
        rows = await session.scalar(select(func.count()).select_from(RequestLog))
        for table in ROLLUPS.values():
            total = await session.scalar(select(func.sum(table.c.requests)))
            # Every row is older than the compaction mark a fresh database starts with, so the
            # writer added them to the keyed hours and days too.
            assert total == rows, table.name


@pytest.mark.postgres
async def test_compaction_waits_for_a_batch_in_flight_instead_of_skipping(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers hold the mark FOR SHARE in every batch: compaction must wait for them (not skip
    the mark as locked, which under steady traffic would be always)."""
    # Room for a machine loaded by the whole suite: the test is about waiting, not about how
    # long the product waits.
    monkeypatch.setattr(logwriter, "COMPACT_LOCK_TIMEOUT", "60s")
    await upgrade_database(pg_url)
    engine = make_engine(pg_url, pool_size=3)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(ROLLUP_MARKS).values(upto=int(START) // 3600 * 3600))
        async with engine.connect() as holder:
            await holder.execute(
                select(ROLLUP_MARKS.c.upto).with_for_update(read=True)
            )  # a batch in flight
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            async with engine.connect() as watcher:
                # Polled once before the compaction starts, as a loaded machine may well do.
                # pg_stat_activity is a snapshot kept until the transaction ends: a watcher that
                # kept polling in that transaction saw nothing waiting, ever (it failed CI once).
                assert not await watcher.scalar(waiting)
                await watcher.rollback()
                compaction = asyncio.create_task(compact_rollups(engine, END))
                deadline = time.monotonic() + 30
                while True:
                    seen = await watcher.scalar(waiting)
                    await watcher.rollback()
                    if seen:
                        break
                    assert not compaction.done(), "compaction did not wait for the batch"
                    assert time.monotonic() < deadline, "compaction never waited on the mark"
                    await asyncio.sleep(0.02)
            assert not compaction.done()
            await holder.commit()
            moved = await asyncio.wait_for(compaction, 30)
        assert moved is not None and moved.timestamp() > START
    finally:
        await engine.dispose()
