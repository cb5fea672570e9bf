"""The SQL behind /admin/analytics: aggregates and pages over `request_logs`.

Written in SQLAlchemy Core and run on SQLite and PostgreSQL alike. Percentiles are exact on both
and equal to PostgreSQL's `percentile_cont` (linear interpolation between the two nearest ranks):
PostgreSQL computes them itself; on SQLite the two ranks around each percentile are picked with
window functions and interpolated here with the same arithmetic.

The endpoints read through heliox.db.analytics_reads, which sends ranges longer than an hour
to the roll-ups (heliox.db.rollup_queries) instead.

Aggregates are bounded by a time range, so the indexes on `ts`, `(route_name, ts)`,
`(key_id, ts)` and `(tenant_id, ts)` keep their cost proportional to the rows in the window; log
pages walk the primary key from the newest row (or from a cursor) and stop after one page.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from typing import Any, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Float,
    FunctionElement,
    Integer,
    Select,
    and_,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from heliox.db.models import ApiKey, RequestLog, Tenant

PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)
ANALYTICS_WORK_MEM = "64MB"
# X-Cache values whose body came from the cache (REVALIDATED: after a 304 from the upstream).
SERVED_FROM_CACHE: tuple[str, ...] = ("HIT", "STALE", "UPDATING", "REVALIDATED", "NEGATIVE")
# Lookups that found nothing usable and went upstream.
CACHE_MISSES: tuple[str, ...] = ("MISS", "EXPIRED")
CACHE_STATUSES: tuple[str, ...] = (*SERVED_FROM_CACHE, *CACHE_MISSES, "BYPASS")
# Rows written for requests answered before the cache was consulted (401, 429, 404 route, ...).
NO_CACHE_STATUS = ""

T = RequestLog.__table__.c
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")


class epoch_seconds(FunctionElement[int]):
    """Whole seconds since the Unix epoch of a `ts` value, on either backend."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # date_part is float8; extract() is numeric since PostgreSQL 14 and several times slower.
    return f"CAST(floor(date_part('epoch', {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps the naive UTC text SQLAlchemy wrote; '%s' reads it as UTC.
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


