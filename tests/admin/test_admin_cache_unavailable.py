"""A purge while the cache's Redis is down is a 503 saying so, not a 500."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from heliox.admin.cache import _purge_key
from heliox.admin.errors import AdminError
from heliox.runtime import Runtime
from heliox.state.bloom_store import RedisNegativeCache
from heliox.state.cache_redis import RedisCacheStore
from tests.admin.admin_support import make_settings


async def test_purging_a_key_with_redis_down_is_a_503() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)  # nothing on 1
    runtime = Runtime(make_settings())  # never started: only its cache stores are used
    runtime.cache = RedisCacheStore(dead, prefix="t:")
    runtime.negative = RedisNegativeCache(dead, expected_items=100, false_positive_rate=0.01)
    try:
        with pytest.raises(AdminError) as raised:
            await _purge_key(runtime, "some-key")
        assert raised.value.status == 503
        assert "unavailable" in str(raised.value)
    finally:
        await dead.aclose()
        await runtime.engine.dispose()
