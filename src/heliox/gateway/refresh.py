"""Stale-while-revalidate: the background refresh of an entry served stale (RFC 5861 §3).

One refresh per key at a time: in this process through the key's single-flight slot (requests
that arrive meanwhile are told `UPDATING`), across instances through the same Redis fill lock a
miss takes. An instance that finds the lock taken keeps its own slot until the other instance's
fill notice (or the lock's age), so it tries the lock once per refresh, not once per stale
answer. A refresh that fails, times out or gets a 5xx keeps the stale copy and stores nothing; a
304 freshens the entry without a body transfer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from heliox.core.freshness import LookupState, conditional_headers, lookup_state, storable
from heliox.gateway.cache_fill import CacheIO, fill_headers, freshened, new_entry
from heliox.gateway.coalescing import PASSED, STORED, FillNotices, FillResult, SingleFlight
from heliox.gateway.exchange import ProxyRequest
from heliox.gateway.upstream_client import UpstreamError
from heliox.state.cache import CacheEntry

__all__ = ["Refresher"]

log = logging.getLogger("heliox.cache")


class Refresher:
    def __init__(
        self,
        io: CacheIO,
        flights: SingleFlight,
        notices: FillNotices | None,
        metrics: Any,
        clock: Callable[[], float],
        lock_age: float,
    ) -> None:
        self.io = io
        self.flights = flights
        self.notices = notices
        self.metrics = metrics
        self.clock = clock
        self.lock_age = lock_age
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, req: ProxyRequest, key: str, entry: CacheEntry) -> bool:
        """Refresh `entry` in the background unless this process already fills `key`."""
        if self.flights.busy(key):
            return False
        # Taken now, before the task runs, so the next stale request sees UPDATING.
        future = self.flights.start(key)
        task = asyncio.create_task(self._run(req, key, entry, future), name="heliox-swr")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the refreshes in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self,
        req: ProxyRequest,
        key: str,
        entry: CacheEntry,
        future: asyncio.Future[FillResult | None],
    ) -> None:
        result: FillResult | None = None
        stored = False
        token: str | None = ""
        # Listening before the lock attempt, so another instance's refresh that ends right after
        # it is heard either way.
        notice = self.notices.register(key) if self.notices is not None else None
        try:
            token = await self.io.lock(key, self.lock_age)
            if token is None:
                # Another instance is refreshing this key. Keep this process's slot until it is
                # done: otherwise every stale answer served meanwhile would try the lock again.
                result = await self._their_refresh(key, notice)
                return
            if token:
                # It may have finished a refresh between our read and our lock.
                current = await self.io.get(key)
                if (
                    current is not None
                    and current.stored_at > entry.stored_at
                    and lookup_state(current, self.clock()) is LookupState.HIT
                ):
                    result = FillResult(current)
                    return
            result, stored = await self._refresh(req, key, entry)
        except Exception:
            log.exception("background refresh of %s failed", req.route.name)
        finally:
            if notice is not None and self.notices is not None:
                self.notices.unregister(key, notice)
            self.flights.finish(key, future, result)
            if token:
                await self._announce(key, stored)
                await self.io.unlock(key, token)

    async def _their_refresh(
        self, key: str, notice: asyncio.Future[str] | None
    ) -> FillResult | None:
        """Wait (at most as long as their lock may live) for another instance's refresh of
        `key`; what it stored, if it is fresh."""
        if notice is None:
            return None
        try:
            async with asyncio.timeout(self.lock_age):
                outcome = await notice
        except TimeoutError:
            return None
        if outcome != STORED:
            return None
        current = await self.io.get(key)
        if current is None or lookup_state(current, self.clock()) is not LookupState.HIT:
            return None
        return FillResult(current)

    async def _announce(self, key: str, stored: bool) -> None:
        if self.notices is None:
            return
        try:
            await self.notices.publish(key, STORED if stored else PASSED)
        except Exception as exc:
            self.io.failed("fill notice", exc)

    async def _refresh(
        self, req: ProxyRequest, key: str, entry: CacheEntry
    ) -> tuple[FillResult | None, bool]:
        policy = req.route.cache_policy
        assert policy is not None
        self.metrics.count("swr_refresh")
        headers = fill_headers(req, entry)
        validating = bool(conditional_headers(entry.headers))
        try:
            resp = await self.io.fetch(req, headers, background=True)
        except UpstreamError as exc:
            self.metrics.upstream_errors[(req.route.name, exc.status)] += 1
            self.metrics.count("swr_refresh_failed")
            return None, False
        now = self.clock()
        try:
            if resp.status == 304 and validating:
                fresh = freshened(req, entry, resp.headers, now)
                return FillResult(fresh), await self.io.put(key, fresh, now)
            decision = storable(
                policy,
                "GET",
                resp.status,
                resp.headers,
                resp.content_length or 0,
                req.lookup_headers,
                now=now,
            )
            if not decision.ok:
                # 5xx among them: the stale copy stays, as RFC 5861 §3 intends.
                self.metrics.count("swr_refresh_failed")
                resp.close()
                return None, False
            body = await resp.read_all(policy.max_object_bytes)
            if body is None:
                resp.close()
                return None, False
            new = new_entry(req, resp.status, resp.headers, body, now)
            stored = await self.io.put(key, new, now)
            if resp.status == 404 and policy.negative_cache:
                await self.io.negative_add(req.route.name, key, now)
            return FillResult(new), stored
        except UpstreamError:
            resp.close()  # broke off mid-body: nothing is stored
            self.metrics.count("swr_refresh_failed")
            return None, False
        finally:
            resp.release()
