"""The analytics aggregates answered from the roll-ups (heliox.db.rollups) instead of raw rows.

Used for every range longer than ROLLUP_ABOVE (an hour): such a range is cut into whole days,
hours and minutes (`rollups.cover`), each read from its roll-up table, and the seconds before
the first whole minute and after the last one from the raw rows, all in one UNION ALL. The parts
come back grouped (by route, key or time bucket) and are added up here. Every count and the
average latency are exact, so they equal what the raw rows give; percentiles come from the
histogram (see heliox.db.rollups for their precision).

Without a tenant or key filter, and not grouping by key, the per-route tables are read: a few
rows per route and bucket whatever the number of keys. Otherwise the keyed tables are, their
hours and days only below the compaction mark (see heliox.db.rollups), the minutes above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    FunctionElement,
    Select,
    Table,
    and_,
    func,
    literal,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from heliox.db import rollups as r
from heliox.db.analytics_queries import (
    CACHE_MISSES,
    PERCENTILES,
    SERIES_SLICES,
    SERVED_FROM_CACHE,
    Counts,
    GroupCounts,
    KeyCounts,
    Latency,
    LogScope,
    RouteCache,
    Sessions,
    _slices,
    _together,
    _tune,
    epoch_seconds,
)
from heliox.db.models import ROLLUP_MARKS, ROLLUPS, ApiKey, RequestLog, Tenant

# Ranges at most this long are read from the raw rows (cheap: an hour of the `ts` index).
ROLLUP_ABOVE = timedelta(hours=1)

T = RequestLog.__table__.c
Group = Literal["all", "route", "key", "bucket"]
# Bucket widths of the roll-ups, coarsest first.
ALL_GRAINS: tuple[int, ...] = (r.DAY, r.HOUR, r.MINUTE)
# X-Cache outcomes not among the known ones are counted in `requests` only; a route's cache
# breakdown shows them under this name so its total stays right.
OTHER_STATUS = "*other*"


class epoch_float(FunctionElement[float]):
    """Seconds since the Unix epoch of a timestamp, with the fraction, on either backend."""

    type = Float()
    inherit_cache = True
    name = "epoch_float"


@compiles(epoch_float, "postgresql")
def _epoch_float_pg(element: epoch_float, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date_part('epoch', {compiler.process(element.clauses, **kw)})"


@compiles(epoch_float, "sqlite")
def _epoch_float_sqlite(element: epoch_float, compiler: SQLCompiler, **kw: Any) -> str:
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


def use_rollups(seconds: float) -> bool:
    return seconds > ROLLUP_ABOVE.total_seconds()


def grains_for(bucket_seconds: int | None) -> tuple[int, ...]:
    """Roll-up widths that can build buckets of `bucket_seconds` (None: no buckets)."""
    if bucket_seconds is None:
        return ALL_GRAINS
    return tuple(g for g in ALL_GRAINS if g <= bucket_seconds and bucket_seconds % g == 0)


# --- one part of the union -----------------------------------------------------------------------
def _raw_part(
    since: float,
    until: float,
    filters: dict[str, int | str],
    group: Group,
    bucket_seconds: int | None,
    with_hist: bool,
) -> Select[Any]:
    def n(cond: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count().filter(cond)

    hist = []
    for i in range(r.HIST_BUCKETS):
        bounds = []
        if i > 0:
            bounds.append(T.latency_ms >= r.HIST_BOUNDS[i - 1])
        if i < r.HIST_BUCKETS - 1:
            bounds.append(T.latency_ms < r.HIST_BOUNDS[i])
        hist.append(n(and_(*bounds)) if with_hist else _ZERO)
    cache = [n(T.cache_status == status) for status in r.CACHE_COLUMNS]
    values: list[ColumnElement[Any]] = [
        func.count(),
        n(T.status >= 500),
        n(and_(T.status >= 400, T.status < 500)),
        n(T.status == 429),
        n(T.status == 401),
        n(T.status == 403),
        func.count(T.upstream_latency_ms),
        func.coalesce(func.sum(T.bytes_in), 0),
        func.coalesce(func.sum(T.bytes_out), 0),
        *cache,
        *hist,
        func.coalesce(func.sum(T.latency_ms), 0.0),
        epoch_float(func.max(T.ts)),
        func.coalesce(func.max(T.tenant_id), 0),
    ]
    conds: list[ColumnElement[bool]] = [
        T.ts >= r.from_epoch(since),
        T.ts < r.from_epoch(until),
    ]
    for column, value in filters.items():
        conds.append(T[column] == value)
    key: ColumnElement[Any]
    if group == "route":
        key = T.route_name
    elif group == "key":
        key = T.key_id
        conds.append(T.key_id.is_not(None))
    elif group == "bucket":
        assert bucket_seconds is not None
        key = epoch_seconds(T.ts) // literal(bucket_seconds, BigInteger)
    else:
        key = literal(0, BigInteger)
    return _grouped(key, values, conds)


def _rollup_part(
    table: Table,
    since: float,
    until: float,
    filters: dict[str, int | str],
    group: Group,
    bucket_seconds: int | None,
    with_hist: bool,
) -> Select[Any]:
    c = table.c
    # Summed as float8 (exact below 2^53): PostgreSQL sums bigints as numeric, 20% slower
    # here, and the driver would turn them into Decimals.
    values: list[ColumnElement[Any]] = [
        func.coalesce(func.sum(c[name].cast(Float)), 0).cast(BigInteger)
        if with_hist or name not in _HIST_NAMES
        else _ZERO
        for name in r.COUNT_COLUMNS
    ]
    values.append(func.coalesce(func.sum(c[r.LATENCY_SUM]), 0.0))
    values.append(func.max(c[r.LAST_SEEN]))
    values.append(func.max(c.tenant_id) if "tenant_id" in c else literal(0, BigInteger))
    conds: list[ColumnElement[bool]] = [c.bucket >= int(since), c.bucket < int(until)]
    for column, value in filters.items():
        conds.append(c[column] == value)
    key: ColumnElement[Any]
    if group == "route":
        key = c.route_name
    elif group == "key":
        key = c.key_id
        conds.append(c.key_id != 0)
    elif group == "bucket":
        assert bucket_seconds is not None
        key = c.bucket // literal(bucket_seconds, BigInteger)
    else:
        key = literal(0, BigInteger)
    return _grouped(key, values, conds)


def _grouped(
    key: ColumnElement[Any], values: list[ColumnElement[Any]], conds: list[ColumnElement[bool]]
) -> Select[Any]:
    labelled = [key.label("g"), *(v.label(f"v{i}") for i, v in enumerate(values))]
    # Grouped by position: PostgreSQL would not match an expression with its own parameters.
    return select(*labelled).where(*conds).group_by(literal_column("1"))


# --- the whole range -----------------------------------------------------------------------------
Totals = dict[Any, list[float]]
_WIDTH = len(r.SUMMED)
_INDEX = {name: i for i, name in enumerate(r.SUMMED)}
_HIST_NAMES = frozenset(r.HIST_COLUMNS)
# In place of the histogram where no percentile is wanted: summing 62 columns for nothing
# was a third of a top-keys read.
_ZERO = literal(0, BigInteger)
_LAST = _WIDTH  # index of last_seen
_TENANT = _WIDTH + 1


async def aggregate(
    session: AsyncSession,
    since: float,
    until: float,
    filters: dict[str, int | str],
    group: Group,
    bucket_seconds: int | None = None,
    *,
    with_hist: bool = True,
) -> Totals:
    """Group -> [summed columns (rollups.SUMMED)..., newest epoch, a tenant id or 0]; without
    `with_hist` the histogram's columns are 0."""
    keyed = group == "key" or "tenant_id" in filters or "key_id" in filters
    compacted = 0.0
    if keyed:
        mark = await session.scalar(
            select(ROLLUP_MARKS.c.upto).where(ROLLUP_MARKS.c.name == r.COMPACTED_MARK)
        )
        compacted = float(mark or 0)
    parts: list[Select[Any]] = []
    segments = r.plan(since, until, grains_for(bucket_seconds), keyed=keyed, compacted=compacted)
    for seg in segments:
        if seg.grain is None:
            parts.append(_raw_part(seg.since, seg.until, filters, group, bucket_seconds, with_hist))
        else:
            table = ROLLUPS[r.grain(seg.grain, keyed)]
            parts.append(
                _rollup_part(table, seg.since, seg.until, filters, group, bucket_seconds, with_hist)
            )
    totals: Totals = {}
    if not parts:
        return totals
    query = parts[0] if len(parts) == 1 else union_all(*parts)
    for row in await session.execute(query):
        g, *values = row
        acc = totals.get(g)
        if acc is None:
            totals[g] = [float(v or 0) for v in values]
            continue
        for i in range(_WIDTH):
            acc[i] += float(values[i] or 0)
        acc[_LAST] = max(acc[_LAST], float(values[_LAST] or 0))
        acc[_TENANT] = max(acc[_TENANT], float(values[_TENANT] or 0))
    return totals


