"""Abuse events: the row each verdict of the abuse detector leaves for operators (/admin/abuse)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.db.models import AbuseEvent


async def record_abuse_event(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    at: float,
    key_id: int,
    tenant_id: int | None,
    reason: str,
    score: float,
    observed_rate: float,
    baseline_rate: float,
    action: str,
    blocked_until: float | None,
) -> None:
    """Store one verdict (times are epoch seconds; `blocked_until` None: nothing was blocked)."""
    async with session_factory() as session:
        session.add(
            AbuseEvent(
                ts=datetime.fromtimestamp(at, UTC),
                key_id=key_id,
                tenant_id=tenant_id,
                reason=reason,
                score=score,
                observed_rate=observed_rate,
                baseline_rate=baseline_rate,
                action=action,
                blocked_until=datetime.fromtimestamp(blocked_until, UTC) if blocked_until else None,
            )
        )
        await session.commit()
