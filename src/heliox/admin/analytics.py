"""/admin/analytics: traffic, errors, cache effectiveness and latency from the request logs.

Every endpoint reads a time range: `window` ("30s", "15m", "1h", "24h", "7d"; default 1h, ending
now) or explicit `since` (inclusive) / `until` (exclusive) ISO 8601 timestamps, which win over
`window`. Timestamps without an offset are UTC.

Cache hit rate is `served from cache / cache lookups`: HIT, STALE, UPDATING, REVALIDATED and
NEGATIVE were served from the cache; those plus MISS and EXPIRED were lookups. BYPASS (not
cacheable) and requests answered before the cache (no X-Cache) are not lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from heliox.admin.deps import MAX_INT32, MAX_INT64, MAX_PAGE_SIZE, AdminDep, AdminRoute
from heliox.admin.errors import NotFound, invalid_field
from heliox.db import analytics_queries as q
from heliox.db import analytics_reads as reads

router = APIRouter(prefix="/analytics", route_class=AdminRoute, tags=["analytics"])

DEFAULT_WINDOW = "1h"
MAX_WINDOW = timedelta(days=90)
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BUCKETS: dict[str, int] = {"10s": 10, "1m": 60, "5m": 300, "1h": 3600}
DEFAULT_BUCKET = "1m"
MAX_SERIES_POINTS = 2880
MAX_TOP = 100
MAX_ROUTES = 200
DEFAULT_LOG_PAGE = 100
# What the gateway accepts as a client's X-Request-Id (and what it generates): see gateway/app.py.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_KEY_MATCHES = 1000
MAX_SAME_REQUEST_ID = 20
_STATUS = re.compile(r"^([1-5])xx$|^([1-5][0-9][0-9])$")

Bucket = Literal["10s", "1m", "5m", "1h"]


def parse_window(value: str) -> timedelta:
    """'90s', '15m', '1h', '7d' -> timedelta; ValueError for anything else or over 90 days."""
    match = _WINDOW.match(value.strip().lower())
    if match is None:
        raise ValueError("must be a number followed by s, m, h or d, such as 15m, 1h or 7d")
    span = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if span > MAX_WINDOW:
        raise ValueError(f"may be at most {MAX_WINDOW.days}d")
    return span


# Bucket arithmetic is in Unix seconds; nothing is logged outside these years.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _utc(value: datetime, name: str) -> datetime:
    """`value` in UTC (naive means UTC), or a 422 for times no log row can have."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        value = EARLIEST  # an offset pushed it past year 1: certainly out of range
    if not EARLIEST <= value < LATEST:
        raise invalid_field(("query", name), "must be between 1970 and 9000")
    return value


@dataclass(frozen=True, slots=True)
class TimeRange:
    label: str
    since: datetime
    until: datetime

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()


def resolve_range(
    window: str | None, since: datetime | None, until: datetime | None, now: datetime
) -> TimeRange:
    """The range a request asks for; raises a 422 problem naming the bad parameter."""
    label = (window if window is not None else DEFAULT_WINDOW).strip().lower()
    try:
        span = parse_window(label)
    except ValueError as exc:
        raise invalid_field(("query", "window"), str(exc)) from None
    end = _utc(until, "until") if until is not None else now
    if since is not None:
        start = _utc(since, "since")
        label = "custom"
    else:
        start = end - span
    if start >= end:
        raise invalid_field(("query", "since"), "must be earlier than until")
    if end - start > MAX_WINDOW:
        raise invalid_field(("query", "since"), f"the range may span at most {MAX_WINDOW.days}d")
    return TimeRange(label=label, since=start, until=end)


def time_range(
    window: Annotated[
        str | None,
        Query(max_length=16, description="15m, 1h, 24h, 7d …; default 1h ending now"),
    ] = None,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601; default now")] = None,
) -> TimeRange:
    return resolve_range(window, since, until, datetime.now(UTC))


