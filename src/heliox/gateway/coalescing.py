"""Request coalescing: one cache fill per key, in this process and across instances.

In-process, `SingleFlight` keeps one future per key being filled; every other request for the
key awaits it instead of going upstream. Across instances the filler of each process also takes
a Redis lock (`heliox.state.lock_redis`); the processes that find it taken wait for a
notification on one pub/sub channel per deployment (`FillNotices`: a single subscription per
process, so waiting costs no round trips) and then read the entry from the shared store.

Timeouts follow nginx's `proxy_cache_lock_timeout` / `proxy_cache_lock_age`: a waiter gives up
after `LOCK_TIMEOUT` and goes upstream itself without storing; a lock is held for at most
`LOCK_AGE`, after which one more request may fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, NamedTuple

from heliox.state.cache import CacheEntry

__all__ = [
    "LOCK_AGE",
    "LOCK_TIMEOUT",
    "PASSED",
    "RECHECK",
    "STORED",
    "FillNotices",
    "FillResult",
    "SingleFlight",
]

log = logging.getLogger("heliox.cache")

LOCK_TIMEOUT = 5.0  # nginx's proxy_cache_lock_timeout default
LOCK_AGE = 5.0  # nginx's proxy_cache_lock_age default
# A waiter also re-reads the store this often, in case a notification was lost while the
# subscription reconnected. Once a second is a safety net, not a poll.
RECHECK = 1.0

STORED = "stored"  # the fill stored an entry: read it from the store
PASSED = "passed"  # the fill produced nothing shareable: go upstream yourself


class FillResult(NamedTuple):
    """What a fill hands to the requests that waited for it."""

    entry: CacheEntry
    stale: bool = False  # a stale fallback (stale-if-error), not a fresh answer


class SingleFlight:
    """At most one fill per key in this process; the others await its result."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[FillResult | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def busy(self, key: str) -> bool:
        return key in self._flights

    def current(self, key: str) -> asyncio.Future[FillResult | None] | None:
        return self._flights.get(key)

    def start(self, key: str) -> asyncio.Future[FillResult | None]:
        """Register this caller as the key's filler (the key must not be busy)."""
        future: asyncio.Future[FillResult | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    def finish(
        self, key: str, future: asyncio.Future[FillResult | None], result: FillResult | None
    ) -> None:
        """Hand `result` to the waiters (None: nothing shareable) and free the key."""
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.done():
            future.set_result(result)

    @staticmethod
    async def wait(
        future: asyncio.Future[FillResult | None], *, within: float
    ) -> tuple[bool, FillResult | None]:
        """(finished in time, result); the shield keeps one waiter's timeout from the others."""
        try:
            async with asyncio.timeout(within):
                return True, await asyncio.shield(future)
        except TimeoutError:
            return False, None


class FillNotices:
    """Wakes this process's waiters when a fill on any instance ends.

    One subscription to `channel` per process; a message is `<outcome> <key>`. Waiters register
    before they re-read the store, so a fill that ends in between is seen either way.
    """

    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self.channel = channel
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        self._ready = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, resubscribing after connection losses."""
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("fill notices: subscription lost (%s); retrying", exc)
            finally:
                self._ready.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(1.0)

    def _dispatch(self, data: object) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if not isinstance(data, str):
            return
        outcome, _, key = data.partition(" ")
        for future in self._waiters.get(key, ()):
            if not future.done():
                future.set_result(outcome)

    async def ready(self, *, within: float) -> bool:
        """Whether the subscription is live (waiting at most `within` seconds for it)."""
        if self._ready.is_set():
            return True
        try:
            async with asyncio.timeout(within):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def register(self, key: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(future)
        return future

    def unregister(self, key: str, future: asyncio.Future[str]) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[key]

    async def publish(self, key: str, outcome: str) -> None:
        await self._client.publish(self.channel, f"{outcome} {key}")
