"""What a cache fill needs besides the decisions in `heliox.core.freshness`: the upstream request
it sends, the entry it builds, and the cache's I/O with its failure handling.

Every store, negative-cache and lock call goes through `CacheIO`, which turns a backend failure
(`CacheUnavailable`, raised by the Redis stores) into "nothing there" (counted as `redis_errors`):
with Redis down the cache degrades to misses and requests are still answered; redis-py
reconnects by itself once Redis is back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from heliox.core.cache_engine import keep_until
from heliox.core.cachecontrol import joined, response_tags
from heliox.core.cachekey import cache_key, uri_key, vary_values
from heliox.core.freshness import (
    conditional_headers,
    entry_times,
    freshen_headers,
    headers_to_store,
    initial_age,
)
from heliox.core.headers import cache_fill_forwarded, header_value
from heliox.core.paths import BadPath, parse_gateway_path
from heliox.core.variants import (
    ACCEPT_ENCODING,
    VariantIndex,
    accepts_coding,
    added,
    content_coding,
    forwarded_accept_encoding,
    response_vary,
    select_coding,
    variant_vary,
)
from heliox.gateway.cache_responses import gateway_owned
from heliox.gateway.coalescing import PASSED, STORED, FillNotices
from heliox.gateway.exchange import ProxyRequest
from heliox.net.upstream_client import UpstreamResponse
from heliox.runtime import CacheDeps
from heliox.snapshot import RouteConfig
from heliox.state.cache import CacheEntry, CacheUnavailable
from heliox.state.lock_redis import RedisLocks

__all__ = [
    "CacheIO",
    "entry_key",
    "fill_headers",
    "freshened",
    "index_record",
    "new_entry",
    "route_target",
    "tenant_of",
    "variant_index",
    "variant_key",
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
_MEMO_SIZE = 4096  # URLs (and fills in progress) whose variant names this process remembers


def _kept(name: bytes) -> bool:
    return name not in _UNSTORED and not gateway_owned(name)


def tenant_of(req: ProxyRequest) -> int | None:
    """The tenant whose entries the request sees: None when the route's cache is shared."""
    policy = req.route.cache_policy
    return None if policy is None or policy.shared else req.tenant_id


# Request -> entry key, for the URLs this process serves most: the key is a hash over
# length-prefixed parts, computed on every cached request, and a hit asks it of the same few URLs
# again and again. Bounded like the other memos: cleared when full, so a scan of distinct URLs
# costs one hash each, as without it.
_ENTRY_KEYS: dict[tuple[object, ...], str] = {}


def entry_key(req: ProxyRequest) -> str:
    """The cache key of a GET/HEAD request (vary values as the upstream sees them)."""
    route = req.route
    policy = route.cache_policy
    names = policy.vary_headers if policy is not None else ()
    vary = vary_values(names, req.lookup_headers) if names else []
    tenant = tenant_of(req)
    memo = (route.name, req.path, req.raw_query, tenant, *vary)
    key = _ENTRY_KEYS.get(memo)
    if key is None:
        key = cache_key("GET", route.name, req.path, req.raw_query, vary, tenant)
        if len(_ENTRY_KEYS) >= _MEMO_SIZE:
            _ENTRY_KEYS.clear()
        _ENTRY_KEYS[memo] = key
    return key


def variant_key(
    req: ProxyRequest, names: Sequence[str], coding: str, unsent: frozenset[str] = frozenset()
) -> str:
    """The key of the request's variant selected by the response-Vary `names` (beyond the
    policy's), Accept-Encoding taken as `coding`, the headers in `unsent` taken as absent."""
    policy = req.route.cache_policy
    policy_names = policy.vary_headers if policy is not None else ()
    headers = req.lookup_headers
    if unsent:
        dropped = {name.encode("latin-1") for name in unsent}
        headers = [(name, value) for name, value in headers if name not in dropped]
    vary = variant_vary(policy_names, names, headers, coding)
    return cache_key("GET", req.route.name, req.path, req.raw_query, vary, tenant_of(req))