def value(acc: Sequence[float], name: str) -> int:
    return int(acc[_INDEX[name]])


def cache_counts(acc: Sequence[float]) -> dict[str, int]:
    """X-Cache value -> count ("" = none), zeros left out, unknown values under OTHER_STATUS."""
    out = {status: value(acc, col) for status, col in r.CACHE_COLUMNS.items()}
    other = value(acc, "requests") - sum(out.values())
    out = {k: v for k, v in out.items() if v}
    if other:
        out[OTHER_STATUS] = other
    return out


def histogram(acc: Sequence[float]) -> list[int]:
    first = r.SUMMED.index(r.HIST_COLUMNS[0])
    return [int(v) for v in acc[first : first + r.HIST_BUCKETS]]


def avg_latency(acc: Sequence[float]) -> float | None:
    n = value(acc, "requests")
    return acc[r.SUMMED.index(r.LATENCY_SUM)] / n if n else None


async def key_names(
    session: AsyncSession, key_ids: Sequence[int]
) -> dict[int, tuple[int | None, str | None, str | None, str | None]]:
    """key id -> (tenant id, tenant name, key name, key prefix) of the keys that still exist."""
    if not key_ids:
        return {}
    query = (
        select(ApiKey.id, ApiKey.tenant_id, Tenant.name, ApiKey.name, ApiKey.key_prefix)
        .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id.in_(list(key_ids)))
    )
    return {int(k): (t, tn, n, p) for k, t, tn, n, p in await session.execute(query)}


