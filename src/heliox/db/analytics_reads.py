"""Which source answers an analytics read: the raw rows, or the roll-ups for long ranges.

Ranges longer than an hour (rollup_queries.ROLLUP_ABOVE) are read from the per-minute, hour and
day roll-ups (heliox.db.rollup_queries): exact counts and averages, percentiles from a latency
histogram. Shorter ranges, and series in 10-second buckets (no roll-up is that fine), are read
from the raw rows (heliox.db.analytics_queries): exact percentiles. The listing of log rows is
always raw (analytics_queries.log_page).
"""

from __future__ import annotations

from heliox.db import analytics_queries as raw
from heliox.db import rollup_queries as rolled
from heliox.db.analytics_queries import (
    Counts,
    GroupCounts,
    KeyCounts,
    LogScope,
    RouteCache,
    Sessions,
    _pair,
)


def from_rollups(scope: LogScope, bucket_seconds: int | None = None) -> bool:
    seconds = (scope.until - scope.since).total_seconds()
    return rolled.use_rollups(seconds) and bool(rolled.grains_for(bucket_seconds))


async def summary(sessions: Sessions, scope: LogScope) -> Counts:
    if from_rollups(scope):
        return await rolled.summary(sessions, scope)
    return await raw.summary(sessions, scope)


async def top_keys(sessions: Sessions, scope: LogScope, limit: int) -> list[KeyCounts]:
    if from_rollups(scope):
        return await rolled.top_keys(sessions, scope, limit)
    return await raw.top_keys(sessions, scope, limit)


async def by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[GroupCounts]:
    if from_rollups(scope):
        return await rolled.by_route(sessions, scope, limit)
    return await raw.by_route(sessions, scope, limit)


async def cache_by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[RouteCache]:
    if from_rollups(scope):
        return await rolled.cache_by_route(sessions, scope, limit)
    return await raw.cache_by_route(sessions, scope, limit)


async def series(sessions: Sessions, scope: LogScope, bucket_seconds: int) -> list[GroupCounts]:
    if from_rollups(scope, bucket_seconds):
        return await rolled.series(sessions, scope, bucket_seconds)
    return await raw.series(sessions, scope, bucket_seconds)


async def cache_overview(
    sessions: Sessions, scope: LogScope, limit: int, bucket_seconds: int | None
) -> tuple[list[RouteCache], list[GroupCounts]]:
    """`cache_by_route` and, unless `bucket_seconds` is None, `series`, side by side."""
    if bucket_seconds is None:
        return await cache_by_route(sessions, scope, limit), []
    return await _pair(
        cache_by_route(sessions, scope, limit), series(sessions, scope, bucket_seconds)
    )
