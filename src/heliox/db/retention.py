"""Request-log retention: delete rows older than N days, a batch per transaction.

Each batch is its own short transaction, so the log writer and the admin API never wait long
behind it (on SQLite one writer at a time; on PostgreSQL no long-held row locks or huge WAL
bursts). Run it periodically; it picks up where it stopped if interrupted.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.db.models import RequestLog

DEFAULT_BATCH = 10_000


async def delete_old_logs(
    session_factory: async_sessionmaker[AsyncSession],
    older_than_days: int,
    *,
    batch: int = DEFAULT_BATCH,
    now: datetime | None = None,
) -> int:
    """Delete request logs with `ts` before `now - older_than_days`; returns how many."""
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    # By id through the ts index: a bounded statement on both backends (SQLite has no
    # DELETE ... LIMIT unless compiled with it).
    victims = select(RequestLog.id).where(RequestLog.ts < cutoff).limit(batch)
    statement = delete(RequestLog).where(RequestLog.id.in_(victims))
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
