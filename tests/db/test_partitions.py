"""0008 on a table with rows (both databases), daily partitions created ahead (PostgreSQL), and
retention that drops whole partitions instead of deleting rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import column, func, insert, select, table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db import analytics_queries as q
from heliox.db import analytics_reads as reads
from heliox.db import partitions
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.logwriter import COLUMNS, LogWriter
from heliox.db.migrate import alembic_config, upgrade_database
from heliox.db.models import ROLLUPS, RequestLog, UTCDateTime
from heliox.db.retention import delete_old_logs
from heliox.metrics import Metrics

NOW = datetime.now(UTC).replace(microsecond=0)
# The table as 0007 has it, with the gateway's own timestamp format on SQLite (UTCDateTime).
LOGS_0007 = table(
    "request_logs",
    *(column(name) for name in ("request_id", "tenant_id", "key_id", "route_name", "method")),
    *(column(name) for name in ("path", "status", "cache_status", "latency_ms", "bytes_in")),
    *(column(name) for name in ("bytes_out", "client_ip", "user_agent")),
    column("ts", UTCDateTime()),
)
INSERT_0007 = insert(LOGS_0007)


def _old_rows() -> list[dict[str, object]]:
    """Rows over the last three days, and some forty days back."""
    rows = []
    for i in range(240):
        age = timedelta(hours=i * 0.3) if i < 200 else timedelta(days=40, minutes=i)
        rows.append(
            {
                "ts": NOW - age,
                "request_id": f"r{i}",
                "tenant_id": 1,
                "key_id": 1 + i % 3,
                "route_name": ("a", "b")[i % 2],
                "method": "GET",
                "path": "/p",
                "status": (200, 200, 404, 500)[i % 4],
                "cache_status": ("HIT", "MISS", "")[i % 3],
                "latency_ms": 0.5 + (i % 17) * 3.1,
                "bytes_in": 0,
                "bytes_out": 10,
                "client_ip": "127.0.0.1",
                "user_agent": "ua",
            }
        )
    return rows


async def test_0008_keeps_every_row_and_analytics_agree(db_url: str) -> None:
    cfg = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, cfg, "0007")
    engine = make_engine(db_url, pool_size=2)
    try:
        async with engine.begin() as conn:
            await conn.execute(INSERT_0007, _old_rows())
            before = list(await conn.execute(text("SELECT id, request_id FROM request_logs")))
        await upgrade_database(db_url)
        sessions = make_session_factory(engine)
        async with engine.connect() as conn:
            after = list(await conn.execute(text("SELECT id, request_id FROM request_logs")))
            if engine.dialect.name == "postgresql":
                assert await partitions.is_partitioned(conn)
                names = await partitions.existing_partitions(conn)
                default = await conn.scalar(
                    text(f"SELECT count(*) FROM {partitions.DEFAULT_PARTITION}")
                )
                assert default == 0  # every day with rows got its partition
                old_day = (NOW - timedelta(days=40, minutes=200)).date()
                assert partitions.partition_name(old_day) in names
                assert partitions.partition_name(NOW.date() + timedelta(days=7)) in names
        assert sorted(after) == sorted(before)
        # The whole range: from the roll-ups built by the migration, and from the raw rows.
        scope = q.LogScope(since=NOW - timedelta(days=45), until=NOW + timedelta(seconds=1))
        rolled = await reads.summary(sessions, scope)
        raw = await reads.summary(
            sessions, q.LogScope(since=scope.since, until=scope.until, route="a")
        )
        assert rolled.requests == len(before) == 240
        assert raw.requests == 120
        routes = await reads.by_route(sessions, scope, 10)
        assert [(g.group, g.counts.requests, g.counts.errors) for g in routes] == [
            ("a", 120, 0),
            ("b", 120, 60),
        ]
        keys = await reads.top_keys(sessions, scope, 10)
        assert [(k.key_id, k.counts.requests) for k in keys] == [(1, 80), (2, 80), (3, 80)]

        await asyncio.to_thread(command.downgrade, cfg, "0007")
        async with engine.connect() as conn:
            back = list(await conn.execute(text("SELECT id, request_id FROM request_logs")))
            if engine.dialect.name == "postgresql":
                assert not await partitions.is_partitioned(conn)
        assert sorted(back) == sorted(before)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_partitions_are_created_ahead_and_take_rows_from_the_default(
    pg_url: str,
) -> None:
    await upgrade_database(pg_url)
    engine = make_engine(pg_url, pool_size=2)
    try:
        far = NOW + timedelta(days=30)
        async with engine.begin() as conn:
            await conn.execute(INSERT_0007, [{**_old_rows()[0], "ts": far, "request_id": "far"}])
        async with engine.connect() as conn:
            names = await partitions.existing_partitions(conn)
            for ahead in range(partitions.PARTITIONS_AHEAD + 1):
                assert partitions.partition_name(NOW.date() + timedelta(days=ahead)) in names
            assert partitions.partition_name(far.date()) not in names
            created = await partitions.ensure_partitions(conn, NOW)
            assert created == [partitions.partition_name(far.date())]
            moved = await conn.scalar(
                text(f'SELECT request_id FROM "{partitions.partition_name(far.date())}"')
            )
            left = await conn.scalar(text(f"SELECT count(*) FROM {partitions.DEFAULT_PARTITION}"))
            assert (moved, left) == ("far", 0)
            assert await partitions.ensure_partitions(conn, NOW) == []  # nothing more to do
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_retention_drops_whole_day_partitions(pg_url: str, tmp_path: Path) -> None:
    await upgrade_database(pg_url)
    engine: AsyncEngine = make_engine(pg_url, pool_size=2)
    try:
        writer = LogWriter(
            engine,
            is_postgres=True,
            metrics=Metrics(),
            queue_size=1000,
            spill_path=tmp_path / "spill.jsonl",
        )
        ages = [40, 35, 31, 2, 0]
        for i, days in enumerate(ages):
            ts = (NOW - timedelta(days=days)).timestamp()
            row = (ts, f"r{i}", 1, 1, 1, "a", "GET", "/", 200, "HIT", 1.0, None, 0, 1, "::1", "")
            writer.enqueue(row + (None,) * (len(COLUMNS) - len(row)))
        while writer.pending:
            await writer.flush()
        async with engine.connect() as conn:
            await partitions.ensure_partitions(conn, NOW)  # the old days leave the default
            before = await partitions.existing_partitions(conn)
        sessions = make_session_factory(engine)
        assert await delete_old_logs(sessions, 30, now=NOW) == 3
        async with engine.connect() as conn:
            after = await partitions.existing_partitions(conn)
        gone = {partitions.partition_name((NOW - timedelta(days=d)).date()) for d in (40, 35, 31)}
        assert gone <= before and not gone & after
        assert partitions.partition_name(NOW.date()) in after
        async with sessions() as session:
            left = set(await session.scalars(select(RequestLog.request_id)))
            minutes = ROLLUPS[next(g for g in ROLLUPS if g.seconds == 60 and g.keyed)]
            rolled = await session.scalar(select(func.sum(minutes.c.requests)))
        assert left == {"r3", "r4"}
        assert rolled == 2  # the roll-ups of the dropped days went with them
    finally:
        await engine.dispose()