# A variant index is kept under the URL's primary key as a CacheEntry with this status (no HTTP
# status is 0), so both stores keep, expire and purge it like the entries it leads to: it
# carries the same URI key, route, tenant and path.
INDEX_STATUS = 0


def variant_index(entry: CacheEntry | None) -> VariantIndex | None:
    """The variant index `entry` holds, if it is one."""
    if entry is None or entry.status != INDEX_STATUS:
        return None
    return VariantIndex.decode(entry.body)


def index_record(
    req: ProxyRequest, index: VariantIndex, expires_at: float, now: float
) -> CacheEntry:
    """The entry holding `index` for the request's URL until `expires_at` (its last variant's)."""
    return CacheEntry(
        status=INDEX_STATUS,
        headers=[],
        body=index.encode(),
        stored_at=now,
        fresh_until=expires_at,
        stale_until=expires_at,
        error_until=expires_at,
        uri_key=uri_key(req.route.name, req.path, req.raw_query),
        route=req.route.name,
        tenant_id=tenant_of(req),
        path=req.path,
        keep_until=expires_at,
    )


def _accept_encoding(req: ProxyRequest) -> bytes | None:
    return joined(req.lookup_headers, b"accept-encoding")


def fill_headers(
    req: ProxyRequest, entry: CacheEntry | None, names: Sequence[str] = ()
) -> list[tuple[bytes, bytes]]:
    """The upstream request headers of a fill: of the client's, only those the cache key holds
    (the policy's vary headers and the response-Vary `names` its variant is keyed on) or that
    cannot shape a stored answer unnoticed (`cache_fill_forwarded`), never its preconditions
    or Range; Accept-Encoding rebuilt from the codings it accepts (`forwarded_accept_encoding`:
    the variant is keyed on the coding served); plus the gateway's own, and the entry's
    validators when revalidating it (RFC 9111 §4.3.1)."""
    policy = req.route.cache_policy
    keyed = tuple(policy.vary_headers) if policy is not None else ()
    extra = tuple(name for name in names if name != ACCEPT_ENCODING and name not in keyed)
    keep = cache_fill_forwarded(keyed + extra)
    out = [
        (name, value)
        for name, value in req.kept_headers(keep)
        if name not in _CLIENT_PRECONDITIONS and name != b"range"
    ]
    if ACCEPT_ENCODING not in keyed:
        codings = forwarded_accept_encoding(req.lookup_headers)
        if codings is not None:
            out.append((b"accept-encoding", codings))
    if entry is not None:
        out.extend(conditional_headers(entry.headers))
    return out


def route_target(route: RouteConfig, location: bytes) -> tuple[str, bytes] | None:
    """(canonical path under `route`, query) of a Location or Content-Location value that names
    a URL of the route's upstream (a path, or an absolute URL of the same scheme, host and port)
    under its base path; None for anything else."""
    try:
        parts = urlsplit(location.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parts.scheme or parts.netloc:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        same = (
            parts.scheme == route.upstream_scheme
            and (parts.hostname or "").lower() == route.upstream_host.lower()
            and port == route.upstream_port
        )
        if not same:
            return None
    path = parts.path
    if not path.startswith("/"):
        return None  # relative to the request's own path: rare in APIs, left alone
    base = route.upstream_base_path
    if base:
        if path != base and not path.startswith(base + "/"):
            return None
        path = path[len(base) :] or "/"
    try:
        parsed = parse_gateway_path(f"/g/{route.name}{path}".encode("ascii"))
    except BadPath:
        return None
    if parsed is None or parsed.route != route.name:
        return None
    return parsed.path, parts.query.encode("ascii")


def new_entry(
    req: ProxyRequest, status: int, headers: Headers, body: bytes, now: float
) -> CacheEntry:
    """The entry for an upstream response received at `now` (already judged storable)."""
    policy = req.route.cache_policy
    assert policy is not None
    times = entry_times(policy, status, headers, now)
    fresh_until, stale_until, error_until = times
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
        keep_until=keep_until(policy, times, headers),
    )


