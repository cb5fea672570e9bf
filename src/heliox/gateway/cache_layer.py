"""The response cache on the request path.

One request, top to bottom:

  unsafe method → write through, then invalidate the URI for the writer (RFC 9111 §4.4)
  uncacheable method, Range, or a Cookie the policy does not allow → bypass
  key → one store read → HIT: serve (or 304)
                       → STALE: serve, refresh once in the background (RFC 5861 §3)
                       → no usable entry: negative cache (remembered 404s) → coalesced fill

A fill streams the upstream's answer to its client while keeping a copy (up to the policy's
`max_object_bytes`) for the store and for the requests that waited on it; see `coalescing` for
how waiting works within and across instances, `refresh` for the background refresh and
`cache_fill` for what a fill sends and builds. On a HIT nothing but the one store read happens;
bookkeeping (negative-cache adds, gauges) is done after the response or in the background.

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

from heliox.core.cachecontrol import CacheControl, joined, parse_cache_control
from heliox.core.freshness import (
    LookupState,
    cache_status,
    cacheable_request,
    can_serve_stale_on_error,
    conditional_headers,
    lookup_bypass,
    lookup_state,
    not_modified,
    not_modified_headers,
    storable,
    ttl_seconds,
)
from heliox.gateway.cache_fill import CacheIO, entry_key, fill_headers, freshened, new_entry
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
from heliox.gateway.refresh import Refresher
from heliox.gateway.upstream_client import UpstreamError, UpstreamResponse
from heliox.runtime import Runtime
from heliox.snapshot import CachePolicyConfig
from heliox.state.cache import CacheEntry
from heliox.state.lock_redis import RedisLocks

__all__ = ["GAUGE_INTERVAL", "CacheLayer"]

log = logging.getLogger("heliox.cache")

GAUGE_INTERVAL = 10.0  # seconds between cache size gauge updates
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class _Fill:
    """What one fill ended with: the waiters' share, whether it was stored, the client's state."""

    result: FillResult | None = None
    stored: bool = False
    client_gone: bool = False


class CacheLayer:
    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = LOCK_TIMEOUT,
        lock_age: float = LOCK_AGE,
        recheck: float = RECHECK,
    ) -> None:
        self.runtime = runtime
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.lock_age = lock_age
        self.recheck = recheck
        redis = runtime.redis
        prefix = runtime.settings.redis_key_prefix + "cache:"
        locks = RedisLocks(redis, prefix=prefix + "lock:") if redis is not None else None
        self.notices = FillNotices(redis, prefix + "fill") if redis is not None else None
        self.io = CacheIO(runtime, locks)
        # With Redis: fresh entries kept in process, checked against the removal generation.
        self.fresh = runtime.fresh_entries
        self.flights = SingleFlight()
        self.refresher = Refresher(
            self.io, self.flights, self.notices, runtime.metrics, clock, lock_age
        )
        self._background: list[asyncio.Task[None]] = []

    # --- the request ------------------------------------------------------------------------
    async def serve(self, req: ProxyRequest, send: ResponseSink) -> None:
        if not self._background:
            self._start_background()
        policy = req.route.cache_policy
        assert policy is not None, "the pipeline only sends routes with a cache policy here"
        if req.method not in SAFE_METHODS:
            await self._write_through(req, send)
            return
        if not cacheable_request(policy, req.method):
            await self._bypass(req, send, "method")
            return
        bypass = lookup_bypass(policy, req.lookup_headers)
        if bypass is not None:
            await self._bypass(req, send, bypass)
            return

        request_cc = parse_cache_control(joined(req.lookup_headers, b"cache-control"))
        key = entry_key(req)
        generation = req.ex.cache_generation
        kept = self.fresh
        if kept is not None and generation is not None:
            entry = kept.get(key, generation, self.clock())
            if entry is None:
                entry = await self.io.get(key)
                if entry is not None:
                    kept.put(key, entry, generation, self.clock())
            else:
                self.runtime.metrics.count("cache_l1_hits")
        else:
            entry = await self.io.get(key)
        now = self.clock()
        state = LookupState.EXPIRED if entry is None else lookup_state(entry, now, request_cc)

        if entry is not None and state is LookupState.HIT:
            status = _hit_status(policy, entry, now)
            await send_entry(send, req, entry, now, _label(policy, entry, "HIT"), status)
            return
        if entry is not None and state is LookupState.STALE:
            updating = self.flights.busy(key)
            label = _label(policy, entry, "UPDATING" if updating else "STALE")
            await send_entry(send, req, entry, now, label, _hit_status(policy, entry, now))
            if not updating:
                self.refresher.start(req, key, entry)
            return
        if request_cc.only_if_cached:
            # RFC 9111 §5.2.1.7: nothing stored that may be served, and no forwarding allowed.
            req.ex.cache_status = "MISS"
            await send.problem(
                504,
                "Not cached",
                "only-if-cached was requested and no usable stored response exists",
                status_headers("MISS", cache_status(fwd="miss", detail="only-if-cached")),
            )
            return

        negative_bypassed = False
        if policy.negative_cache and (
            entry is None or state is LookupState.EXPIRED or entry.status == 404
        ):
            if request_cc.no_cache:
                negative_bypassed = True
            elif await self.io.negative_has(req.route.name, key, now):
                await self._negative(req, send, entry, now)
                return
        await self._fill(req, send, key, entry, request_cc, negative_bypassed)

    # --- answers without a fill --------------------------------------------------------------
    async def _negative(
        self, req: ProxyRequest, send: ResponseSink, entry: CacheEntry | None, now: float
    ) -> None:
        if entry is not None and entry.status == 404:
            status = cache_status(hit=True, ttl=ttl_seconds(entry, now), detail="negative")
            await send_entry(send, req, entry, now, "NEGATIVE", status)
        else:
            await send_negative(send, req, cache_status(hit=True, detail="negative"))

    async def _bypass(self, req: ProxyRequest, send: ResponseSink, why: str) -> None:
        resp = await call_upstream(self.runtime.upstream, self.runtime.metrics, req, send)
        if resp is not None:
            status = cache_status(fwd="bypass", fwd_status=resp.status, detail=why)
            await self._pass(req, send, resp, status)

    async def _write_through(self, req: ProxyRequest, send: ResponseSink) -> None:
        resp = await call_upstream(self.runtime.upstream, self.runtime.metrics, req, send)
        if resp is None:
            return
        if resp.status < 400:
            # Before the answer goes out, so the client's next read cannot meet the old entry.
            await self.io.invalidate(req)
        await self._pass(req, send, resp, cache_status(fwd="method", fwd_status=resp.status))

    async def _pass(
        self, req: ProxyRequest, send: ResponseSink, resp: UpstreamResponse, status: bytes
    ) -> None:
        """Relay an answer the cache has no part in."""
        fill = _Fill()
        await self._relay(
            req, send, resp, "BYPASS", status, keep=None, fill=fill, preconditions=False
        )
        if fill.client_gone:
            raise ClientGone

    # --- fills -------------------------------------------------------------------------------
    async def _fill(
        self,
        req: ProxyRequest,
        send: ResponseSink,
        key: str,
        entry: CacheEntry | None,
        request_cc: CacheControl,
        negative_bypassed: bool,
    ) -> None:
        fill = _Fill()
        running = self.flights.current(key)
        if running is not None:
            _, result = await SingleFlight.wait(running, within=self.lock_timeout)
            if result is not None:
                await self._serve_collapsed(req, send, result)
                return
            # Past the lock timeout, or the fill had nothing shareable: go upstream alone and
            # store nothing (nginx's proxy_cache_lock_timeout).
            await self._fetch(req, send, key, entry, fill, store=False)
        elif request_cc.no_store or req.method == "HEAD":
            # §5.2.1.5: nothing of a no-store exchange may be stored; a HEAD has no body to
            # store. Neither can fill for others, so they go upstream on their own.
            await self._fetch(req, send, key, entry, fill, store=False)
        else:
            future = self.flights.start(key)
            try:
                await self._lead(req, send, key, entry, fill, negative_bypassed)
            finally:
                self.flights.finish(key, future, fill.result)
        if fill.client_gone:
            raise ClientGone

    async def _lead(
        self,
        req: ProxyRequest,
        send: ResponseSink,
        key: str,
        entry: CacheEntry | None,
        fill: _Fill,
        negative_bypassed: bool,
    ) -> None:
        """This process's one fill of `key`, coordinated with the other instances."""
        token = await self.io.lock(key, self.lock_age)
        if token is None:
            outcome = await self._await_other_instance(key, entry)
            if isinstance(outcome, CacheEntry):
                fill.result = FillResult(outcome)
                await self._serve_collapsed(req, send, fill.result)
                return
            if outcome is None:
                # Timed out, or their answer was not shareable: fetch for ourselves only, but
                # what we get may still serve this process's own waiters.
                await self._fetch(req, send, key, entry, fill, store=False)
                return
            token = outcome  # their lock aged out and we took it over
        try:
            if token:
                # Another instance may have filled it between our read and our lock.
                current = await self._filled_since(key, entry)
                if current is not None:
                    fill.result = FillResult(current)
                    await self._serve_collapsed(req, send, fill.result)
                    return
            await self._fetch(req, send, key, entry, fill, store=True)
            if negative_bypassed and fill.result is not None:
                await self._forget_negative(req, key, fill.result.entry)
        finally:
            if token:
                await self._announce(key, fill.stored)
                await self.io.unlock(key, token)

    async def _filled_since(self, key: str, seen: CacheEntry | None) -> CacheEntry | None:
        """A fresh entry stored after `seen` (the one this request already judged), if any."""
        current = await self.io.get(key)
        if current is None or lookup_state(current, self.clock()) is not LookupState.HIT:
            return None
        if seen is not None and current.stored_at <= seen.stored_at:
            return None  # the same entry: this request still needs its own answer
        return current

    async def _await_other_instance(
        self, key: str, seen: CacheEntry | None
    ) -> CacheEntry | str | None:
        """Wait for another instance's fill of `key`: the entry it stored, our own lock token
        when its lock aged out and we took it, or None (time out, or nothing shareable)."""
        notices = self.notices
        assert notices is not None  # a lock is only ever held elsewhere with Redis
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_timeout
        await notices.ready(within=min(self.recheck, self.lock_timeout))
        while True:
            notice = notices.register(key)
            try:
                # Registered first, then read: a fill that ends in between is seen either way.
                current = await self._filled_since(key, seen)
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
            token = await self.io.lock(key, self.lock_age)
            if token == "":
                return None  # Redis is failing: stop coordinating
            if token is not None:
                return token

    async def _announce(self, key: str, stored: bool) -> None:
        if self.notices is None:
            return
        try:
            await self.notices.publish(key, STORED if stored else PASSED)
        except Exception as exc:
            self.io.failed("fill notice", exc)

    async def _fetch(
        self,
        req: ProxyRequest,
        send: ResponseSink,
        key: str,
        entry: CacheEntry | None,
        fill: _Fill,
        *,
        store: bool,
    ) -> None:
        """Go upstream (revalidating `entry` when it has validators), answer the client, and
        keep what may be shared in `fill`."""
        policy = req.route.cache_policy
        assert policy is not None
        validating = entry is not None and bool(conditional_headers(entry.headers))
        try:
            resp = await self.io.fetch(req, fill_headers(req, entry), method=req.method)
        except UpstreamError as exc:
            self.runtime.metrics.upstream_errors[(req.route.name, exc.status)] += 1
            now = self.clock()
            if entry is not None and can_serve_stale_on_error(entry, now):
                req.ex.error = exc.detail  # answered from the stale copy, but still logged
                await self._stale_on_error(req, send, entry, now, None, fill)
                return
            req.ex.cache_status = "MISS"
            status = cache_status(fwd="miss", detail="upstream-error")
            await send_upstream_error(send, exc, status_headers("MISS", status))
            return

        now = self.clock()
        if entry is not None and resp.status == 304 and validating:
            resp.release()
            fresh = freshened(req, entry, resp.headers, now)
            if store:
                fill.stored = await self.io.put(key, fresh, now)
            fill.result = FillResult(fresh)
            status = cache_status(
                fwd="stale", fwd_status=304, ttl=ttl_seconds(fresh, now), stored=fill.stored
            )
            await send_entry(send, req, fresh, now, "REVALIDATED", status)
            return
        if entry is not None and resp.status >= 500 and can_serve_stale_on_error(entry, now):
            resp.close()
            await self._stale_on_error(req, send, entry, now, resp.status, fill)
            return

        decision = storable(
            policy,
            req.method,
            resp.status,
            resp.headers,
            resp.content_length or 0,
            req.lookup_headers,
            now=now,
        )
        status = cache_status(
            fwd="miss" if entry is None else "stale",
            fwd_status=resp.status,
            detail=None if decision.ok else decision.reason,
        )
        keep = policy.max_object_bytes if decision.ok else None
        body = await self._relay(req, send, resp, "MISS", status, keep=keep, fill=fill)
        if body is not None:
            new = new_entry(req, resp.status, resp.headers, body, now)
            if store:
                fill.stored = await self.io.put(key, new, now)
                generation = req.ex.cache_generation
                if fill.stored and self.fresh is not None and generation is not None:
                    self.fresh.put(key, new, generation, now)
            fill.result = FillResult(new)
        if resp.status == 404 and policy.negative_cache:
            await self.io.negative_add(req.route.name, key, now)

    async def _relay(
        self,
        req: ProxyRequest,
        send: ResponseSink,
        resp: UpstreamResponse,
        x_cache: str,
        status_value: bytes,
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
        out.extend(status_headers(x_cache, status_value))
        to_client = not conditional and req.method != "HEAD"
        parts: list[bytes] | None = [] if keep is not None else None
        size = 0
        try:
            try:
                await send.start(304 if conditional else resp.status, out)
                if not to_client:
                    await send.body(b"", more=False)
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
                        await send.body(chunk, more=True)
                    except ClientGone:
                        fill.client_gone = True
                        to_client = False
                if parts is None and not to_client:
                    resp.close()
                    return None
        except UpstreamError as exc:
            req.ex.error = exc.detail
            resp.close()
            if to_client:
                raise  # headers are out: aborting the connection is the only honest signal
            return None
        finally:
            resp.release()
        if to_client:
            try:
                await send.body(b"", more=False)
            except ClientGone:
                fill.client_gone = True
        return None if parts is None else b"".join(parts)

    # --- shared answers ----------------------------------------------------------------------
    async def _serve_collapsed(
        self, req: ProxyRequest, send: ResponseSink, result: FillResult
    ) -> None:
        self.runtime.metrics.count("coalesced")
        policy = req.route.cache_policy
        assert policy is not None
        entry = result.entry
        now = self.clock()
        ttl = ttl_seconds(entry, now)
        if result.stale:
            status = cache_status(fwd="stale", ttl=ttl, collapsed=True, detail="stale-if-error")
            await send_entry(send, req, entry, now, "STALE", status)
            return
        status = cache_status(fwd="miss", fwd_status=entry.status, ttl=ttl, collapsed=True)
        await send_entry(send, req, entry, now, _label(policy, entry, "HIT"), status)

    async def _stale_on_error(
        self,
        req: ProxyRequest,
        send: ResponseSink,
        entry: CacheEntry,
        now: float,
        upstream_status: int | None,
        fill: _Fill,
    ) -> None:
        """RFC 5861 §4: the upstream failed; answer with the stale copy instead."""
        self.runtime.metrics.count("stale_if_error")
        fill.result = FillResult(entry, stale=True)
        status = cache_status(
            fwd="stale",
            fwd_status=upstream_status,
            ttl=ttl_seconds(entry, now),
            detail="stale-if-error",
        )
        await send_entry(send, req, entry, now, "STALE", status)

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
            self.runtime.add_task(task)

    async def _update_gauges(self) -> None:
        gauges = self.runtime.metrics.gauges
        while True:
            try:
                stats = await self.runtime.cache.stats()
            except Exception as exc:
                self.io.failed("stats", exc)
            else:
                gauges["cache_entries"] = stats.entries
                gauges["cache_bytes"] = stats.bytes
            if self.fresh is not None:
                gauges["cache_l1_entries"] = len(self.fresh)
                gauges["cache_l1_bytes"] = self.fresh.stored_bytes
                gauges["cache_l1_evictions"] = self.fresh.evictions
            await asyncio.sleep(GAUGE_INTERVAL)

    async def close(self) -> None:
        """Stop the background tasks and wait for refreshes in progress."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.refresher.drain()


def _label(policy: CachePolicyConfig, entry: CacheEntry, label: str) -> str:
    """The X-Cache value for a stored entry: a remembered 404 is the negative cache's answer."""
    return "NEGATIVE" if entry.status == 404 and policy.negative_cache else label


def _hit_status(policy: CachePolicyConfig, entry: CacheEntry, now: float) -> bytes:
    negative = entry.status == 404 and policy.negative_cache
    return cache_status(
        hit=True, ttl=ttl_seconds(entry, now), detail="negative" if negative else None
    )
