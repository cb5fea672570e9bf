"""The fill lock and fill notices the cache layer coordinates instances with (real Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from heliox.gateway.coalescing import STORED, FillNotices
from heliox.state.lock_redis import RedisLocks


async def test_one_holder_at_a_time_and_only_the_holder_releases(
    redis_client: Any, redis_prefix: str
) -> None:
    locks = RedisLocks(redis_client, prefix=redis_prefix)
    token = await locks.acquire("k", 10_000)
    assert token
    assert await locks.acquire("k", 10_000) is None
    assert not await locks.release("k", "not-the-owner")
    assert await locks.acquire("k", 10_000) is None  # a wrong token released nothing
    assert await locks.release("k", token)
    assert await locks.acquire("k", 10_000)


async def test_an_expired_lock_is_not_released_by_its_old_holder(
    redis_client: Any, redis_prefix: str
) -> None:
    locks = RedisLocks(redis_client, prefix=redis_prefix)
    old = await locks.acquire("k", 50)
    assert old
    deadline = time.monotonic() + 5
    new = None
    while new is None:
        assert time.monotonic() < deadline, "the lock never aged out"
        new = await locks.acquire("k", 10_000)
    assert not await locks.release("k", old)  # the new holder keeps its lock
    assert await locks.acquire("k", 10_000) is None
    assert await locks.release("k", new)


async def test_notices_wake_waiters_of_that_key_only(redis_client: Any, redis_prefix: str) -> None:
    notices = FillNotices(redis_client, redis_prefix + "fill")
    listener = asyncio.create_task(notices.run())
    try:
        assert await notices.ready(within=5)
        mine = notices.register("key-a")
        other = notices.register("key-b")
        await notices.publish("key-a", STORED)
        async with asyncio.timeout(5):
            assert await mine == STORED
        assert not other.done()
        notices.unregister("key-a", mine)
        notices.unregister("key-b", other)
        assert notices._waiters == {}  # nothing left behind once everyone unregistered
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