def freshened(req: ProxyRequest, entry: CacheEntry, headers_304: Headers, now: float) -> CacheEntry:
    """`entry` updated by a 304 received at `now` (RFC 9111 §4.3.4)."""
    policy = req.route.cache_policy
    assert policy is not None
    headers = [(n, v) for n, v in freshen_headers(entry.headers, headers_304) if _kept(n)]
    times = entry_times(policy, entry.status, headers, now)
    fresh_until, stale_until, error_until = times
    return dataclasses.replace(
        entry,
        headers=headers,
        stored_at=now,
        fresh_until=fresh_until,
        stale_until=stale_until,
        error_until=error_until,
        age_at_store=initial_age(headers_304),
        keep_until=keep_until(policy, times, headers),
    )


class CacheIO:
    """The cache's store, negative cache, locks, fill notices and upstream calls, failing soft
    on Redis. A foreground fill and a background refresh store and announce through the same
    methods, so they cannot drift apart."""

    def __init__(
        self, deps: CacheDeps, locks: RedisLocks | None, notices: FillNotices | None = None
    ) -> None:
        self.deps = deps
        self.locks = locks
        self.notices = notices
        # Primary key → the names its variant index selects by, as last seen here: what a fill
        # of the URL forwards so that the upstream can choose.
        self._varies: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        # id(request) → the response-Vary names its fill forwarded: its variant is keyed on
        # these only (one the upstream never saw is keyed as absent).
        self._sent: OrderedDict[int, tuple[str, ...]] = OrderedDict()

    @staticmethod
    def _remember(
        memo: OrderedDict[Any, tuple[str, ...]], key: Any, names: tuple[str, ...]
    ) -> None:
        memo[key] = names
        memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)

    def fill_headers(
        self, req: ProxyRequest, entry: CacheEntry | None
    ) -> list[tuple[bytes, bytes]]:
        """`fill_headers` with the names the URL's variants are known to vary on."""
        names = self._varies.get(entry_key(req), ())
        if entry is not None:
            policy = req.route.cache_policy
            seen = response_vary(policy.vary_headers if policy is not None else (), entry.headers)
            names = tuple(sorted({*names, *(seen or ())}))
        self._remember(self._sent, id(req), names)
        return fill_headers(req, entry, names)

    async def resolve(
        self,
        req: ProxyRequest,
        key: str,
        read: Callable[[str], Awaitable[CacheEntry | None]],
    ) -> tuple[str, CacheEntry | None]:
        """(the key the request's answer lives under, the entry there) given what its primary
        `key` holds (read with `read`): that entry, or the variant its index selects for the
        request's headers. A URL whose responses do not vary costs one read."""
        found = await read(key)
        if found is None or found.status != INDEX_STATUS:
            return key, found
        return await self.variant(req, key, found, read)

    async def variant(
        self,
        req: ProxyRequest,
        key: str,
        found: CacheEntry,
        read: Callable[[str], Awaitable[CacheEntry | None]],
    ) -> tuple[str, CacheEntry | None]:
        """`resolve` once the primary `key` was read and `found` holds a variant index."""
        index = variant_index(found)
        if index is None:
            return key, None
        self._remember(self._varies, key, index.names)
        coding = select_coding(_accept_encoding(req), index.encodings)
        vkey = variant_key(req, index.names, coding)
        return vkey, await read(vkey)

    async def lookup(self, req: ProxyRequest) -> CacheEntry | None:
        """The request's entry in the shared store (never this process's copies)."""
        return (await self.resolve(req, entry_key(req), self.get))[1]

    def selects(self, req: ProxyRequest, entry: CacheEntry) -> bool | None:
        """Whether `entry`, the answer to another request's fill of the same key, is the variant
        for `req` too: True, False, or None when only the store can tell (it varies on headers
        other than Accept-Encoding, whose values that request's fill may have sent otherwise)."""
        policy = req.route.cache_policy
        policy_names = policy.vary_headers if policy is not None else ()
        names = response_vary(policy_names, entry.headers)
        if names is None:
            return False
        coding = content_coding(entry.headers)
        if (
            coding != "identity"
            and ACCEPT_ENCODING not in policy_names
            and not accepts_coding(_accept_encoding(req), coding)
        ):
            return False  # a compressed answer only goes to who accepts its coding
        if any(name != ACCEPT_ENCODING for name in names):
            return None
        return True

    def failed(self, what: str, exc: BaseException) -> None:
        self.deps.metrics.count("redis_errors")
        log.debug("cache %s failed: %r", what, exc)

    async def get(self, key: str) -> CacheEntry | None:
        try:
            entry: CacheEntry | None = await self.deps.cache.get(key)
        except CacheUnavailable as exc:
            self.failed("read", exc)
            return None
        return entry

    async def generation(self, req: ProxyRequest) -> bytes | None:
        """The removal generation a fill starts from: the one the request's admission read
        (Redis), else the store's own now; None when the store cannot say (Redis failing)."""
        if req.ex.cache_generation is not None:
            return req.ex.cache_generation
        try:
            generation: bytes = await self.deps.cache.generation()
        except CacheUnavailable as exc:
            self.failed("generation", exc)
            return None
        return generation

    async def put(
        self,
        key: str,
        entry: CacheEntry,
        now: float,
        generation: bytes | None = None,
        drop: tuple[str, ...] = (),
    ) -> bool:
        """Store `entry` (removing the entries under `drop`); False when it was not (Redis
        failing, or entries were removed since `generation` was read)."""
        try:
            stored = await self.deps.cache.set(key, entry, now, generation=generation, drop=drop)
        except CacheUnavailable as exc:
            self.failed("write", exc)
            return False
        if not stored:
            self.deps.metrics.count("cache_fills_outdated")
        return bool(stored)

    async def _keep(
        self,
        req: ProxyRequest,
        key: str,
        entry: CacheEntry,
        now: float,
        generation: bytes | None,
        drop: tuple[str, ...] = (),
    ) -> bool:
        stored = await self.put(key, entry, now, generation, drop)
        fresh_entries = self.deps.fresh_entries
        if stored and fresh_entries is not None:
            # Dropped variants go from this process too; other instances' copies stay fresh
            # answers until they expire, as after any refresh elsewhere.
            for gone in drop:
                fresh_entries.discard(gone)
            if req.ex.cache_generation is not None:
                fresh_entries.put(key, entry, req.ex.cache_generation, now)
        return stored

    async def store(
        self,
        req: ProxyRequest,
        key: str,
        entry: CacheEntry,
        now: float,
        generation: bytes | None = None,
    ) -> bool:
        """Store `entry` for `req` (unless entries were removed since `generation`, the fill's
        start, was read) and, with Redis, keep it in this process too, under the generation
        the request's lookup read: a purge since then retires the copy.

        Where it goes is the entry's own business, whatever `key` the request was looked up
        under: a response that varies on no header beyond the policy's goes to the primary key;
        one that does goes to its variant key (the header values its fill sent, Accept-Encoding
        as the coding it was served with), and the primary key gets the URL's variant index,
        which keeps at most the policy's `max_variants`, the least recently stored going."""
        policy = req.route.cache_policy
        assert policy is not None
        primary = entry_key(req)
        sent = self._sent.pop(id(req), ())
        offered = forwarded_accept_encoding(req.lookup_headers) is not None
        names = response_vary(policy.vary_headers, entry.headers, offered_codings=offered)
        if names is None:
            return False  # never storable: `storable` refused it already
        if not names:
            # The URL stopped varying: its old variants are unreachable behind this entry.
            drop: tuple[str, ...] = ()
            if key != primary:
                drop = tuple(k for k in (await self._known_variants(primary)) if k != primary)
            stored = await self._keep(req, primary, entry, now, generation, drop)
            if stored:
                self._varies.pop(primary, None)
            return stored
        coding = content_coding(entry.headers)
        # A header the fill did not send is keyed as absent: the upstream chose without it.
        unsent = frozenset(name for name in names if name != ACCEPT_ENCODING and name not in sent)
        vkey = variant_key(req, names, coding, unsent)
        current = await self.get(primary)
        old = variant_index(current)
        index, dropped = added(old, names, vkey, coding, policy.max_variants)
        if not await self._keep(req, vkey, entry, now, generation):
            return False
        expires = entry.expires_at
        if old is not None and current is not None:
            expires = max(expires, current.expires_at)
        record = index_record(req, index, expires, now)
        await self._keep(req, primary, record, now, generation, dropped)
        self._remember(self._varies, primary, names)
        return True

    async def _known_variants(self, primary: str) -> tuple[str, ...]:
        index = variant_index(await self.get(primary))
        return () if index is None else index.keys

    async def announce(self, key: str, stored: bool) -> None:
        """Tell the other instances' waiters that this instance's fill of `key` has ended."""
        if self.notices is None:
            return
        try:
            await self.notices.publish(key, STORED if stored else PASSED)
        except Exception as exc:
            self.failed("fill notice", exc)

    async def invalidate(self, req: ProxyRequest) -> int:
        """Drop the entries of the request's URI that its tenant is served (its own and the
        shared ones: another tenant's entries are none of its writes' business), and the
        route's remembered 404s (§4.4)."""
        purged = 0
        try:
            purged = await self.deps.cache.invalidate(
                uri_key(req.route.name, req.path, req.raw_query), req.tenant_id
            )
        except CacheUnavailable as exc:
            self.failed("invalidation", exc)
        await self.negative_clear(req.route.name)
        return purged

    async def invalidate_locations(self, req: ProxyRequest, response_headers: Headers) -> int:
        """§4.4: a successful unsafe request also invalidates the URIs its response names in
        Location and Content-Location, when they are of the same origin (the route's upstream)
        and so map back to a URL under the same route. Others are left alone: invalidating
        another origin's entries would let one upstream evict another's."""
        purged = 0
        for name in (b"location", b"content-location"):
            value = header_value(response_headers, name)
            target = None if value is None else route_target(req.route, value)
            if target is None:
                continue
            path, query = target
            try:
                purged += await self.deps.cache.invalidate(
                    uri_key(req.route.name, path, query), req.tenant_id
                )
            except CacheUnavailable as exc:
                self.failed("invalidation", exc)
        return purged

    async def negative_has(self, route: str, key: str, now: float) -> bool:
        try:
            return bool(await self.deps.negative.might_contain(route, key, now))
        except CacheUnavailable as exc:
            self.failed("negative lookup", exc)
            return False

    async def negative_add(self, route: str, key: str, now: float) -> None:
        try:
            await self.deps.negative.add(route, key, now)
        except CacheUnavailable as exc:
            self.failed("negative add", exc)

    async def negative_clear(self, route: str) -> None:
        try:
            await self.deps.negative.clear(route)
        except CacheUnavailable as exc:
            self.failed("negative clear", exc)

    async def lock(self, key: str, ttl: float) -> str | None:
        """The owner token; "" when there is no shared lock to take (no Redis, or Redis failing:
        this process fills on its own); None when another instance holds it."""
        if self.locks is None:
            return ""
        try:
            return await self.locks.acquire(key, round(ttl * 1000))
        except CacheUnavailable as exc:
            self.failed("lock", exc)
            return ""

    async def unlock(self, key: str, token: str) -> None:
        if self.locks is None or not token:
            return
        try:
            await self.locks.release(key, token)
        except CacheUnavailable as exc:
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
        resp: UpstreamResponse = await self.deps.upstream.request(
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
            self.deps.metrics.upstream_latency[req.route.name].observe(seconds)
        else:
            req.ex.upstream_seconds = seconds
            req.ex.upstream_status = resp.status
        return resp
