"""The periodic jobs: what runs on a schedule, outside the request path.

Each job is idempotent, so a run cut short (a restart, a lost lock) is simply finished by the next
one. `heliox.worker` decides when, and where, each runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.config import Settings
from heliox.db.retention import delete_old_logs


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval: float  # seconds between runs, aligned to multiples of it since the epoch
    run: Callable[[], Awaitable[str]]  # returns a one-line summary for the log

    def __repr__(self) -> str:
        return f"Job({self.name!r}, every {self.interval:g} s)"


def periodic_jobs(
    settings: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> list[Job]:
    """Every job Heliox schedules, configured from the settings."""
    days = settings.log_retention_days

    async def log_retention() -> str:
        deleted = await delete_old_logs(session_factory, days)
        return f"deleted {deleted} request log rows older than {days} days"

    return [Job("log-retention", settings.log_retention_interval_seconds, log_retention)]
