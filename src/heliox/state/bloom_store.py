"""Negative cache: per-route rotating Bloom filters of responses known to be 404s.

Both stores compute bit positions with `heliox.core.bloom` (so they agree bit for bit) and are
sized from BLOOM_EXPECTED_ITEMS / BLOOM_FALSE_POSITIVE_RATE; see that module for the rotation
scheme, why each generation is sized for about p/2, and what a false positive costs. The item
should be the request's cache key, so tenants and variants never answer for each other.

Redis 7 has no BF.* commands: a generation is a plain string used as a bit array, read with
GETBIT and written with SETBIT in Lua. A lookup is one script call (one round trip) over both
live generations; a write is one script call that also counts items and sets a TTL of two
rotations. The Redis store raises `heliox.state.cache.CacheUnavailable` when Redis fails.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from heliox.core.bloom import (
    BloomParams,
    RotatingBloom,
    bloom_params,
    generation,
    generation_false_positive_rate,
    positions,
)
from heliox.state.cache_redis import REDIS_FAILURES, unavailable

__all__ = ["MemoryNegativeCache", "NegativeCache", "RedisNegativeCache"]

DEFAULT_ROTATION_SECONDS = 300.0


class NegativeCache(Protocol):
    async def might_contain(self, route: str, item: str, now: float) -> bool:
        """True when `item` was probably added to `route` in the last one to two rotations."""
        ...

    async def add(self, route: str, item: str, now: float) -> bool:
        """Remember `item`; False when it was already there or the generation is full."""
        ...

    async def clear(self, route: str) -> None:
        """Forget every item of `route` (after a write that may have created resources)."""
        ...


def _check(expected_items: int, false_positive_rate: float, rotation_seconds: float) -> None:
    if rotation_seconds <= 0:
        raise ValueError("rotation_seconds must be positive")
    bloom_params(expected_items, false_positive_rate)  # validates both


class MemoryNegativeCache:
    """NegativeCache in this process (embedded mode): two bytearray generations per route."""

    def __init__(
        self,
        *,
        expected_items: int,
        false_positive_rate: float,
        rotation_seconds: float = DEFAULT_ROTATION_SECONDS,
        hash_key: bytes = b"",
    ) -> None:
        _check(expected_items, false_positive_rate, rotation_seconds)
        self.expected_items = expected_items
        self.false_positive_rate = false_positive_rate
        self.rotation_seconds = rotation_seconds
        self._hash_key = hash_key
        self._routes: dict[str, RotatingBloom] = {}

    async def might_contain(self, route: str, item: str, now: float) -> bool:
        bloom = self._routes.get(route)
        return bloom is not None and bloom.might_contain(item, now)

    async def add(self, route: str, item: str, now: float) -> bool:
        bloom = self._routes.get(route)
        if bloom is None:
            bloom = self._routes[route] = RotatingBloom.sized(
                self.expected_items, self.false_positive_rate, self.rotation_seconds, self._hash_key
            )
        return bloom.add(item, now)

    async def clear(self, route: str) -> None:
        self._routes.pop(route, None)


def _lua(name: str) -> str:
    return resources.files("heliox.state").joinpath("lua", name).read_text("utf-8")


class RedisNegativeCache:
    """NegativeCache in Redis, shared by every instance. `prefix` namespaces its keys."""

    def __init__(
        self,
        client: Redis,
        *,
        expected_items: int,
        false_positive_rate: float,
        rotation_seconds: float = DEFAULT_ROTATION_SECONDS,
        prefix: str = "heliox:neg:",
        hash_key: bytes = b"",
    ) -> None:
        _check(expected_items, false_positive_rate, rotation_seconds)
        self.params: BloomParams = bloom_params(
            expected_items, generation_false_positive_rate(false_positive_rate)
        )
        self.rotation_seconds = rotation_seconds
        self.prefix = prefix
        self._hash_key = hash_key
        self._ttl_ms = max(1, round(2 * rotation_seconds * 1000))
        self._client = client
        self._check_script = client.register_script(_lua("bloom_check.lua"))
        self._add_script = client.register_script(_lua("bloom_add.lua"))
        self._clear_script = client.register_script(_lua("bloom_clear.lua"))

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc

    def _base(self, route: str) -> str:
        # Length-prefixed route: no route name can reach into another's keys. The sizes are in
        # the name so a filter resized by new settings starts empty instead of reading old bits
        # at new positions. The braces make it the hash tag of every key of the route's filter
        # (on a Redis Cluster the scripts need them in one slot); a brace in the route name only
        # ends the tag early, the same way for all of them.
        p = self.params
        return f"{self.prefix}{{{p.bits}.{p.hashes}:{len(route)}:{route}}}:"

    async def might_contain(self, route: str, item: str, now: float) -> bool:
        base = self._base(route)
        current = generation(now, self.rotation_seconds)
        bits = positions(item, self.params, self._hash_key)
        found = await self._eval(
            self._check_script, [f"{base}{current}", f"{base}{current - 1}"], bits
        )
        return bool(found)

    async def add(self, route: str, item: str, now: float) -> bool:
        base = self._base(route)
        current = generation(now, self.rotation_seconds)
        bits = positions(item, self.params, self._hash_key)
        added = await self._eval(
            self._add_script,
            [f"{base}{current}", f"{base}{current}:n", f"{base}gens"],
            [self.params.capacity, self._ttl_ms, current, *bits],
        )
        return int(added) == 1

    async def clear(self, route: str) -> None:
        base = self._base(route)
        await self._eval(self._clear_script, [f"{base}gens"], [base])
