"""Request-log retention removes the rows past the cutoff (on PostgreSQL whole days of them, by
dropping partitions), and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.db.models import AuditLog, RequestLog
from heliox.db.retention import delete_old_logs

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


async def add_logs(
    session_factory: async_sessionmaker[AsyncSession], ages: list[timedelta]
) -> list[int]:
    """One log row per age (NOW - age); returns their ids in the same order."""
    async with session_factory() as session:
        ids = []
        for age in ages:
            row = RequestLog(
                ts=NOW - age, method="GET", path="/", status=200, latency_ms=1.0, route_name="r"
            )
            session.add(row)
            await session.flush()
            ids.append(row.id)
        await session.commit()
    return ids


async def remaining_ids(session_factory: async_sessionmaker[AsyncSession]) -> set[int]:
    async with session_factory() as session:
        return set(await session.scalars(select(RequestLog.id)))


@pytest.mark.parametrize("batch", [1, 2, 3, 10_000])
async def test_deletes_only_rows_older_than_the_cutoff(
    session_factory: async_sessionmaker[AsyncSession], batch: int
) -> None:
    old = await add_logs(session_factory, [timedelta(days=d) for d in (400, 60, 45, 31)])
    # On PostgreSQL whole days go (their partitions are dropped): a row of the cutoff's own day
    # stays; on SQLite only rows strictly before the cutoff go.
    just_before = await add_logs(session_factory, [timedelta(days=30, seconds=1)])
    partitioned = session_factory.kw["bind"].dialect.name == "postgresql"
    if not partitioned:
        old += just_before
    young = await add_logs(
        session_factory,
        [timedelta(days=30), timedelta(days=29, hours=23), timedelta(days=1), timedelta(0)],
    )
    if partitioned:
        young += just_before
    deleted = await delete_old_logs(session_factory, 30, batch=batch, now=NOW)
    assert deleted == len(old)
    assert await remaining_ids(session_factory) == set(young)
    # A second run finds nothing more.
    assert await delete_old_logs(session_factory, 30, batch=batch, now=NOW) == 0
    assert await remaining_ids(session_factory) == set(young)


async def test_leaves_other_tables_alone(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session:
        session.add(
            AuditLog(ts=NOW - timedelta(days=400), actor="a", action="x", entity_type="tenant")
        )
        await session.commit()
    await add_logs(session_factory, [timedelta(days=400)])
    assert await delete_old_logs(session_factory, 30, now=NOW) == 1
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(AuditLog)) == 1


async def test_empty_table_and_default_clock(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    assert await delete_old_logs(session_factory, 30) == 0
    recent = datetime.now(UTC) - timedelta(days=1)
    async with session_factory() as session:
        await session.execute(
            insert(RequestLog),
            [{"ts": recent, "method": "GET", "path": "/", "status": 200, "latency_ms": 1.0}],
        )
        await session.commit()
    assert await delete_old_logs(session_factory, 30) == 0
    assert await delete_old_logs(session_factory, 0) == 1


async def test_rejects_nonsense_arguments(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(ValueError, match="older_than_days"):
        await delete_old_logs(session_factory, -1)
    with pytest.raises(ValueError, match="batch"):
        await delete_old_logs(session_factory, 30, batch=0)
