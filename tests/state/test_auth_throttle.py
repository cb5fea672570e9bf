"""Failed-authentication records in process and in Redis: the same answers, a bounded map, and the
in-process records taking over while Redis is unreachable."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from heliox.core.auth_throttle import ThrottlePolicy
from heliox.state.auth_throttle import AuthThrottle
from tests.support import FakeClock

T0 = 1_795_780_800.0
POLICY = ThrottlePolicy(max_failures=3, base_lockout=60.0, max_lockout=600.0)


async def _streak(throttle: AuthThrottle, address: str) -> list[tuple[int, float]]:
    return [await throttle.failed(address) for _ in range(4)]


async def test_memory_locks_out_after_the_allowed_failures_and_success_clears() -> None:
    clock = FakeClock(T0)
    throttle = AuthThrottle(POLICY, clock=clock)
    assert await _streak(throttle, "192.0.2.1") == [(1, 0), (2, 0), (3, 60), (4, 120)]
    standing = await throttle.standing("192.0.2.1")
    assert standing.streak and standing.locked_for == 120
    clock.now += 120
    assert (await throttle.standing("192.0.2.1")).locked_for == 0
    await throttle.succeeded("192.0.2.1")
    assert not (await throttle.standing("192.0.2.1")).streak
    assert (await throttle.standing("192.0.2.2")).locked_for == 0  # per address


async def test_the_map_of_addresses_is_capped() -> None:
    throttle = AuthThrottle(POLICY, clock=FakeClock(T0), max_addresses=100)
    for i in range(1000):
        await throttle.failed(f"2001:db8::{i:x}")
    assert len(throttle) == 100


async def test_redis_gives_the_same_answers_and_every_key_expires(
    redis_client: Any, redis_prefix: str
) -> None:
    throttle = AuthThrottle(POLICY, redis=redis_client, prefix=redis_prefix)
    address = "198.51.100.7"
    assert await _streak(throttle, address) == [(1, 0), (2, 0), (3, 60), (4, 120)]
    standing = await throttle.standing(address)
    assert standing.streak and 119 < standing.locked_for <= 120
    keys = [k async for k in redis_client.scan_iter(match=redis_prefix + "*")]
    assert len(keys) == 2
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= (120 + 600) * 1000
    assert len(throttle) == 0  # nothing kept in process while Redis answers
    await throttle.succeeded(address)
    assert [k async for k in redis_client.scan_iter(match=redis_prefix + "*")] == []
    assert await throttle.standing(address) == type(standing)(0.0, False)


async def test_with_redis_unreachable_the_process_keeps_the_records() -> None:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    errors: list[int] = []
    # Nothing listens on port 1; no retries, as the gateway's own client.
    client = aioredis.Redis(port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    throttle = AuthThrottle(
        POLICY,
        redis=client,
        prefix=f"t-{uuid.uuid4().hex[:6]}:",
        clock=FakeClock(T0),
        on_redis_error=lambda: errors.append(1),
    )
    try:
        assert await _streak(throttle, "192.0.2.9") == [(1, 0), (2, 0), (3, 60), (4, 120)]
        assert (await throttle.standing("192.0.2.9")).locked_for == 120
    finally:
        await client.aclose()
    assert len(errors) == 5


@pytest.mark.parametrize("address", ["{tag}", "a%7Bb", "unknown"])
async def test_addresses_cannot_move_the_hash_tag(
    redis_client: Any, redis_prefix: str, address: str
) -> None:
    throttle = AuthThrottle(POLICY, redis=redis_client, prefix=redis_prefix)
    await throttle.failed(address)
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match=redis_prefix + "*")])
    assert len(keys) == 1 and keys[0].count("{") == 1 and keys[0].count("}") == 1