RangeDep = Annotated[TimeRange, Depends(time_range)]
# No control characters: PostgreSQL refuses NUL in text, and no route, method or path has any.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
RouteFilter = Annotated[
    str | None, Query(max_length=100, pattern=PRINTABLE, description="route name")
]
TenantFilter = Annotated[int | None, Query(ge=1, le=MAX_INT32)]
KeyFilter = Annotated[int | None, Query(ge=1, le=MAX_INT32)]
TopLimit = Annotated[int, Query(ge=1, le=MAX_TOP)]


# --- response bodies -----------------------------------------------------------------------------
class RangeOut(BaseModel):
    window: str = Field(description='the `window` asked for, or "custom" when `since` was given')
    since: datetime
    until: datetime
    window_seconds: float


class LatencyOut(BaseModel):
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class CacheOut(BaseModel):
    hit: int
    miss: int
    stale: int
    updating: int
    revalidated: int
    negative: int
    bypass: int
    expired: int
    none: int = Field(description="answered before the cache was consulted (no X-Cache)")
    other: int = Field(description="any other X-Cache value")
    served_from_cache: int
    lookups: int
    hit_rate: float | None = Field(description="served_from_cache / lookups; null without lookups")


class SummaryOut(RangeOut):
    requests: int
    errors: int = Field(description="status >= 500")
    client_errors: int = Field(description="status 4xx, 429 included")
    error_rate: float | None = Field(description="errors / requests")
    rate_limited: int = Field(description="status 429")
    cache: CacheOut
    latency_ms: LatencyOut
    upstream_calls: int = Field(description="requests that called the upstream")
    upstream_calls_saved: int = Field(description="requests - upstream_calls")
    bytes_in: int
    bytes_out: int
    requests_per_second: float


class TopKeyOut(BaseModel):
    key_id: int
    tenant_id: int | None
    tenant_name: str | None
    name: str | None = Field(description="null when the key has been deleted")
    key_prefix: str | None
    requests: int
    errors: int
    client_errors: int
    rate_limited: int
    error_rate: float | None
    hit_rate: float | None
    avg_latency_ms: float | None
    last_seen: datetime | None


class TopKeysOut(RangeOut):
    items: list[TopKeyOut]


class TopRouteOut(BaseModel):
    route_name: str = Field(description='"" for requests that matched no route')
    requests: int
    errors: int
    client_errors: int
    rate_limited: int
    error_rate: float | None
    hit_rate: float | None
    upstream_calls: int
    latency_ms: LatencyOut


class TopRoutesOut(RangeOut):
    items: list[TopRouteOut]


class RouteCacheOut(BaseModel):
    route: str
    requests: int
    hits: int
    misses: int = Field(description="MISS and EXPIRED")
    stale: int
    updating: int
    revalidated: int
    negative: int
    bypass: int
    served_from_cache: int
    lookups: int
    hit_rate: float | None


class SeriesPoint(BaseModel):
    ts: datetime = Field(description="start of the bucket")
    seconds: float = Field(
        description="part of the bucket inside the range (the last may be short)"
    )
    requests: int
    requests_per_second: float
    hits: int = Field(description="served from cache")
    lookups: int
    hit_rate: float | None
    errors: int
    client_errors: int
    rate_limited: int
    upstream_calls: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class CacheHitRateOut(RangeOut):
    bucket: str
    bucket_seconds: int
    by_route: list[RouteCacheOut]
    series: list[SeriesPoint]


class LogOut(BaseModel):
    id: int
    ts: datetime
    request_id: str
    tenant_id: int | None
    key_id: int | None
    route_id: int | None
    route_name: str
    method: str
    path: str
    status: int
    cache_status: str
    latency_ms: float
    upstream_latency_ms: float | None
    bytes_in: int
    bytes_out: int
    client_ip: str
    user_agent: str
    error: str | None = Field(
        None, description="why the upstream failed (its address and the cause), if it did"
    )


class SameRequestIdOut(BaseModel):
    id: int
    ts: datetime
    status: int
    method: str
    path: str


