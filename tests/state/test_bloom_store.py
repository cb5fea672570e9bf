"""Negative-cache stores: memory and Redis behave alike, time passed in as `now`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from heliox.state.bloom_store import MemoryNegativeCache, NegativeCache, RedisNegativeCache

ROTATION = 60.0
T0 = 1_700_000_040.0  # the start of a generation (a multiple of 60)


def make(client: Any = None, prefix: str = "", **kwargs: Any) -> NegativeCache:
    """A Redis negative cache with `client`, else a memory one."""
    options: dict[str, Any] = {
        "expected_items": 1000,
        "false_positive_rate": 0.01,
        "rotation_seconds": ROTATION,
        **kwargs,
    }
    if client is None:
        return MemoryNegativeCache(**options)
    return RedisNegativeCache(client, prefix=prefix, **options)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def factory(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield make
        return
    # Resolved here, outside the event loop the async tests run in.
    client = request.getfixturevalue("redis_client")
    prefix = request.getfixturevalue("redis_prefix")
    yield lambda **kwargs: make(client, prefix, **kwargs)


async def test_remembers_what_was_added(factory: Any) -> None:
    neg = factory()
    assert not await neg.might_contain("demo", "c:404", T0)
    assert await neg.add("demo", "c:404", T0) is True
    assert await neg.add("demo", "c:404", T0) is False  # already there
    assert await neg.might_contain("demo", "c:404", T0 + 1)
    assert not await neg.might_contain("demo", "c:200", T0 + 1)


async def test_routes_are_separate(factory: Any) -> None:
    neg = factory()
    await neg.add("a", "c:1", T0)
    assert not await neg.might_contain("b", "c:1", T0)
    # Route names cannot reach into each other's keys.
    await neg.add("x:1", "c:2", T0)
    assert not await neg.might_contain("x", "c:2", T0)


async def test_entries_age_out_after_one_to_two_rotations(factory: Any) -> None:
    neg = factory()
    await neg.add("demo", "early", T0)
    await neg.add("demo", "late", T0 + 59)
    assert await neg.might_contain("demo", "early", T0 + 119)
    assert await neg.might_contain("demo", "late", T0 + 60)
    assert not await neg.might_contain("demo", "early", T0 + 120)
    assert not await neg.might_contain("demo", "late", T0 + 120)


async def test_clear_forgets_a_route(factory: Any) -> None:
    neg = factory()
    await neg.add("demo", "c:1", T0)
    await neg.add("demo", "c:2", T0 + 60)
    await neg.add("other", "c:1", T0)
    await neg.clear("demo")
    assert not await neg.might_contain("demo", "c:1", T0 + 60)
    assert not await neg.might_contain("demo", "c:2", T0 + 60)
    assert await neg.might_contain("other", "c:1", T0)
    await neg.clear("never-used")  # harmless


async def test_a_full_generation_takes_no_more(factory: Any) -> None:
    neg = factory(expected_items=100)
    results = [await neg.add("demo", f"c:{i}", T0) for i in range(130)]
    assert results.count(True) == 100 and results[100:] == [False] * 30
    assert not await neg.might_contain("demo", "c:129", T0)
    assert await neg.add("demo", "c:129", T0 + ROTATION)  # a new generation starts empty


async def test_memory_and_redis_answer_identically(redis_client: Any, redis_prefix: str) -> None:
    # Same sizing and bit positions: false positives included, the two agree item by item.
    memory = make(expected_items=200, hash_key=b"k")
    redis = make(redis_client, redis_prefix, expected_items=200, hash_key=b"k")
    rnd = random.Random(5)
    for i in range(200):
        item = f"c:{rnd.getrandbits(64)}"
        assert await memory.add("demo", item, T0) == await redis.add("demo", item, T0), i
    probes = [f"p:{rnd.getrandbits(64)}" for _ in range(3000)]
    mem = [await memory.might_contain("demo", p, T0) for p in probes]
    red = [await redis.might_contain("demo", p, T0) for p in probes]
    assert mem == red
    assert 0 < sum(mem) < 3000 * 0.02  # some false positives, near the configured 1%


async def test_redis_lookup_is_one_round_trip_and_keys_expire(
    redis_client: Any, redis_prefix: str
) -> None:
    neg = RedisNegativeCache(
        redis_client,
        prefix=redis_prefix,
        expected_items=1000,
        false_positive_rate=0.01,
        rotation_seconds=ROTATION,
    )
    await neg.might_contain("demo", "warm-up", T0)
    commands: list[str] = []
    original = redis_client.execute_command

    async def counted(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **kwargs)

    redis_client.execute_command = counted
    assert not await neg.might_contain("demo", "c:1", T0)
    assert commands == ["EVALSHA"]
    await neg.add("demo", "c:1", T0)
    keys = [k async for k in redis_client.scan_iter(match=redis_prefix + "*")]
    assert len(keys) == 3  # bits, count, generation ids
    for name in keys:
        assert 0 < await original("PTTL", name) <= 2 * ROTATION * 1000


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        MemoryNegativeCache(expected_items=0, false_positive_rate=0.01)
    with pytest.raises(ValueError):
        MemoryNegativeCache(expected_items=100, false_positive_rate=1.0)
    with pytest.raises(ValueError):
        MemoryNegativeCache(expected_items=100, false_positive_rate=0.01, rotation_seconds=0)
