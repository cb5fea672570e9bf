"""What a cache fill needs besides the decisions in `heliox.core.freshness`: the upstream request
it sends, the entry it builds, and the cache's I/O with its failure handling.

Every store, negative-cache and lock call goes through `CacheIO`, which turns a Redis failure
into "nothing there" (counted as `redis_errors`): with Redis down the cache degrades to misses
and requests are still answered; redis-py reconnects by itself once Redis is back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from heliox.core.cachecontrol import response_tags
from heliox.core.cachekey import cache_key, uri_key, vary_values
from heliox.core.freshness import (
    conditional_headers,
    entry_times,
    freshen_headers,
    headers_to_store,
    initial_age,
)
from heliox.core.headers import cache_fill_forwarded
from heliox.gateway.cache_responses import gateway_owned
from heliox.gateway.exchange import ProxyRequest
from heliox.gateway.upstream_client import UpstreamResponse
from heliox.state.cache import CacheEntry
from heliox.state.lock_redis import RedisLocks

__all__ = [
    "CacheIO",
    "entry_key",
    "fill_headers",
    "freshened",
    "new_entry",
    "tenant_of",
]

log = logging.getLogger("heliox.cache")

Headers = Sequence[tuple[bytes, bytes]]

# The client's own preconditions and ranges never reach the upstream on a fill: the cache wants
# the whole, unconditional representation (or a 304 against its own validators), and answers
# the client's conditions itself.
_CLIENT_PRECONDITIONS = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)
_UNSTORED = frozenset({b"content-length"})  # recomputed from the stored body when served
_REDIS_FAILURES = (RedisError, OSError)


def _kept(name: bytes) -> bool:
    return name not in _UNSTORED and not gateway_owned(name)


def tenant_of(req: ProxyRequest) -> int | None:
    """The tenant whose entries the request sees: None when the route's cache is shared."""
    policy = req.route.cache_policy
    return None if policy is None or policy.shared else req.tenant_id


def entry_key(req: ProxyRequest) -> str:
    """The cache key of a GET/HEAD request (vary values as the upstream sees them)."""
    policy = req.route.cache_policy
    names = policy.vary_headers if policy is not None else ()
    vary = vary_values(names, req.lookup_headers) if names else []
    return cache_key("GET", req.route.name, req.path, req.raw_query, vary, tenant_of(req))


def fill_headers(req: ProxyRequest, entry: CacheEntry | None) -> list[tuple[bytes, bytes]]:
    """The upstream request headers of a fill: of the client's, only those the cache key holds
    or that cannot shape a stored answer unnoticed (`cache_fill_forwarded`), never its
    preconditions or Range; plus the gateway's own, and the entry's validators when
    revalidating it (RFC 9111 §4.3.1)."""
    policy = req.route.cache_policy
    keep = cache_fill_forwarded(policy.vary_headers if policy is not None else ())
    out = [
        (name, value)
        for name, value in req.kept_headers(keep)
        if name not in _CLIENT_PRECONDITIONS and name != b"range"
    ]
    if entry is not None:
        out.extend(conditional_headers(entry.headers))
    return out


def new_entry(
    req: ProxyRequest, status: int, headers: Headers, body: bytes, now: float
) -> CacheEntry:
    """The entry for an upstream response received at `now` (already judged storable)."""
    policy = req.route.cache_policy
    assert policy is not None
    fresh_until, stale_until, error_until = entry_times(policy, status, headers, now)
    return CacheEntry(
        status=status,
        headers=[(n, v) for n, v in headers_to_store(headers) if _kept(n)],
        body=body,
        stored_at=now,
        fresh_until=fresh_until,
        stale_until=stale_until,
        error_until=error_until,
        uri_key=uri_key(req.route.name, req.path, req.raw_query),
        route=req.route.name,
        tenant_id=tenant_of(req),
        tags=response_tags(headers),
        path=req.path,
        age_at_store=initial_age(headers),
    )


