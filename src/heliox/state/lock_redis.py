"""Short-lived exclusive locks in Redis, for work that must run once across all instances.

`SET key token NX PX ttl` takes a lock; only the holder of the random token can release it
(compare-and-delete in Lua), so a holder whose lock expired never deletes the next holder's.
The expiry is the lock's age limit: a holder that died or stalls loses it after `ttl_ms`.
A Redis failure raises `heliox.state.cache.CacheUnavailable`, as the cache stores do.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from heliox.state.cache_redis import REDIS_FAILURES, unavailable

__all__ = ["RedisLocks"]


class RedisLocks:
    """Named locks under `prefix`; the client may decode responses or not."""

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._client = client
        self.prefix = prefix
        source = resources.files("heliox.state").joinpath("lua", "lock_release.lua")
        self._release = client.register_script(source.read_text("utf-8"))

    async def acquire(self, name: str, ttl_ms: int) -> str | None:
        """The owner token when the lock was free and is now ours, else None."""
        token = secrets.token_hex(16)
        try:
            taken: Any = await self._client.set(
                self.prefix + name, token, nx=True, px=max(1, ttl_ms)
            )
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        return token if taken else None

    async def release(self, name: str, token: str) -> bool:
        """Release if still ours; False when it had expired (and may belong to someone else)."""
        try:
            released = await self._release(keys=[self.prefix + name], args=[token])
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        return bool(released)