class LogDetailOut(LogOut):
    cache_key: str | None = Field(
        None,
        description="the cache entry's key, as in the Cache-Status field (purge by it); null "
        "where the route does not cache or the request never reached the cache",
    )
    upstream_status: int | None = Field(
        None, description="the upstream's own status, when this request called it and it answered"
    )
    refused_by: str | None = Field(
        None,
        description='the limit that refused the request, as the `limit` of its 429: "rate" '
        "(the rate limit; a burst and the steady rate both empty the same token bucket, so they "
        'are not told apart), "daily_quota", "monthly_quota", "blocked" (an abuse block); or '
        '"bad_key" (too many requests without a valid key from the address), "unavailable" '
        "(the limiter's store was unreachable and the route fails closed); null when admitted",
    )
    refusal: dict[str, Any] | None = Field(
        None,
        description="that limit's numbers, as the 429 gave them (quota, window_seconds, "
        "remaining, retry_after, reset_after, retry_at, reset_at), with the limit's rate, burst, "
        "algorithm, whose counter it is (`per`: key, key_route, address) and a block's "
        "blocked_until",
    )
    key_name: str | None = Field(description="null without a key, or once the key is deleted")
    key_prefix: str | None = Field(description="the key's display prefix, never key material")
    tenant_name: str | None
    same_request_id: list[SameRequestIdOut] = Field(
        description="other rows carrying the same request id (a client may reuse its "
        "X-Request-Id), newest first; open one with `log_id`"
    )
    more_same_request_id: bool = Field(
        description=f"more than {MAX_SAME_REQUEST_ID} other rows share the request id"
    )


class RefusalPoint(BaseModel):
    ts: datetime = Field(description="start of the bucket")
    seconds: float = Field(description="part of the bucket inside the range")
    requests: int
    client_errors: int = Field(description="4xx answers")
    unauthorized: int = Field(description="401: missing or unknown API key")
    forbidden: int = Field(description="403")
    rate_limited: int = Field(description="429: a rate limit, a quota or a block")


class KeyRefusalOut(BaseModel):
    key_id: int
    tenant_id: int | None
    tenant_name: str | None
    name: str | None = Field(description="null when the key has been deleted")
    key_prefix: str | None
    requests: int
    client_errors: int
    forbidden: int
    rate_limited: int
    refused_rate: float | None = Field(description="client_errors / requests")


class RefusalsOut(RangeOut):
    bucket: str
    bucket_seconds: int
    series: list[RefusalPoint]
    by_key: list[KeyRefusalOut]


class LogPage(BaseModel):
    items: list[LogOut]
    next_cursor: int | None = Field(
        description="newest-first pages: pass as `before_id` for older rows (null at the end); "
        "tail pages (`after_id`): pass as `after_id` on the next poll"
    )
    has_more: bool = Field(description="more rows match beyond this page right now")


# --- helpers -------------------------------------------------------------------------------------
def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _latency(latency: q.Latency) -> LatencyOut:
    return LatencyOut(
        avg=_ms(latency.avg), p50=_ms(latency.p50), p95=_ms(latency.p95), p99=_ms(latency.p99)
    )


def _range_fields(r: TimeRange) -> dict[str, Any]:
    return {"window": r.label, "since": r.since, "until": r.until, "window_seconds": r.seconds}


def _scope(
    r: TimeRange,
    route: str | None = None,
    tenant_id: int | None = None,
    key_id: int | None = None,
) -> q.LogScope:
    return q.LogScope(since=r.since, until=r.until, route=route, tenant_id=tenant_id, key_id=key_id)


def _cache_out(c: q.Counts) -> CacheOut:
    known = sum(c.cache.get(s, 0) for s in (*q.CACHE_STATUSES, q.NO_CACHE_STATUS))
    return CacheOut(
        hit=c.cache.get("HIT", 0),
        miss=c.cache.get("MISS", 0),
        stale=c.cache.get("STALE", 0),
        updating=c.cache.get("UPDATING", 0),
        revalidated=c.cache.get("REVALIDATED", 0),
        negative=c.cache.get("NEGATIVE", 0),
        bypass=c.cache.get("BYPASS", 0),
        expired=c.cache.get("EXPIRED", 0),
        none=c.cache.get(q.NO_CACHE_STATUS, 0),
        other=c.requests - known,
        served_from_cache=c.served_from_cache,
        lookups=c.cache_lookups,
        hit_rate=_ratio(c.served_from_cache, c.cache_lookups),
    )