# --- what to look at ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogScope:
    """Rows with `since <= ts < until`, optionally narrowed to a route, tenant or key."""

    since: datetime
    until: datetime
    route: str | None = None
    tenant_id: int | None = None
    key_id: int | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = [T.ts >= self.since, T.ts < self.until]
        if self.route is not None:
            conds.append(T.route_name == self.route)
        if self.tenant_id is not None:
            conds.append(T.tenant_id == self.tenant_id)
        if self.key_id is not None:
            conds.append(T.key_id == self.key_id)
        return conds


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters and cursor of one page of raw log rows."""

    limit: int
    since: datetime | None = None
    until: datetime | None = None
    route: str | None = None
    tenant_id: int | None = None
    key_id: int | None = None
    status_min: int | None = None
    status_max: int | None = None
    cache_status: str | None = None
    method: str | None = None
    path_prefix: str | None = None
    before_id: int | None = None
    after_id: int | None = None
    request_id: str | None = None
    # Rows of any of these keys (a key name or prefix search resolved by `keys_matching`).
    key_ids: tuple[int, ...] | None = None


# --- results -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Latency:
    avg: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(slots=True)
class Counts:
    """Request counts of one group of rows.

    `cache` (X-Cache value -> count, "" = no X-Cache) is filled only where every status was
    asked for; `served_from_cache` and `cache_lookups` always are.
    """

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    rate_limited: int = 0
    upstream_calls: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    served_from_cache: int = 0
    cache_lookups: int = 0
    cache: dict[str, int] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)


@dataclass(slots=True)
class KeyCounts:
    key_id: int
    tenant_id: int | None
    tenant_name: str | None
    name: str | None
    key_prefix: str | None
    last_seen: datetime | None
    counts: Counts


@dataclass(slots=True)
class GroupCounts:
    """Counts of one route (`group` = route name) or one time bucket (`group` = epoch start)."""

    group: Any
    counts: Counts


# --- aggregate building blocks -------------------------------------------------------------------
def _count_if(cond: ColumnElement[bool], name: str) -> ColumnElement[int]:
    return func.count().filter(cond).label(name)


_CACHE_PREFIX = "cache_"


def _count_columns(
    c: Any = T, *, every_cache_status: bool = False, with_bytes: bool = True
) -> list[ColumnElement[Any]]:
    """Aggregates over the columns `c` (the table's, or a subquery's with the same names)."""
    cols: list[ColumnElement[Any]] = [
        func.count().label("requests"),
        _count_if(c.status >= 500, "errors"),
        _count_if(and_(c.status >= 400, c.status < 500), "client_errors"),
        _count_if(c.status == 429, "rate_limited"),
        func.count(c.upstream_latency_ms).label("upstream_calls"),
        func.avg(c.latency_ms).label("avg_latency"),
    ]
    if with_bytes:
        cols.append(func.coalesce(func.sum(c.bytes_in), 0).label("bytes_in"))
        cols.append(func.coalesce(func.sum(c.bytes_out), 0).label("bytes_out"))
    if every_cache_status:
        statuses = (*CACHE_STATUSES, NO_CACHE_STATUS)
        cols += [_count_if(c.cache_status == s, _CACHE_PREFIX + s) for s in statuses]
    else:
        cols.append(_count_if(c.cache_status.in_(SERVED_FROM_CACHE), "served"))
        cols.append(_count_if(c.cache_status.in_(CACHE_MISSES), "misses"))
    return cols


def _counts_from(row: Any) -> Counts:
    m: dict[str, Any] = row._asdict()
    cache = {
        name.removeprefix(_CACHE_PREFIX): int(value or 0)
        for name, value in m.items()
        if name.startswith(_CACHE_PREFIX)
    }
    if cache:
        served = sum(cache[s] for s in SERVED_FROM_CACHE)
        misses = sum(cache[s] for s in CACHE_MISSES)
    else:
        served, misses = int(m["served"] or 0), int(m["misses"] or 0)
    avg = m["avg_latency"]
    return Counts(
        requests=int(m["requests"] or 0),
        errors=int(m["errors"] or 0),
        client_errors=int(m["client_errors"] or 0),
        rate_limited=int(m["rate_limited"] or 0),
        upstream_calls=int(m["upstream_calls"] or 0),
        bytes_in=int(m.get("bytes_in") or 0),
        bytes_out=int(m.get("bytes_out") or 0),
        served_from_cache=served,
        cache_lookups=served + misses,
        cache=cache,
        latency=Latency(avg=float(avg) if avg is not None else None),
    )


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _tune(session: AsyncSession) -> None:
    """Per-transaction planner settings for analytics reads on PostgreSQL (a no-op on SQLite).

    - force_custom_plan: asyncpg reuses prepared statements, and after five runs PostgreSQL may
      switch to a generic plan that cannot see how narrow the time range is; for a filter that
      matches few rows it then walks the whole table backwards by id (measured 8x slower).
    - work_mem: lets the percentile sorts of a day of logs run in memory instead of on disk.
    Both end with the transaction, so pooled connections are left as they were.
    """
    if is_postgres(session):
        await session.execute(
            select(
                func.set_config("plan_cache_mode", "force_custom_plan", True),
                func.set_config("work_mem", ANALYTICS_WORK_MEM, True),
            )
        )


def _pg_percentiles(value: ColumnElement[float]) -> ColumnElement[Sequence[Any]]:
    # One sort for all three: percentile_cont over an array of fractions returns an array.
    fractions = ",".join(repr(p) for p in PERCENTILES)
    return type_coerce(
        func.percentile_cont(literal_column(f"ARRAY[{fractions}]::float8[]")).within_group(value),
        ARRAY(Float),
    ).label("percentiles")


def _set_percentiles(latency: Latency, values: Sequence[float | None] | None) -> None:
    if values is None:
        return
    latency.p50, latency.p95, latency.p99 = (None if v is None else float(v) for v in values)


def interpolate_percentile(p: float, n: int, value_at_rank: dict[int, float]) -> float:
    """`percentile_cont(p)` of n sorted values, given the values at 1-based ranks around it.

    The same arithmetic as PostgreSQL (`float8_lerp`), so both backends agree to the last bit.
    """
    position = p * (n - 1)
    lo = math.floor(position)
    hi = math.ceil(position)
    first = value_at_rank[lo + 1]
    if hi == lo:
        return first
    return first + (value_at_rank[hi + 1] - first) * (position - lo)


async def _sqlite_percentiles(session: AsyncSession, rows: Select[Any]) -> dict[Any, list[float]]:
    """Group `g` -> [p50, p95, p99] of `v`, for a select of columns `g` and `v`."""
    src = rows.subquery()
    ranked = select(
        src.c.g,
        src.c.v,
        func.row_number().over(partition_by=src.c.g, order_by=src.c.v).label("rn"),
        func.count().over(partition_by=src.c.g).label("n"),
    ).subquery()
    wanted: list[ColumnElement[bool]] = []
    for p in PERCENTILES:
        # CAST truncates, which is floor here: ranks are never negative.
        lo = cast(literal(p, Float) * (ranked.c.n - 1), Integer) + 1
        wanted += [ranked.c.rn == lo, ranked.c.rn == lo + 1]
    query = select(ranked.c.g, ranked.c.n, ranked.c.rn, ranked.c.v).where(or_(*wanted))
    by_group: dict[Any, tuple[int, dict[int, float]]] = {}
    for g, n, rn, v in await session.execute(query):
        by_group.setdefault(g, (int(n), {}))[1][int(rn)] = float(v)
    return {
        g: [interpolate_percentile(p, n, ranks) for p in PERCENTILES]
        for g, (n, ranks) in by_group.items()
    }


# --- the queries ---------------------------------------------------------------------------------
# Where a query has independent parts, PostgreSQL gets them on separate connections so they run
# side by side: percentile_cont cannot use parallel workers, the plain counts can.
Sessions = Callable[[], AsyncSession]


async def _in_session(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[R]]) -> R:
    async with sessions() as session:
        await _tune(session)
        return await work(session)


async def _together(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run side by side. On a failure the others are cancelled and waited for (so no session is
    closed under a running query), then the first error is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _pair(a: Coroutine[Any, Any, A], b: Coroutine[Any, Any, B]) -> tuple[A, B]:
    first, second = await _together(a, b)
    return first, second


async def summary(sessions: Sessions, scope: LogScope) -> Counts:
    """Totals over the scope, with every cache status counted and latency percentiles."""
    conds = scope.conditions()
    counts_query = select(*_count_columns(every_cache_status=True)).where(*conds)

    async def counts(session: AsyncSession) -> Counts:
        return _counts_from((await session.execute(counts_query)).one())

    async def pg_percentiles(session: AsyncSession) -> Sequence[float | None] | None:
        query = select(_pg_percentiles(T.latency_ms)).where(*conds)
        values: Sequence[float | None] | None = await session.scalar(query)
        return values

    async with sessions() as session:
        await _tune(session)
        if is_postgres(session):
            result, values = await _pair(counts(session), _in_session(sessions, pg_percentiles))
            _set_percentiles(result.latency, values)
            return result
        result = await counts(session)
        if result.requests:
            rows = select(literal(0).label("g"), T.latency_ms.label("v")).where(*conds)
            _set_percentiles(result.latency, (await _sqlite_percentiles(session, rows)).get(0))
        return result


async def top_keys(sessions: Sessions, scope: LogScope, limit: int) -> list[KeyCounts]:
    """The keys with the most requests, busiest first, with their name and display prefix."""
    agg = (
        select(
            T.key_id,
            func.max(T.tenant_id).label("log_tenant_id"),
            func.max(T.ts).label("last_seen"),
            *_count_columns(with_bytes=False),
        )
        .where(*scope.conditions(), T.key_id.is_not(None))
        .group_by(T.key_id)
        .order_by(literal_column("requests").desc(), T.key_id)
        .limit(limit)
        .subquery()
    )
    query = _with_key_names(agg, agg.c.requests)

    async def run(session: AsyncSession) -> list[KeyCounts]:
        return [
            KeyCounts(
                key_id=row.key_id,
                tenant_id=row.tenant_id,
                tenant_name=row.tenant_name,
                name=row.name,
                key_prefix=row.key_prefix,
                last_seen=row.last_seen,
                counts=_counts_from(row),
            )
            for row in await session.execute(query)
        ]

    return await _in_session(sessions, run)


async def by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[GroupCounts]:
    """Per route name ("" = matched no route), busiest first, with latency percentiles."""
    conds = scope.conditions()
    counts_query = (
        select(T.route_name, *_count_columns(with_bytes=False))
        .where(*conds)
        .group_by(T.route_name)
        .order_by(literal_column("requests").desc(), T.route_name)
        .limit(limit)
    )

    async def counts(session: AsyncSession) -> list[GroupCounts]:
        return [
            GroupCounts(group=row.route_name, counts=_counts_from(row))
            for row in await session.execute(counts_query)
        ]

    async def pg_percentiles(session: AsyncSession) -> dict[Any, Sequence[float | None]]:
        # Every route, not only the busiest: which ones those are is not known yet.
        query = select(T.route_name, _pg_percentiles(T.latency_ms)).where(*conds)
        rows = await session.execute(query.group_by(T.route_name))
        return {route: values for route, values in rows}

    groups: list[GroupCounts]
    found: Mapping[Any, Sequence[float | None]]
    async with sessions() as session:
        await _tune(session)
        if is_postgres(session):
            groups, found = await _pair(counts(session), _in_session(sessions, pg_percentiles))
        else:
            groups = await counts(session)
            rows = select(T.route_name.label("g"), T.latency_ms.label("v")).where(
                *conds, T.route_name.in_([g.group for g in groups])
            )
            found = await _sqlite_percentiles(session, rows) if groups else {}
    for g in groups:
        _set_percentiles(g.counts.latency, found.get(g.group))
    return groups


@dataclass(slots=True)
class RouteCache:
    """Requests of one route by X-Cache value ("" = none)."""

    route: str
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())

    @property
    def served_from_cache(self) -> int:
        return sum(self.by_status.get(s, 0) for s in SERVED_FROM_CACHE)

    @property
    def cache_lookups(self) -> int:
        return self.served_from_cache + sum(self.by_status.get(s, 0) for s in CACHE_MISSES)


async def cache_by_route(sessions: Sessions, scope: LogScope, limit: int) -> list[RouteCache]:
    """Cache outcomes per route, busiest first.

    One count per (route, X-Cache value) rather than a filtered count per status: a single
    aggregate that PostgreSQL can split across parallel workers, measured ~40% cheaper.
    """
    query = (
        select(T.route_name, T.cache_status, func.count().label("n"))
        .where(*scope.conditions())
        .group_by(T.route_name, T.cache_status)
    )
    routes: dict[str, RouteCache] = {}
    async with sessions() as session:
        await _tune(session)
        rows = list(await session.execute(query))
    for route, status, n in rows:
        routes.setdefault(route, RouteCache(route)).by_status[status] = int(n)
    ranked = sorted(routes.values(), key=lambda r: (-r.requests, r.route))
    return ranked[:limit]


# PostgreSQL computes a series as this many time slices, each on its own connection.
SERIES_SLICES = 2


async def series(sessions: Sessions, scope: LogScope, bucket_seconds: int) -> list[GroupCounts]:
    """Counts and percentiles per time bucket; `group` is the bucket's start in epoch seconds.

    Buckets are `floor(epoch / bucket_seconds)`: whole-number arithmetic that means the same on
    both backends. Empty buckets are left out (the caller fills them).
    """
    async with sessions() as session:
        await _tune(session)
        if not is_postgres(session):
            return await _sqlite_series(session, scope, bucket_seconds)
        slices = _slices(scope, bucket_seconds, SERIES_SLICES)
        parts: list[list[GroupCounts]] = await _together(
            _pg_series(session, slices[0], bucket_seconds),
            *(
                _in_session(
                    sessions, partial(_pg_series, scope=part, bucket_seconds=bucket_seconds)
                )
                for part in slices[1:]
            ),
        )
    return [point for part in parts for point in part]


async def cache_overview(
    sessions: Sessions, scope: LogScope, limit: int, bucket_seconds: int | None
) -> tuple[list[RouteCache], list[GroupCounts]]:
    """`cache_by_route` and, unless `bucket_seconds` is None, `series`, side by side."""
    if bucket_seconds is None:
        return await cache_by_route(sessions, scope, limit), []
    return await _pair(
        cache_by_route(sessions, scope, limit), series(sessions, scope, bucket_seconds)
    )


def _slices(scope: LogScope, bucket_seconds: int, count: int) -> list[LogScope]:
    """`scope` cut into up to `count` consecutive parts, each a whole number of buckets."""
    first = int(scope.since.timestamp()) // bucket_seconds
    last = math.ceil(scope.until.timestamp() / bucket_seconds)
    step = max(1, math.ceil((last - first) / count))
    cuts = [
        datetime.fromtimestamp(b * bucket_seconds, UTC) for b in range(first + step, last, step)
    ]
    edges = [scope.since, *cuts, scope.until]
    return [replace(scope, since=a, until=b) for a, b in pairwise(edges)]


def _bucket(bucket_seconds: int) -> ColumnElement[int]:
    return (epoch_seconds(T.ts) // literal(bucket_seconds, BigInteger)).label("bucket")


def _series_query(scope: LogScope, bucket_seconds: int, *, pg: bool) -> Select[Any]:
    # Grouped through a subquery: PostgreSQL would not match a GROUP BY expression whose
    # bucket width is a separate bind parameter from the one in the select list.
    inner = (
        select(
            _bucket(bucket_seconds), T.status, T.cache_status, T.latency_ms, T.upstream_latency_ms
        )
        .where(*scope.conditions())
        .subquery()
    )
    c = inner.c
    cols = _count_columns(c, with_bytes=False)
    if pg:
        cols.append(_pg_percentiles(c.latency_ms))
    return select(c.bucket, *cols).group_by(c.bucket).order_by(c.bucket)


async def _pg_series(
    session: AsyncSession, scope: LogScope, bucket_seconds: int
) -> list[GroupCounts]:
    points = []
    for row in await session.execute(_series_query(scope, bucket_seconds, pg=True)):
        counts = _counts_from(row)
        _set_percentiles(counts.latency, row.percentiles)
        points.append(GroupCounts(group=int(row.bucket) * bucket_seconds, counts=counts))
    return points


async def _sqlite_series(
    session: AsyncSession, scope: LogScope, bucket_seconds: int
) -> list[GroupCounts]:
    points = [
        GroupCounts(group=int(row.bucket) * bucket_seconds, counts=_counts_from(row))
        for row in await session.execute(_series_query(scope, bucket_seconds, pg=False))
    ]
    if points:
        rows = select(_bucket(bucket_seconds).label("g"), T.latency_ms.label("v")).where(
            *scope.conditions()
        )
        found = await _sqlite_percentiles(session, rows)
        for point in points:
            _set_percentiles(point.counts.latency, found.get(point.group // bucket_seconds))
    return points


async def log_page(sessions: Sessions, q: LogQuery) -> list[dict[str, Any]]:
    """Up to `q.limit + 1` rows (the extra one tells the caller there is more).

    Newest first below `before_id`, or oldest first above `after_id` (a live tail).
    """
    conds: list[ColumnElement[bool]] = []
    if q.since is not None:
        conds.append(T.ts >= q.since)
    if q.until is not None:
        conds.append(T.ts < q.until)
    for column, value in (
        (T.route_name, q.route),
        (T.tenant_id, q.tenant_id),
        (T.key_id, q.key_id),
        (T.cache_status, q.cache_status),
        (T.method, q.method),
    ):
        if value is not None:
            conds.append(column == value)
    if q.status_min is not None:
        conds.append(T.status >= q.status_min)
    if q.status_max is not None:
        conds.append(T.status <= q.status_max)
    if q.path_prefix is not None:
        conds.append(T.path.startswith(q.path_prefix, autoescape=True))
    if q.request_id is not None:
        conds.append(T.request_id == q.request_id)
    if q.key_ids is not None:
        conds.append(T.key_id.in_(q.key_ids))
    query = select(*T).where(*conds).limit(q.limit + 1)
    if q.after_id is not None:
        query = query.where(T.id > q.after_id).order_by(T.id.asc())
    else:
        if q.before_id is not None:
            query = query.where(T.id < q.before_id)
        query = query.order_by(T.id.desc())
    async with sessions() as session:
        await _tune(session)
        return [dict(row._mapping) for row in await session.execute(query)]


def bucket_starts(since_epoch: int, until_epoch: float, bucket_seconds: int) -> Iterable[int]:
    """Start (epoch seconds) of every bucket overlapping `[since_epoch, until_epoch)`."""
    start = since_epoch - since_epoch % bucket_seconds
    while start < until_epoch:
        yield start
        start += bucket_seconds


# --- request detail, key search and refusals (the UI's log drawer and dashboard) ----------------
def _detail_query() -> Select[Any]:
    """Log rows with their key's name and prefix and their tenant's name (null once deleted)."""
    return (
        select(
            *T,
            ApiKey.name.label("key_name"),
            ApiKey.key_prefix.label("key_prefix"),
            Tenant.name.label("tenant_name"),
        )
        .outerjoin(ApiKey, ApiKey.id == T.key_id)
        .outerjoin(Tenant, Tenant.id == T.tenant_id)
    )


async def log_detail(
    sessions: Sessions, request_id: str, limit: int, *, log_id: int | None = None
) -> list[dict[str, Any]]:
    """Rows carrying `request_id`, newest first, at most `limit` (just the row `log_id` if given).

    A client may send the same X-Request-Id on many requests, so several rows can share one.
    Served by `ix_request_logs_request_id` (0010).
    """
    query = _detail_query().where(T.request_id == request_id)
    if log_id is not None:
        query = query.where(T.id == log_id)
    query = query.order_by(T.id.desc()).limit(limit)
    async with sessions() as session:
        await _tune(session)
        return [dict(row._mapping) for row in await session.execute(query)]


async def keys_matching(sessions: Sessions, text: str, limit: int) -> list[int]:
    """Ids of the keys whose name or display prefix starts with `text` (case-insensitive)."""
    pattern = text.lower()
    query = (
        select(ApiKey.id)
        .where(
            or_(
                func.lower(ApiKey.name).startswith(pattern, autoescape=True),
                func.lower(ApiKey.key_prefix).startswith(pattern, autoescape=True),
            )
        )
        .order_by(ApiKey.id)
        .limit(limit)
    )
    async with sessions() as session:
        return [int(key_id) for key_id in await session.scalars(query)]


@dataclass(slots=True)
class Refusals:
    """Requests and the 4xx answers among them; `group` is a bucket start or a key id."""

    group: Any
    requests: int = 0
    client_errors: int = 0
    unauthorized: int = 0
    forbidden: int = 0
    rate_limited: int = 0


def _refusal_columns(c: Any = T) -> list[ColumnElement[Any]]:
    return [
        func.count().label("requests"),
        _count_if(and_(c.status >= 400, c.status < 500), "client_errors"),
        _count_if(c.status == 401, "unauthorized"),
        _count_if(c.status == 403, "forbidden"),
        _count_if(c.status == 429, "rate_limited"),
    ]


def _refusals_from(group: Any, row: Any) -> Refusals:
    return Refusals(
        group=group,
        requests=int(row.requests or 0),
        client_errors=int(row.client_errors or 0),
        unauthorized=int(row.unauthorized or 0),
        forbidden=int(row.forbidden or 0),
        rate_limited=int(row.rate_limited or 0),
    )


async def refusal_series(
    sessions: Sessions, scope: LogScope, bucket_seconds: int
) -> list[Refusals]:
    """Per time bucket (`group` = start, epoch seconds); empty buckets are left out."""
    inner = select(_bucket(bucket_seconds), T.status).where(*scope.conditions()).subquery()
    query = (
        select(inner.c.bucket, *_refusal_columns(inner.c))
        .group_by(inner.c.bucket)
        .order_by(inner.c.bucket)
    )
    async with sessions() as session:
        await _tune(session)
        rows = list(await session.execute(query))
    return [_refusals_from(int(row.bucket) * bucket_seconds, row) for row in rows]


@dataclass(slots=True)
class KeyRefusals:
    refusals: Refusals
    tenant_id: int | None
    tenant_name: str | None
    name: str | None
    key_prefix: str | None


async def refusals_by_key(sessions: Sessions, scope: LogScope, limit: int) -> list[KeyRefusals]:
    """The keys with the most 4xx answers (keys with none are left out), most first."""
    agg = (
        select(T.key_id, func.max(T.tenant_id).label("log_tenant_id"), *_refusal_columns())
        .where(*scope.conditions(), T.key_id.is_not(None))
        .group_by(T.key_id)
        .having(func.count().filter(and_(T.status >= 400, T.status < 500)) > 0)
        .order_by(literal_column("client_errors").desc(), T.key_id)
        .limit(limit)
        .subquery()
    )
    query = _with_key_names(agg, agg.c.client_errors)
    async with sessions() as session:
        await _tune(session)
        rows = list(await session.execute(query))
    return [
        KeyRefusals(
            refusals=_refusals_from(int(row.key_id), row),
            tenant_id=row.tenant_id,
            tenant_name=row.tenant_name,
            name=row.name,
            key_prefix=row.key_prefix,
        )
        for row in rows
    ]


def _with_key_names(agg: Any, most: Any) -> Any:
    """`agg` (per key_id, with the log's `log_tenant_id`) joined to the key's name and prefix and
    its tenant's name, `most` first: the key's tenant as it is now, else as the log row had it
    (a deleted key)."""
    tenant_id = func.coalesce(ApiKey.tenant_id, agg.c.log_tenant_id)
    return (
        select(
            agg,
            tenant_id.label("tenant_id"),
            Tenant.name.label("tenant_name"),
            ApiKey.name,
            ApiKey.key_prefix,
        )
        .outerjoin(ApiKey, ApiKey.id == agg.c.key_id)
        .outerjoin(Tenant, Tenant.id == tenant_id)
        .order_by(most.desc(), agg.c.key_id)
    )
