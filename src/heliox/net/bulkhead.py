"""Bulkheads around the upstream connections: one slow upstream or one busy key hurts only itself.

Two limits, checked before an upstream request is sent and held until its response is released
(HTTP/1.1: one request is one connection for that long):

- per route, at most `limit` upstream requests at once (the route's `max_upstream_connections`,
  else `UPSTREAM_POOL_SIZE`). A request that finds them all in use waits, first come first
  served, at most `wait` seconds (`UPSTREAM_POOL_TIMEOUT`) and is then refused. Every route
  has its own: one whose upstream hangs cannot take the connections of any other.
- per API key, at most `key_limit` upstream requests at once (`UPSTREAM_MAX_REQUESTS_PER_KEY`),
  counted across routes. A request beyond it waits the same way for one of the key's own
  requests to finish. It was refused at once before, and that misfired on ordinary traffic: a
  single service calling through one key with 200 connections (a common client pool size) saw
  a third of its requests answered 503 while the route had connections to spare. Waiting keeps
  the cap's purpose, the other keys' share of each route, and turns a burst into queueing
  rather than errors; a flood still ends in 503 after the bounded wait.

Envoy's per-cluster circuit breakers (max_requests, with pending requests queued) are the model;
like them the limits are per process. Both maps hold only what is in flight or waiting: an
entry is dropped when both return to zero, so their size is bounded by the requests in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Bulkheads", "Busy", "Permit"]


class Busy(Exception):
    """No permit: `reason` is "key" (the key's cap) or "route" (the route's connections)."""

    def __init__(self, reason: str, limit: int) -> None:
        super().__init__(f"{reason} limit of {limit} reached")
        self.reason = reason
        self.limit = limit


class _Gate:
    """In-flight requests of one route (or key) and the requests waiting for one of them."""

    __slots__ = ("active", "limit", "waiters")

    def __init__(self, limit: int) -> None:
        self.active = 0
        self.limit = limit
        self.waiters: deque[asyncio.Future[None]] = deque()


class Permit:
    """One upstream request's share of its route and key; `release` is idempotent."""

    __slots__ = ("_key_id", "_owner", "_route_id")

    def __init__(self, owner: Bulkheads | None, route_id: int, key_id: int | None) -> None:
        self._owner = owner
        self._route_id = route_id
        self._key_id = key_id

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self._route_id, self._key_id)


class Bulkheads:
    def __init__(self, *, route_limit: int, key_limit: int, wait: float) -> None:
        self.route_limit = route_limit
        self.key_limit = key_limit
        self.wait = wait
        self._gates: dict[int, _Gate] = {}  # by route id
        self._keys: dict[int, _Gate] = {}  # by key id

    def in_flight(self) -> tuple[int, int]:
        """(routes, keys) with upstream requests in flight or waiting: both return to zero when
        idle."""
        return len(self._gates), len(self._keys)

    async def acquire(self, route_id: int, limit: int | None, key_id: int | None) -> Permit:
        """A permit for one upstream request of `route_id` (its limit, or None for the default)
        on behalf of `key_id` (None: no key, as on a public route); raises Busy."""
        if key_id is not None:
            await self._enter(self._keys, key_id, self.key_limit, "key")
        try:
            await self._enter(self._gates, route_id, limit or self.route_limit, "route")
        except BaseException:
            if key_id is not None:
                self._leave(self._keys, key_id)
            raise
        return Permit(self, route_id, key_id)

    async def _enter(self, gates: dict[int, _Gate], ident: int, limit: int, reason: str) -> None:
        gate = gates.get(ident)
        if gate is None:
            gate = gates[ident] = _Gate(limit)
        gate.limit = limit  # a changed route setting takes effect with its next request
        if gate.active < limit and not gate.waiters:
            gate.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the wait ended: a timeout keeps it, a
                # cancellation gives it back.
                if isinstance(exc, TimeoutError):
                    return
                self._leave(gates, ident)
                raise
            waiter.cancel()
            with contextlib.suppress(ValueError):  # a release may have skipped it already
                gate.waiters.remove(waiter)
            if not gate.active and not gate.waiters and gates.get(ident) is gate:
                del gates[ident]
            if isinstance(exc, TimeoutError):
                raise Busy(reason, limit) from None
            raise

    def _release(self, route_id: int, key_id: int | None) -> None:
        self._leave(self._gates, route_id)
        if key_id is not None:
            self._leave(self._keys, key_id)

    @staticmethod
    def _leave(gates: dict[int, _Gate], ident: int) -> None:
        gate = gates.get(ident)
        if gate is None:
            return
        gate.active -= 1
        # Hand freed slots to the longest waiters; `active` counts them from now on.
        while gate.waiters and gate.active < gate.limit:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                gate.active += 1
        if not gate.active and not gate.waiters:
            del gates[ident]