# --- endpoints -----------------------------------------------------------------------------------
@router.get("/summary")
async def summary(
    admin: AdminDep,
    r: RangeDep,
    route: RouteFilter = None,
    tenant_id: TenantFilter = None,
    key_id: KeyFilter = None,
) -> SummaryOut:
    """Totals for the dashboard: traffic, errors, cache, latency, upstream calls saved."""
    c = await reads.summary(admin.read, _scope(r, route, tenant_id, key_id))
    return SummaryOut(
        **_range_fields(r),
        requests=c.requests,
        errors=c.errors,
        client_errors=c.client_errors,
        error_rate=_ratio(c.errors, c.requests),
        rate_limited=c.rate_limited,
        cache=_cache_out(c),
        latency_ms=_latency(c.latency),
        upstream_calls=c.upstream_calls,
        upstream_calls_saved=c.requests - c.upstream_calls,
        bytes_in=c.bytes_in,
        bytes_out=c.bytes_out,
        requests_per_second=round(c.requests / r.seconds, 3),
    )


@router.get("/top-keys")
async def top_keys(
    admin: AdminDep,
    r: RangeDep,
    limit: TopLimit = 10,
    route: RouteFilter = None,
    tenant_id: TenantFilter = None,
) -> TopKeysOut:
    """The busiest API keys (requests without a key are left out). Never shows key material."""
    rows = await reads.top_keys(admin.read, _scope(r, route, tenant_id), limit)
    items = [
        TopKeyOut(
            key_id=k.key_id,
            tenant_id=k.tenant_id,
            tenant_name=k.tenant_name,
            name=k.name,
            key_prefix=k.key_prefix,
            requests=k.counts.requests,
            errors=k.counts.errors,
            client_errors=k.counts.client_errors,
            rate_limited=k.counts.rate_limited,
            error_rate=_ratio(k.counts.errors, k.counts.requests),
            hit_rate=_ratio(k.counts.served_from_cache, k.counts.cache_lookups),
            avg_latency_ms=_ms(k.counts.latency.avg),
            last_seen=k.last_seen,
        )
        for k in rows
    ]
    return TopKeysOut(**_range_fields(r), items=items)


@router.get("/top-routes")
async def top_routes(
    admin: AdminDep,
    r: RangeDep,
    limit: TopLimit = 10,
    tenant_id: TenantFilter = None,
    key_id: KeyFilter = None,
) -> TopRoutesOut:
    """The busiest routes, with error and cache hit rates and latency percentiles."""
    groups = await reads.by_route(admin.read, _scope(r, None, tenant_id, key_id), limit)
    items = [
        TopRouteOut(
            route_name=g.group,
            requests=g.counts.requests,
            errors=g.counts.errors,
            client_errors=g.counts.client_errors,
            rate_limited=g.counts.rate_limited,
            error_rate=_ratio(g.counts.errors, g.counts.requests),
            hit_rate=_ratio(g.counts.served_from_cache, g.counts.cache_lookups),
            upstream_calls=g.counts.upstream_calls,
            latency_ms=_latency(g.counts.latency),
        )
        for g in groups
    ]
    return TopRoutesOut(**_range_fields(r), items=items)


def _choose_bucket(requested: str | None, r: TimeRange) -> tuple[str, int]:
    if requested is not None:
        seconds = BUCKETS[requested]
        if r.seconds / seconds > MAX_SERIES_POINTS:
            raise invalid_field(
                ("query", "bucket"),
                f"{requested} buckets over this range exceed {MAX_SERIES_POINTS} points; "
                "choose a wider bucket or a shorter window",
            )
        return requested, seconds
    # Unspecified: the default, widened until the series fits.
    widths = [name for name, width in BUCKETS.items() if width >= BUCKETS[DEFAULT_BUCKET]]
    for name in widths:
        if r.seconds / BUCKETS[name] <= MAX_SERIES_POINTS:
            return name, BUCKETS[name]
    return widths[-1], BUCKETS[widths[-1]]


