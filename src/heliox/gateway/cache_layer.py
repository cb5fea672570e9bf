"""The response cache on the request path: it performs what `heliox.core.cache_engine` decides.

One request, top to bottom:

  classify: unsafe method → write through, then invalidate (RFC 9111 §4.4)
            uncacheable method, Range, or a Cookie the policy does not allow → bypass
  key → one store read → judge: HIT → serve (or 304)
                                STALE → serve, refresh once in the background (RFC 5861 §3)
                                FILL / REVALIDATE → negative cache (remembered 404s), then
                                the filler
  filler: join this process's fill of the key, or lead one: the Redis lock across instances
          (or wait for the holder's notice), re-check the store, fetch (conditionally when
          revalidating), settle the answer, store it here and in Redis, announce, unlock.

There is one filler: a MISS, a revalidation and the background refresh of a stale entry
(`sink` None: no client waits) all run it. A fill streams the upstream's answer to its client
while keeping a copy (up to the policy's `max_object_bytes`) for the store and for the requests
that waited on it; see `coalescing` for how waiting works within and across instances and
`cache_fill` for what a fill sends and builds. On a HIT nothing but the one store read happens.

`X-Cache` carries the documented vocabulary: HIT, MISS, STALE, UPDATING (stale while this process
already refreshes it), REVALIDATED (a 304 from upstream freshened the entry), NEGATIVE (a
remembered 404) and BYPASS. Requests that waited on another's fill answer HIT, with
`Cache-Status: heliox; fwd=miss; collapsed`. `Cache-Status` (RFC 9211) gives the detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from heliox.core.cache_engine import (
    ACTION_HIT,
    ACTION_ONLY_IF_CACHED,
    ACTION_STALE,
    ACTION_WRITE_THROUGH,
    Decision,
    Outcome,
    classify,
    judge,
    live,
    settle,
)
from heliox.core.cachecontrol import EMPTY, CacheControl, joined, parse_cache_control
from heliox.core.freshness import (
    LookupState,
    cache_status,
    conditional_headers,
    hit_status,
    lookup_state,
    must_ask_origin,
    not_modified,
    not_modified_headers,
    remembers_404s,
    request_accepts,
    ttl_seconds,
)
from heliox.gateway.cache_fill import INDEX_STATUS, CacheIO, entry_key, freshened, new_entry
from heliox.gateway.cache_responses import (
    from_upstream,
    send_entry,
    send_negative,
    status_headers,
)
from heliox.gateway.coalescing import (
    LOCK_AGE,
    LOCK_TIMEOUT,
    PASSED,
    RECHECK,
    STORED,
    FillNotices,
    FillResult,
    SingleFlight,
)
from heliox.gateway.exchange import ClientGone, ProxyRequest, ResponseSink
from heliox.gateway.proxy import VIA, call_upstream, send_upstream_error
from heliox.net.upstream_client import UpstreamError, UpstreamResponse
from heliox.runtime import CacheDeps
from heliox.snapshot import CachePolicyConfig
from heliox.state.cache import CacheEntry
from heliox.state.cache_memory import MemoryCacheStore
from heliox.state.lock_redis import RedisLocks

__all__ = ["GAUGE_INTERVAL", "CacheLayer"]

log = logging.getLogger("heliox.cache")

GAUGE_INTERVAL = 10.0  # seconds between cache size gauge updates


@dataclass(slots=True)
class _Fill:
    """What one fill ended with: the waiters' share, whether it was stored, the client's state."""

    result: FillResult | None = None
    stored: bool = False
    client_gone: bool = False


class Refreshes:
    """The background refreshes in progress (RFC 5861 §3), so shutdown and tests can wait."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class CacheLayer:
    def __init__(
        self,
        deps: CacheDeps,
        *,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = LOCK_TIMEOUT,
        lock_age: float = LOCK_AGE,
        recheck: float = RECHECK,
    ) -> None:
        """`lock_timeout` and `lock_age` (CACHE_LOCK_TIMEOUT, CACHE_LOCK_AGE) apply to the
        routes whose policy sets none of its own."""
        self.deps = deps
        self.clock = clock
        self._lock_timeout = lock_timeout
        self._lock_age = lock_age
        self.recheck = recheck
        redis = deps.redis
        prefix = deps.key_prefix + "cache:"
        locks = RedisLocks(redis, prefix=prefix + "lock:") if redis is not None else None
        self.notices = FillNotices(redis, prefix + "fill") if redis is not None else None
        self.io = CacheIO(deps, locks, self.notices)
        # With Redis: fresh entries kept in process, checked against the removal generation.
        self.fresh_entries = deps.fresh_entries
        self.flights = SingleFlight()
        self.refresher = Refreshes()
        self._background: list[asyncio.Task[None]] = []

    def lock_timeout(self, policy: CachePolicyConfig) -> float:
        """How long a request waits for another's fill (nginx's proxy_cache_lock_timeout)."""
        own = policy.lock_timeout_seconds
        return self._lock_timeout if own is None else own

    def lock_age(self, policy: CachePolicyConfig) -> float:
        """How long a fill holds its lock before another may take it (proxy_cache_lock_age)."""
        own = policy.lock_age_seconds
        return self._lock_age if own is None else own

    # --- the request ------------------------------------------------------------------------
    async def serve(self, req: ProxyRequest, sink: ResponseSink) -> None:
        if not self._background:
            self._start_background()
        policy = req.route.cache_policy
        assert policy is not None, "the pipeline only sends routes with a cache policy here"
        early = classify(policy, req.method, req.lookup_headers)
        if early is not None:
            if early.action is ACTION_WRITE_THROUGH:
                await self._write_through(req, sink)
            else:
                await self._bypass(req, sink, early.detail or "method")
            return

        request_cc = parse_cache_control(joined(req.lookup_headers, b"cache-control"))
        key = entry_key(req)
        store = self.deps.cache
        if type(store) is MemoryCacheStore and self.fresh_entries is None:
            entry = store.get_now(key)  # in process: no await, two coroutines fewer per hit
        else:
            entry = await self._read_one(req, key)
        if entry is not None and entry.status == INDEX_STATUS:
            # The URL's responses vary beyond the policy's headers: read the request's variant.
            key, entry = await self.io.variant(req, key, entry, lambda at: self._read_one(req, at))
        req.ex.cache_key = key
        now = self.clock()
        entry = live(entry, now)
        updating = self.flights.busy(key)
        decision = judge(policy, req.method, request_cc, entry, now, updating=updating)
        action = decision.action
        if action is ACTION_HIT or action is ACTION_STALE:
            assert entry is not None
            status_field = hit_status(ttl_seconds(entry, now), decision.detail)
            await send_entry(sink, req, entry, now, decision.label, status_field)
            if action is ACTION_STALE and not updating:
                self._refresh(req, key, entry)
            return
        if action is ACTION_ONLY_IF_CACHED:
            # RFC 9111 §5.2.1.7: nothing stored that may be served, and no forwarding allowed.
            req.ex.cache_status = "MISS"
            await sink.problem(
                504,
                "Not cached",
                "only-if-cached was requested and no usable stored response exists",
                status_headers("MISS", cache_status(fwd="miss", detail="only-if-cached"), key),
            )
            return
        if decision.negative_lookup and await self.io.negative_has(req.route.name, key, now):
            await self._negative(req, sink, entry, now)
            return
        await self._fill(req, sink, key, entry, request_cc, decision)

    async def _read_one(self, req: ProxyRequest, key: str) -> CacheEntry | None:
        """The stored entry: this process's fresh copy when it has one (Redis), else the store's."""
        fresh_entries = self.fresh_entries
        generation = req.ex.cache_generation
        if fresh_entries is None or generation is None:
            return await self.io.get(key)
        entry = fresh_entries.get(key, generation, self.clock())
        if entry is not None:
            self.deps.metrics.count("cache_l1_hits")
            return entry
        entry = await self.io.get(key)
        if entry is not None:
            fresh_entries.put(key, entry, generation, self.clock())
        return entry

    # --- answers without a fill --------------------------------------------------------------
    async def _negative(
        self, req: ProxyRequest, sink: ResponseSink, entry: CacheEntry | None, now: float
    ) -> None:
        if entry is not None and entry.status == 404:
            status_field = hit_status(ttl_seconds(entry, now), "negative")
            await send_entry(sink, req, entry, now, "NEGATIVE", status_field)
        else:
            await send_negative(sink, req, cache_status(hit=True, detail="negative"))

    async def _bypass(self, req: ProxyRequest, sink: ResponseSink, why: str) -> None:
        resp = await call_upstream(self.deps.upstream, self.deps.metrics, req, sink)
        if resp is not None:
            status_field = cache_status(fwd="bypass", fwd_status=resp.status, detail=why)
            await self._pass(req, sink, resp, status_field)

    async def _write_through(self, req: ProxyRequest, sink: ResponseSink) -> None:
        resp = await call_upstream(self.deps.upstream, self.deps.metrics, req, sink)
        if resp is None:
            return
        if resp.status < 400:
            # Before the answer goes out, so the client's next read cannot meet the old entry.
            await self.io.invalidate(req)
            await self.io.invalidate_locations(req, resp.headers)
        await self._pass(req, sink, resp, cache_status(fwd="method", fwd_status=resp.status))

    async def _pass(
        self, req: ProxyRequest, sink: ResponseSink, resp: UpstreamResponse, status_field: bytes
    ) -> None:
        """Relay an answer the cache has no part in."""
        fill = _Fill()
        await self._relay(
            req, sink, resp, "BYPASS", status_field, keep=None, fill=fill, preconditions=False
        )
        if fill.client_gone:
            raise ClientGone

    # --- the filler --------------------------------------------------------------------------
    async def _fill(
        self,
        req: ProxyRequest,
        sink: ResponseSink,
        key: str,
        entry: CacheEntry | None,
        request_cc: CacheControl,
        decision: Decision,
    ) -> None:
        fill = _Fill()
        running = self.flights.current(key)
        if running is not None:
            if decision.join:
                policy = req.route.cache_policy
                assert policy is not None
                _, result = await SingleFlight.wait(running, within=self.lock_timeout(policy))
                if result is not None and request_accepts(result.entry, self.clock(), request_cc):
                    # The fill's answer may be a variant for other header values than ours.
                    fits = self.io.selects(req, result.entry)
                    if fits is None:
                        current = await self._filled_since(req, entry, request_cc)
                        if current is not None:
                            result = FillResult(current)
                            fits = True
                    if fits:
                        await self._serve_collapsed(req, sink, result)
                        return
            # Past the lock timeout, the fill had nothing shareable, or nothing it can bring
            # satisfies this request's own directives (no-cache, max-age, min-fresh): go
            # upstream alone and store nothing (nginx's proxy_cache_lock_timeout).
            await self._fetch(req, sink, key, entry, fill, store=False)
        elif not decision.store:
            # A no-store request or a HEAD cannot fill for others: upstream on its own.
            await self._fetch(req, sink, key, entry, fill, store=False)
        else:
            future = self.flights.start(key)
            try:
                await self._lead(
                    req, sink, key, entry, fill, request_cc, decision.negative_bypassed
                )
            finally:
                self.flights.finish(key, future, fill.result)
        if fill.client_gone:
            raise ClientGone

    def _refresh(self, req: ProxyRequest, key: str, entry: CacheEntry) -> None:
        """Refresh `entry` in the background (RFC 5861 §3) with the filler, no client waiting.

        The key's single-flight slot is taken now, before the task runs, so the next stale
        request of this process is told UPDATING; across instances the Redis fill lock makes
        it one refresh in all. A refresh that fails, times out or gets a 5xx keeps the stale
        copy and stores nothing; a 304 freshens the entry without a body transfer."""
        if self.flights.busy(key):
            return
        future = self.flights.start(key)

        async def run() -> None:
            fill = _Fill()
            try:
                await self._lead(req, None, key, entry, fill, EMPTY, False)
            except Exception:
                log.exception("background refresh of %s failed", req.route.name)
            finally:
                self.flights.finish(key, future, fill.result)

        self.refresher.add(asyncio.create_task(run(), name="heliox-swr"))

    async def _lead(
        self,
        req: ProxyRequest,
        sink: ResponseSink | None,
        key: str,
        entry: CacheEntry | None,
        fill: _Fill,
        request_cc: CacheControl,
        negative_bypassed: bool,
    ) -> None:
        """This process's one fill of `key`, coordinated with the other instances. A request
        that must ask the origin itself never takes another instance's answer."""
        policy = req.route.cache_policy
        assert policy is not None
        token = await self.io.lock(key, self.lock_age(policy))
        if token is None and must_ask_origin(request_cc):
            await self._fetch(req, sink, key, entry, fill, store=False)
            return
        if token is None:
            outcome = await self._await_other_instance(req, key, entry, request_cc)
            if isinstance(outcome, CacheEntry):
                fill.result = FillResult(outcome)
                if sink is not None:
                    await self._serve_collapsed(req, sink, fill.result)
                return
            if outcome is None:
                if sink is None:
                    return  # their refresh, or none: the stale copy stays until the next one
                # Timed out, or their answer was not shareable: fetch for ourselves only, but
                # what we get may still serve this process's own waiters.
                await self._fetch(req, sink, key, entry, fill, store=False)
                return
            token = outcome  # their lock aged out and we took it over
        try:
            if token and not must_ask_origin(request_cc):
                # Another instance may have filled it between our read and our lock.
                current = await self._filled_since(req, entry, request_cc)
                if current is not None:
                    fill.result = FillResult(current)
                    if sink is not None:
                        await self._serve_collapsed(req, sink, fill.result)
                    return
            await self._fetch(req, sink, key, entry, fill, store=True)
            if negative_bypassed and fill.result is not None:
                await self._forget_negative(req, key, fill.result.entry)
        finally:
            if token:
                await self.io.announce(key, fill.stored)
                await self.io.unlock(key, token)

    async def _filled_since(
        self, req: ProxyRequest, seen: CacheEntry | None, request_cc: CacheControl
    ) -> CacheEntry | None:
        """A fresh entry stored after `seen` (the one this request already judged) that the
        request's own directives accept, if any: the request's own variant, looked up anew (the
        URL's variant index may have changed with the fill)."""
        current = await self.io.lookup(req)
        if current is None:
            return None
        if lookup_state(current, self.clock(), request_cc) is not LookupState.HIT:
            return None
        if seen is not None and current.stored_at <= seen.stored_at:
            return None  # the same entry: this request still needs its own answer
        return current

    async def _await_other_instance(
        self, req: ProxyRequest, key: str, seen: CacheEntry | None, request_cc: CacheControl
    ) -> CacheEntry | str | None:
        """Wait for another instance's fill of `key`: the entry it stored, our own lock token
        when its lock aged out and we took it, or None (time out, or nothing shareable)."""
        notices = self.notices
        assert notices is not None  # a lock is only ever held elsewhere with Redis
        policy = req.route.cache_policy
        assert policy is not None
        timeout = self.lock_timeout(policy)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await notices.ready(within=min(self.recheck, timeout))
        while True:
            notice = notices.register(key)
            try:
                # Registered first, then read: a fill that ends in between is seen either way.
                current = await self._filled_since(req, seen, request_cc)
                if current is not None:
                    return current
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    async with asyncio.timeout(min(remaining, self.recheck)):
                        outcome: str | None = await notice
                except TimeoutError:
                    outcome = None
            finally:
                notices.unregister(key, notice)
            if outcome == PASSED:
                return None
            if outcome == STORED:
                continue
            # No word: the filler may be gone. Its lock ages out after lock_age; try to take it.
            token = await self.io.lock(key, self.lock_age(policy))
            if token == "":
                return None  # Redis is failing: stop coordinating
            if token is not None:
                return token

    async def _fetch(
        self,
        req: ProxyRequest,
        sink: ResponseSink | None,
        key: str,
        entry: CacheEntry | None,
        fill: _Fill,
        *,
        store: bool,
    ) -> None:
        """Go upstream (revalidating `entry` when it has validators), settle the answer, answer
        the client if there is one, and keep what may be shared in `fill`."""
        policy = req.route.cache_policy
        assert policy is not None
        metrics = self.deps.metrics
        background = sink is None
        # A refresh fetches the GET whatever request found the entry stale (a HEAD, say).
        method = "GET" if background else req.method
        validating = entry is not None and bool(conditional_headers(entry.headers))
        if background:
            metrics.count("swr_refresh")
        # Read before the upstream is asked: a write whose invalidation lands while this fill
        # runs moves it, and the answer (maybe from before the write) is then not stored.
        generation = await self.io.generation(req) if store else None
        try:
            resp = await self.io.fetch(
                req, self.io.fill_headers(req, entry), method=method, background=background
            )
        except UpstreamError as exc:
            metrics.upstream_errors[(req.route.name, exc.status)] += 1
            now = self.clock()
            settled = settle(policy, req.lookup_headers, entry, None, (), None, now)
            if sink is None:
                metrics.count("swr_refresh_failed")
                return
            if settled.outcome is Outcome.SERVE_STALE:
                assert entry is not None
                req.ex.error = exc.detail  # answered from the stale copy, but still logged
                await self._stale_on_error(req, sink, entry, now, None, fill)
                return
            req.ex.cache_status = "MISS"
            status_field = cache_status(fwd="miss", detail=settled.detail)
            await send_upstream_error(sink, exc, status_headers("MISS", status_field, key))
            return

        now = self.clock()
        settled = settle(
            policy,
            req.lookup_headers,
            entry,
            resp.status,
            resp.headers,
            resp.content_length,
            now,
            method=method,
            validating=validating,
        )
        if settled.outcome is Outcome.FRESHEN:
            assert entry is not None
            resp.release()
            fresh = freshened(req, entry, resp.headers, now)
            if store and not resp.overran:  # a 304 with a body: not trusted to freshen
                fill.stored = await self.io.store(req, key, fresh, now, generation)
            fill.result = FillResult(fresh)
            if sink is not None:
                status_field = cache_status(
                    fwd="stale", fwd_status=304, ttl=ttl_seconds(fresh, now), stored=fill.stored
                )
                await send_entry(sink, req, fresh, now, settled.label, status_field)
            return
        if settled.outcome is Outcome.SERVE_STALE:
            assert entry is not None
            resp.close()
            if sink is None:
                metrics.count("swr_refresh_failed")  # the stale copy stays (RFC 5861 §3)
                return
            await self._stale_on_error(req, sink, entry, now, resp.status, fill)
            return

        keep = policy.max_object_bytes if settled.outcome is Outcome.STORE else None
        if sink is None:
            body = await _read_to_store(resp, keep)
        else:
            status_field = cache_status(
                fwd="miss" if entry is None else "stale",
                fwd_status=resp.status,
                detail=settled.detail,
            )
            body = await self._relay(
                req, sink, resp, settled.label, status_field, keep=keep, fill=fill
            )
        if body is not None:
            new = new_entry(req, resp.status, resp.headers, body, now)
            if store:
                fill.stored = await self.io.store(req, key, new, now, generation)
            fill.result = FillResult(new)
        elif sink is None:
            metrics.count("swr_refresh_failed")  # not storable, or broke off: nothing stored
        if resp.status == 404 and remembers_404s(policy) and settled.outcome is Outcome.STORE:
            # Only a 404 the cache may keep: no-store, private, Set-Cookie or Authorization
            # forbid remembering it as much as storing it.
            await self.io.negative_add(req.route.name, key, now)

    async def _relay(
        self,
        req: ProxyRequest,
        sink: ResponseSink,
        resp: UpstreamResponse,
        x_cache: str,
        status_field: bytes,
        *,
        keep: int | None,
        fill: _Fill,
        preconditions: bool = True,
    ) -> bytes | None:
        """Stream `resp` to the client; with `keep`, also return the whole body if it was read
        to the end within `keep` bytes (else None). A client that leaves does not stop a copy
        being kept for the store; an upstream that breaks off mid-body leaves nothing kept.
        With `preconditions`, a client whose own validators match gets a 304."""
        req.ex.cache_status = x_cache
        conditional = preconditions and not_modified(
            resp.headers, req.lookup_headers, status=resp.status
        )
        out = from_upstream(resp.headers)
        if conditional:
            out = not_modified_headers(out)  # the client's own validators match: answer 304
        out.append((b"via", VIA))
        out.extend(status_headers(x_cache, status_field, req.ex.cache_key))
        to_client = not conditional and req.method != "HEAD"
        parts: list[bytes] | None = [] if keep is not None else None
        size = 0
        try:
            try:
                await sink.start(304 if conditional else resp.status, out)
                if not to_client:
                    await sink.end()
            except ClientGone:
                fill.client_gone = True
                to_client = False
            if parts is None and not to_client:
                resp.close()
                return None
            async for chunk in resp.chunks():
                if parts is not None:
                    size += len(chunk)
                    if keep is None or size > keep:
                        parts = None  # too large to store: keep streaming, stop keeping
                    else:
                        parts.append(chunk)
                if to_client:
                    try:
                        # The last part ends the answer (one message fewer); a surplus the
                        # upstream sent with it is known by then (`overran`, below).
                        await sink.body(chunk, more=not resp.body_done)
                    except ClientGone:
                        fill.client_gone = True
                        to_client = False
                if parts is None and not to_client:
                    resp.close()
                    return None
            if resp.overran:
                # Bytes beyond its Content-Length (the client got the declared length, as from
                # nginx): a response that broke the framing is never stored.
                parts = None
        except UpstreamError as exc:
            req.ex.error = exc.detail
            resp.close()
            if to_client:
                self.deps.metrics.upstream_errors[(req.route.name, exc.status)] += 1
                await sink.abort(exc.detail)  # the head is out: only an abort says it failed
            return None
        finally:
            resp.release()
        if to_client:
            try:
                await sink.end()
            except ClientGone:
                fill.client_gone = True
        return None if parts is None else b"".join(parts)

    # --- shared answers ----------------------------------------------------------------------
    async def _serve_collapsed(
        self, req: ProxyRequest, sink: ResponseSink, result: FillResult
    ) -> None:
        self.deps.metrics.count("coalesced")
        policy = req.route.cache_policy
        assert policy is not None
        entry = result.entry
        now = self.clock()
        ttl = ttl_seconds(entry, now)
        if result.stale:
            status_field = cache_status(
                fwd="stale", ttl=ttl, collapsed=True, detail="stale-if-error"
            )
            await send_entry(sink, req, entry, now, "STALE", status_field)
            return
        status_field = cache_status(fwd="miss", fwd_status=entry.status, ttl=ttl, collapsed=True)
        await send_entry(sink, req, entry, now, _label(policy, entry, "HIT"), status_field)

    async def _stale_on_error(
        self,
        req: ProxyRequest,
        sink: ResponseSink,
        entry: CacheEntry,
        now: float,
        upstream_status: int | None,
        fill: _Fill,
    ) -> None:
        """RFC 5861 §4: the upstream failed; answer with the stale copy instead."""
        self.deps.metrics.count("stale_if_error")
        fill.result = FillResult(entry, stale=True)
        status_field = cache_status(
            fwd="stale",
            fwd_status=upstream_status,
            ttl=ttl_seconds(entry, now),
            detail="stale-if-error",
        )
        await send_entry(sink, req, entry, now, "STALE", status_field)

    async def _forget_negative(self, req: ProxyRequest, key: str, entry: CacheEntry) -> None:
        """A client bypassed the negative cache and the URL exists after all: if the filter
        still claims it, that claim (a stale 404 or a false positive) must go."""
        if entry.status != 404 and await self.io.negative_has(req.route.name, key, self.clock()):
            await self.io.negative_clear(req.route.name)

    # --- background --------------------------------------------------------------------------
    def _start_background(self) -> None:
        tasks = [asyncio.create_task(self._update_gauges(), name="heliox-cache-gauges")]
        if self.notices is not None:
            tasks.append(asyncio.create_task(self.notices.run(), name="heliox-cache-notices"))
        self._background = tasks
        # The runtime cancels its tasks on shutdown; ours go with them.
        for task in tasks:
            self.deps.add_task(task)

    async def _update_gauges(self) -> None:
        gauges = self.deps.metrics.gauges
        while True:
            try:
                stats = await self.deps.cache.stats()
            except Exception as exc:
                self.io.failed("stats", exc)
            else:
                gauges["cache_entries"] = stats.entries
                gauges["cache_bytes"] = stats.bytes
            if self.fresh_entries is not None:
                gauges["cache_l1_entries"] = len(self.fresh_entries)
                gauges["cache_l1_bytes"] = self.fresh_entries.stored_bytes
                gauges["cache_l1_evictions"] = self.fresh_entries.evictions
            await asyncio.sleep(GAUGE_INTERVAL)

    async def close(self) -> None:
        """Stop the background tasks and wait for refreshes in progress."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.refresher.drain()


async def _read_to_store(resp: UpstreamResponse, keep: int | None) -> bytes | None:
    """A background fill's body, whole, when it may be stored and fits in `keep` bytes; the
    connection goes back to the pool only when the body was read to its end."""
    if keep is None:
        resp.close()
        return None
    try:
        body = await resp.read_all(keep)
    except UpstreamError:
        resp.close()  # broke off mid-body: nothing is stored
        return None
    if body is None or resp.overran:
        resp.close()  # too large (the rest unread), or more than its Content-Length: not stored
        return None
    resp.release()
    return body


def _label(policy: CachePolicyConfig, entry: CacheEntry, label: str) -> str:
    """The X-Cache value for a stored entry: a remembered 404 is the negative cache's answer."""
    return "NEGATIVE" if entry.status == 404 and policy.negative_cache else label