async def tenant_names(session: AsyncSession, tenant_ids: Sequence[int]) -> dict[int, str]:
    if not tenant_ids:
        return {}
    query = select(Tenant.id, Tenant.name).where(Tenant.id.in_(list(tenant_ids)))
    return {int(t): str(n) for t, n in await session.execute(query)}


# --- the endpoints' aggregates -------------------------------------------------------------------
def _filters(scope: LogScope) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    if scope.route is not None:
        out["route_name"] = scope.route
    if scope.tenant_id is not None:
        out["tenant_id"] = scope.tenant_id
    if scope.key_id is not None:
        out["key_id"] = scope.key_id
    return out


def counts_of(acc: Sequence[float], *, percentiles: bool) -> Counts:
    cache = cache_counts(acc)
    served = sum(cache.get(s, 0) for s in SERVED_FROM_CACHE)
    misses = sum(cache.get(s, 0) for s in CACHE_MISSES)
    latency = Latency(avg=avg_latency(acc))
    if percentiles:
        hist = histogram(acc)
        latency.p50, latency.p95, latency.p99 = (r.hist_percentile(p, hist) for p in PERCENTILES)
    return Counts(
        requests=value(acc, "requests"),
        errors=value(acc, "errors"),
        client_errors=value(acc, "client_errors"),
        rate_limited=value(acc, "rate_limited"),
        upstream_calls=value(acc, "upstream_calls"),
        bytes_in=value(acc, "bytes_in"),
        bytes_out=value(acc, "bytes_out"),
        served_from_cache=served,
        cache_lookups=served + misses,
        cache={k: v for k, v in cache.items() if k != OTHER_STATUS},
        latency=latency,
    )