@router.get("/cache-hit-rate")
async def cache_hit_rate(
    admin: AdminDep,
    r: RangeDep,
    bucket: Annotated[
        Bucket | None, Query(description="series resolution; default 1m (wider for long ranges)")
    ] = None,
    route: RouteFilter = None,
    tenant_id: TenantFilter = None,
    key_id: KeyFilter = None,
    series: Annotated[
        bool, Query(description="false: by_route only, much cheaper over long windows")
    ] = True,
) -> CacheHitRateOut:
    """Cache outcomes per route, and a time series for the dashboard's charts.

    The range is widened back to a bucket boundary so the first bucket is whole; the last one
    is cut at `until` (see each point's `seconds`). Over ranges longer than an hour every endpoint
    reads the per-minute/hour/day roll-ups: counts and averages exact, percentiles from a latency
    histogram (within one bucket, 26 %); shorter ranges and 10 s buckets are exact.
    """
    name, width = _choose_bucket(bucket, r)
    since_epoch = int(r.since.timestamp()) // width * width
    aligned = TimeRange(r.label, datetime.fromtimestamp(since_epoch, UTC), r.until)
    scope = _scope(aligned, route, tenant_id, key_id)
    routes, points = await reads.cache_overview(
        admin.read, scope, MAX_ROUTES, width if series else None
    )
    by_route = [
        RouteCacheOut(
            route=r.route,
            requests=r.requests,
            hits=r.by_status.get("HIT", 0),
            misses=sum(r.by_status.get(s, 0) for s in q.CACHE_MISSES),
            stale=r.by_status.get("STALE", 0),
            updating=r.by_status.get("UPDATING", 0),
            revalidated=r.by_status.get("REVALIDATED", 0),
            negative=r.by_status.get("NEGATIVE", 0),
            bypass=r.by_status.get("BYPASS", 0),
            served_from_cache=r.served_from_cache,
            lookups=r.cache_lookups,
            hit_rate=_ratio(r.served_from_cache, r.cache_lookups),
        )
        for r in routes
    ]
    found = {p.group: p.counts for p in points}
    until_epoch = aligned.until.timestamp()
    series_points = []
    starts = q.bucket_starts(since_epoch, until_epoch, width) if series else ()
    for start in starts:
        c = found.get(start) or q.Counts()
        seconds = min(start + width, until_epoch) - start
        series_points.append(
            SeriesPoint(
                ts=datetime.fromtimestamp(start, UTC),
                seconds=round(seconds, 3),
                requests=c.requests,
                requests_per_second=round(c.requests / seconds, 3),
                hits=c.served_from_cache,
                lookups=c.cache_lookups,
                hit_rate=_ratio(c.served_from_cache, c.cache_lookups),
                errors=c.errors,
                client_errors=c.client_errors,
                rate_limited=c.rate_limited,
                upstream_calls=c.upstream_calls,
                avg_ms=_ms(c.latency.avg),
                p50_ms=_ms(c.latency.p50),
                p95_ms=_ms(c.latency.p95),
                p99_ms=_ms(c.latency.p99),
            )
        )
    return CacheHitRateOut(
        **_range_fields(aligned),
        bucket=name,
        bucket_seconds=width,
        by_route=by_route,
        series=series_points,
    )


def _status_bounds(status: str | None) -> tuple[int | None, int | None]:
    if status is None:
        return None, None
    match = _STATUS.match(status.strip().lower())
    if match is None:
        raise invalid_field(("query", "status"), "must be a status code such as 404, or 4xx/5xx")
    if match.group(1):
        hundreds = int(match.group(1)) * 100
        return hundreds, hundreds + 99
    exact = int(match.group(2))
    return exact, exact


