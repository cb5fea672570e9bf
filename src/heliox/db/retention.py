"""Request-log retention: rows older than N days go, and their roll-ups with them.

PostgreSQL (partitioned `request_logs`, heliox.db.partitions): whole daily partitions are
dropped once their day is entirely before the cutoff, so a row is kept up to one day past the
retention and nothing is deleted row by row; only stray rows in the DEFAULT partition are
deleted. The job also creates the partitions of the coming days. SQLite: rows are deleted, a
batch per transaction, so the log writer and the admin API never wait long behind it.

Roll-ups (heliox.db.rollups) are deleted for every bucket that ends before the start of the
cutoff's day: the days whose partitions are gone. Deleted an hour of buckets per statement.
Run it periodically; it picks up where it stopped if interrupted.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, CursorResult, Table, column, delete, func, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.expression import TableClause

from heliox.db import partitions
from heliox.db.models import ROLLUPS, RequestLog, UTCDateTime
from heliox.db.rollups import DAY, HOUR

DEFAULT_BATCH = 10_000


async def delete_old_logs(
    session_factory: async_sessionmaker[AsyncSession],
    older_than_days: int,
    *,
    batch: int = DEFAULT_BATCH,
    now: datetime | None = None,
) -> int:
    """Remove request logs with `ts` before `now - older_than_days` (on PostgreSQL whole days
    of them: see the module); returns how many rows went."""
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=older_than_days)
    async with session_factory() as session:
        engine = session.bind
    assert isinstance(engine, AsyncEngine)
    table: TableClause = RequestLog.__table__  # type: ignore[assignment]
    total = 0
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            if await partitions.is_partitioned(conn):
                await partitions.ensure_partitions(conn, now)
                total += await _drop_partitions(conn, cutoff)
                # Rows in the default partition are all that is left to delete one by one.
                table = table_clause(
                    partitions.DEFAULT_PARTITION,
                    column("id", BigInteger()),
                    column("ts", UTCDateTime()),
                )
            await conn.commit()
    total += await _delete_rows(session_factory, table, cutoff, batch)
    day_start = int(cutoff.timestamp()) // DAY * DAY
    for rollup in ROLLUPS.values():
        await _delete_rollups(session_factory, rollup, day_start)
    return total


async def _drop_partitions(conn: AsyncConnection, cutoff: datetime) -> int:
    names = [
        name
        for name in await partitions.existing_partitions(conn)
        if (day := partitions.day_of(name)) is not None
        and datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) <= cutoff
    ]
    rows = 0
    for name in names:
        rows += int(await conn.scalar(text(f'SELECT count(*) FROM "{name}"')) or 0)
    await conn.commit()
    await partitions.drop_partitions_before(conn, cutoff)
    return rows


async def _delete_rows(
    session_factory: async_sessionmaker[AsyncSession],
    table: TableClause,
    cutoff: datetime,
    batch: int,
) -> int:
    ts, ident = table.c.ts, table.c.id
    # By id through the ts index: a bounded statement on both backends (SQLite has no
    # DELETE ... LIMIT unless compiled with it).
    victims = select(ident).where(ts < cutoff).limit(batch)
    statement = delete(table).where(ident.in_(victims))
    total = 0
    while True:
        async with session_factory() as session:
            result = await session.execute(statement)
            await session.commit()
        assert isinstance(result, CursorResult)
        deleted = int(result.rowcount or 0)
        total += deleted
        if deleted < batch:
            return total
        # Let the log writer and request handlers in this process run between batches.
        await asyncio.sleep(0)


async def _delete_rollups(
    session_factory: async_sessionmaker[AsyncSession], rollup: Table, before: int
) -> None:
    async with session_factory() as session:
        oldest = await session.scalar(select(func.min(rollup.c.bucket)))
    if oldest is None:
        return
    start = int(oldest)
    while start < before:
        end = min(start + HOUR, before)
        async with session_factory() as session:
            await session.execute(delete(rollup).where(rollup.c.bucket < end))
            await session.commit()
        start = end
        await asyncio.sleep(0)