def freshened(req: ProxyRequest, entry: CacheEntry, headers_304: Headers, now: float) -> CacheEntry:
    """`entry` updated by a 304 received at `now` (RFC 9111 §4.3.4)."""
    policy = req.route.cache_policy
    assert policy is not None
    headers = [(n, v) for n, v in freshen_headers(entry.headers, headers_304) if _kept(n)]
    fresh_until, stale_until, error_until = entry_times(policy, entry.status, headers, now)
    return dataclasses.replace(
        entry,
        headers=headers,
        stored_at=now,
        fresh_until=fresh_until,
        stale_until=stale_until,
        error_until=error_until,
        age_at_store=initial_age(headers_304),
    )


class CacheIO:
    """The cache's store, negative cache, locks and upstream calls, failing soft on Redis."""

    def __init__(self, runtime: Any, locks: RedisLocks | None) -> None:
        self.runtime = runtime
        self.locks = locks

    def failed(self, what: str, exc: BaseException) -> None:
        self.runtime.metrics.count("redis_errors")
        log.debug("cache %s failed: %r", what, exc)

    async def get(self, key: str) -> CacheEntry | None:
        try:
            entry: CacheEntry | None = await self.runtime.cache.get(key)
        except _REDIS_FAILURES as exc:
            self.failed("read", exc)
            return None
        return entry

    async def put(self, key: str, entry: CacheEntry, now: float) -> bool:
        try:
            await self.runtime.cache.set(key, entry, now)
        except _REDIS_FAILURES as exc:
            self.failed("write", exc)
            return False
        return True

    async def invalidate(self, req: ProxyRequest) -> int:
        """Drop the entries of the request's URI that its tenant is served (its own and the
        shared ones: another tenant's entries are none of its writes' business), and the
        route's remembered 404s (§4.4)."""
        purged = 0
        try:
            purged = await self.runtime.cache.invalidate(
                uri_key(req.route.name, req.path, req.raw_query), req.tenant_id
            )
        except _REDIS_FAILURES as exc:
            self.failed("invalidation", exc)
        await self.negative_clear(req.route.name)
        return purged

    async def negative_has(self, route: str, key: str, now: float) -> bool:
        try:
            return bool(await self.runtime.negative.might_contain(route, key, now))
        except _REDIS_FAILURES as exc:
            self.failed("negative lookup", exc)
            return False

    async def negative_add(self, route: str, key: str, now: float) -> None:
        try:
            await self.runtime.negative.add(route, key, now)
        except _REDIS_FAILURES as exc:
            self.failed("negative add", exc)

    async def negative_clear(self, route: str) -> None:
        try:
            await self.runtime.negative.clear(route)
        except _REDIS_FAILURES as exc:
            self.failed("negative clear", exc)

    async def lock(self, key: str, ttl: float) -> str | None:
        """The owner token; "" when there is no shared lock to take (no Redis, or Redis failing:
        this process fills on its own); None when another instance holds it."""
        if self.locks is None:
            return ""
        try:
            return await self.locks.acquire(key, round(ttl * 1000))
        except _REDIS_FAILURES as exc:
            self.failed("lock", exc)
            return ""

    async def unlock(self, key: str, token: str) -> None:
        if self.locks is None or not token:
            return
        try:
            await self.locks.release(key, token)
        except _REDIS_FAILURES as exc:
            self.failed("unlock", exc)

    async def fetch(
        self,
        req: ProxyRequest,
        headers: list[tuple[bytes, bytes]],
        *,
        method: str = "GET",
        background: bool = False,
    ) -> UpstreamResponse:
        """Ask the upstream for the request's target (raises UpstreamError); times the call."""
        t0 = time.perf_counter()
        # A fill that others wait on counts against the key of the request that started it.
        resp: UpstreamResponse = await self.runtime.upstream.request(
            method,
            req.target,
            headers,
            None,
            timeout=req.timeout,
            route=req.route,
            key_id=req.key_id,
        )
        seconds = time.perf_counter() - t0
        if background:
            # No request records it: count the call so gateway and upstream totals agree.
            self.runtime.metrics.upstream_latency[req.route.name].observe(seconds)
        else:
            req.ex.upstream_seconds = seconds
        return resp