def _log_bounds(
    window: str | None, since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """Logs are unbounded by default (a tail must see rows still arriving); `window` bounds
    them to the recent past, `since`/`until` explicitly."""
    start = _utc(since, "since") if since is not None else None
    end = _utc(until, "until") if until is not None else None
    if start is None and window is not None:
        try:
            start = now - parse_window(window)
        except ValueError as exc:
            raise invalid_field(("query", "window"), str(exc)) from None
    if start is not None and end is not None and start >= end:
        raise invalid_field(("query", "since"), "must be earlier than until")
    return start, end


@router.get("/logs")
async def logs(
    admin: AdminDep,
    route: RouteFilter = None,
    tenant_id: TenantFilter = None,
    key_id: KeyFilter = None,
    status: Annotated[str | None, Query(max_length=8, description="404, or 4xx / 5xx")] = None,
    cache_status: Annotated[
        str | None,
        Query(max_length=16, pattern=PRINTABLE, description='X-Cache value; "none" = no X-Cache'),
    ] = None,
    method: Annotated[str | None, Query(max_length=16, pattern=PRINTABLE)] = None,
    path_prefix: Annotated[str | None, Query(max_length=2000, pattern=PRINTABLE)] = None,
    window: Annotated[
        str | None, Query(max_length=16, description="only rows this recent (e.g. 1h)")
    ] = None,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
    before_id: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="next_cursor of the previous page")
    ] = None,
    after_id: Annotated[
        int | None,
        Query(ge=0, le=MAX_INT64, description="live tail: rows with a larger id, oldest first"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_LOG_PAGE,
    request_id: Annotated[
        str | None,
        Query(
            max_length=128,
            pattern=PRINTABLE,
            description="exact X-Request-Id (the gateway's, or the one the client sent)",
        ),
    ] = None,
    key: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=PRINTABLE,
            description="key name or display prefix: rows of every key whose name or prefix "
            "starts with this (case-insensitive)",
        ),
    ] = None,
) -> LogPage:
    """Raw request log rows, newest first (or oldest first above `after_id` for a live tail).

    Rows carry the key's id, never key material. Ids grow in the order rows are written. With
    several gateway instances writing at once, one batch can commit just after another that got
    higher ids; a tail that must not miss such rows polls with `after_id` a little behind the
    last id it showed and skips ids it has already seen.
    """
    if before_id is not None and after_id is not None:
        raise invalid_field(("query", "after_id"), "give before_id or after_id, not both")
    lo, hi = _status_bounds(status)
    start, end = _log_bounds(window, since, until, datetime.now(UTC))
    key_ids: tuple[int, ...] | None = None
    if key is not None and key.strip():
        key_ids = tuple(await q.keys_matching(admin.read, key.strip(), MAX_KEY_MATCHES))
        if not key_ids:
            return LogPage(items=[], next_cursor=after_id, has_more=False)
    cache_value = None
    if cache_status is not None:
        cache_value = cache_status.strip().upper()
        if cache_value == "NONE":
            cache_value = q.NO_CACHE_STATUS
    query = q.LogQuery(
        limit=limit,
        since=start,
        until=end,
        route=route,
        tenant_id=tenant_id,
        key_id=key_id,
        status_min=lo,
        status_max=hi,
        cache_status=cache_value,
        method=method.strip().upper() if method is not None else None,
        path_prefix=path_prefix or None,
        before_id=before_id,
        after_id=after_id,
        request_id=request_id.strip() if request_id and request_id.strip() else None,
        key_ids=key_ids,
    )
    rows = await q.log_page(admin.read, query)
    has_more = len(rows) > limit
    items = [LogOut.model_validate(row) for row in rows[:limit]]
    if after_id is not None:
        cursor: int | None = items[-1].id if items else after_id
    else:
        cursor = items[-1].id if has_more else None
    return LogPage(items=items, next_cursor=cursor, has_more=has_more)