async def _totals(
    sessions: Sessions,
    scope: LogScope,
    group: Group,
    bucket_seconds: int | None = None,
    *,
    with_hist: bool = True,
) -> Totals:
    async with sessions() as session:
        await _tune(session)
        return await aggregate(
            session,
            scope.since.timestamp(),
            scope.until.timestamp(),
            _filters(scope),
            group,
            bucket_seconds,
            with_hist=with_hist,
        )


async def summary(sessions: Sessions, scope: LogScope) -> Counts:
    totals = await _totals(sessions, scope, "all")
    if not totals:
        return Counts()
    return counts_of(next(iter(totals.values())), percentiles=True)


async def top_keys(sessions: Sessions, scope: LogScope, limit: int) -> list[KeyCounts]:
    totals = await _totals(sessions, scope, "key", with_hist=False)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    async with sessions() as session:
        known = await key_names(session, [int(k) for k, _ in ranked])
        orphans = {int(acc[_TENANT]) for k, acc in ranked if int(k) not in known and acc[_TENANT]}
        tenants = await tenant_names(session, sorted(orphans))
    out = []
    for key_id, acc in ranked:
        tenant_id: int | None
        if int(key_id) in known:
            tenant_id, tenant_name, name, prefix = known[int(key_id)]
        else:
            tenant_id = int(acc[_TENANT]) or None
            tenant_name = tenants.get(tenant_id) if tenant_id is not None else None
            name = prefix = None
        out.append(
            KeyCounts(
                key_id=int(key_id),
                tenant_id=tenant_id,
                tenant_name=tenant_name,
                name=name,
                key_prefix=prefix,
                last_seen=r.from_epoch(acc[_LAST]) if acc[_LAST] else None,
                counts=counts_of(acc, percentiles=False),
            )
        )
    return out


async def by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[GroupCounts]:
    totals = await _totals(sessions, scope, "route")
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    return [
        GroupCounts(group=route, counts=counts_of(acc, percentiles=True)) for route, acc in ranked
    ]


async def cache_by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[RouteCache]:
    totals = await _totals(sessions, scope, "route", with_hist=False)
    routes = [RouteCache(str(route), cache_counts(acc)) for route, acc in totals.items()]
    return sorted(routes, key=lambda rc: (-rc.requests, rc.route))[:limit]


async def series(sessions: Sessions, scope: LogScope, bucket_seconds: int) -> list[GroupCounts]:
    # Time slices of whole buckets on separate connections, as for raw rows: PostgreSQL sums
    # them side by side (a week of minutes is 10,080 rows per route).
    slices = _slices(scope, bucket_seconds, SERIES_SLICES)
    parts: list[Totals] = await _together(
        *(_totals(sessions, part, "bucket", bucket_seconds) for part in slices)
    )
    return [
        GroupCounts(group=int(b) * bucket_seconds, counts=counts_of(acc, percentiles=True))
        for part in parts
        for b, acc in sorted(part.items())
    ]


async def rebuild_rollups(conn: AsyncConnection) -> None:
    """Every roll-up rebuilt from the raw rows, in the caller's transaction: for rows written
    around the log writer (imports, tests), or to repair roll-ups after editing rows by hand.
    Keyed hours and days are built up to the compaction mark, as the writer keeps them."""
    postgres = conn.dialect.name == "postgresql"
    mark = await conn.scalar(
        select(ROLLUP_MARKS.c.upto).where(ROLLUP_MARKS.c.name == r.COMPACTED_MARK)
    )
    for g, table in ROLLUPS.items():
        await conn.execute(table.delete())
        until = mark if g.keyed and g.seconds > r.MINUTE else None
        await conn.execute(text(r.rebuild_sql(g, postgres=postgres, until=until)))
