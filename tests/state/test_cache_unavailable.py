"""A failing Redis reaches the callers of the cache stores, the negative cache and the fill locks
as `CacheUnavailable` (what the gateway takes for a miss), never as the client's own errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from heliox.config import load_settings
from heliox.state.bloom_store import RedisNegativeCache
from heliox.state.cache import CacheEntry, CacheUnavailable
from heliox.state.cache_redis import RedisCacheStore
from heliox.state.lock_redis import RedisLocks
from heliox.state.redis_client import redis_client

DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture(params=["redis-py", "pipelined"])
async def dead_redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A client of a Redis that refuses connections: redis-py's own, and the gateway's."""
    if request.param == "redis-py":
        client: Any = Redis.from_url(DEAD, socket_connect_timeout=0.5)
    else:
        client = redis_client(load_settings(redis_url=DEAD, deployment_mode="demo"))
    try:
        yield client
    finally:
        await client.aclose()


def _entry() -> CacheEntry:
    return CacheEntry(
        status=200,
        headers=[],
        body=b"x",
        stored_at=0.0,
        fresh_until=60.0,
        stale_until=60.0,
        error_until=60.0,
        uri_key="u",
        route="r",
        tenant_id=None,
    )


def _calls(client: Any) -> list[Callable[[], Awaitable[object]]]:
    store = RedisCacheStore(client, prefix="t:")
    negative = RedisNegativeCache(client, expected_items=100, false_positive_rate=0.01)
    locks = RedisLocks(client, prefix="t:lock:")
    return [
        lambda: store.get("k"),
        lambda: store.generation(),
        lambda: store.set("k", _entry(), 1.0),
        lambda: store.delete("k"),
        lambda: store.purge(all=True),
        lambda: store.invalidate("u", None),
        lambda: store.stats(),
        lambda: negative.might_contain("r", "k", 1.0),
        lambda: negative.add("r", "k", 1.0),
        lambda: negative.clear("r"),
        lambda: locks.acquire("k", 1000),
        lambda: locks.release("k", "token"),
    ]


async def test_every_call_raises_cache_unavailable(dead_redis: Any) -> None:
    for index, call in enumerate(_calls(dead_redis)):
        with pytest.raises(CacheUnavailable) as raised:
            await call()
        assert raised.value.__cause__ is not None, index  # the client's error, for the logs