@router.get(
    "/logs/{request_id}",
    responses={404: {"description": "no log row carries this request id"}},
)
async def log_detail(
    admin: AdminDep,
    request_id: Annotated[
        str,
        Path(
            pattern=REQUEST_ID_PATTERN,
            description="the X-Request-Id the gateway answered with",
        ),
    ],
    log_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_INT64, description="which row, when several share the request id"),
    ] = None,
) -> LogDetailOut:
    """One request as its log row holds it, with its key's name and its tenant's.

    The gateway's own request ids are unique. A client's X-Request-Id need not be: when several
    rows carry it, the newest is answered (or the one `log_id` names) and the others are listed
    in `same_request_id`. Never shows key material.
    """
    if log_id is not None:
        rows = await q.log_detail(admin.read, request_id, 1, log_id=log_id)
        if not rows:
            raise NotFound("request log row", f"{log_id} and request id {request_id}")
        others = await q.log_detail(admin.read, request_id, MAX_SAME_REQUEST_ID + 2)
        row = rows[0]
    else:
        others = await q.log_detail(admin.read, request_id, MAX_SAME_REQUEST_ID + 1)
        if not others:
            raise NotFound("request", request_id)
        row = others[0]
    same = [o for o in others if o["id"] != row["id"]]
    return LogDetailOut.model_validate(
        {
            **row,
            "same_request_id": [
                SameRequestIdOut.model_validate(o) for o in same[:MAX_SAME_REQUEST_ID]
            ],
            "more_same_request_id": len(same) > MAX_SAME_REQUEST_ID,
        }
    )


REFUSALS_BUCKETS: dict[str, int] = {"1m": 60, "5m": 300, "1h": 3600}


@router.get("/refusals")
async def refusals(
    admin: AdminDep,
    r: RangeDep,
    bucket: Annotated[
        Literal["1m", "5m", "1h"] | None,
        Query(description="series resolution; default 1m (wider for long ranges)"),
    ] = None,
    limit: TopLimit = 10,
    route: RouteFilter = None,
    tenant_id: TenantFilter = None,
) -> RefusalsOut:
    """4xx answers over time (401, 403 and 429 apart) and the keys refused most.

    A 429 is a rate limit, a daily or monthly quota or an abuse block; 401s mostly come without
    a known key, so they show in the series but rarely per key.
    """
    name, width = (
        _choose_bucket(bucket, r) if bucket is None else (bucket, REFUSALS_BUCKETS[bucket])
    )
    if bucket is not None and r.seconds / width > MAX_SERIES_POINTS:
        raise invalid_field(
            ("query", "bucket"),
            f"{bucket} buckets over this range exceed {MAX_SERIES_POINTS} points; "
            "choose a wider bucket or a shorter window",
        )
    since_epoch = int(r.since.timestamp()) // width * width
    aligned = TimeRange(r.label, datetime.fromtimestamp(since_epoch, UTC), r.until)
    scope = _scope(aligned, route, tenant_id)
    found = {p.group: p for p in await q.refusal_series(admin.read, scope, width)}
    keys = await q.refusals_by_key(admin.read, scope, limit)
    until_epoch = aligned.until.timestamp()
    series = []
    for start in q.bucket_starts(since_epoch, until_epoch, width):
        p = found.get(start) or q.Refusals(group=start)
        series.append(
            RefusalPoint(
                ts=datetime.fromtimestamp(start, UTC),
                seconds=round(min(start + width, until_epoch) - start, 3),
                requests=p.requests,
                client_errors=p.client_errors,
                unauthorized=p.unauthorized,
                forbidden=p.forbidden,
                rate_limited=p.rate_limited,
            )
        )
    by_key = [
        KeyRefusalOut(
            key_id=k.refusals.group,
            tenant_id=k.tenant_id,
            tenant_name=k.tenant_name,
            name=k.name,
            key_prefix=k.key_prefix,
            requests=k.refusals.requests,
            client_errors=k.refusals.client_errors,
            forbidden=k.refusals.forbidden,
            rate_limited=k.refusals.rate_limited,
            refused_rate=_ratio(k.refusals.client_errors, k.refusals.requests),
        )
        for k in keys
    ]
    return RefusalsOut(
        **_range_fields(aligned), bucket=name, bucket_seconds=width, series=series, by_key=by_key
    )
