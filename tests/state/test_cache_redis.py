"""The Redis store's own guarantees: one round trip per read, TTLs, format, bounded purges."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from heliox.state.cache import CacheEntry
from heliox.state.cache_redis import RedisCacheStore, decode_entry, encode_entry


def entry(now: float, i: int = 0, **changes: Any) -> CacheEntry:
    base = CacheEntry(
        status=200,
        headers=[(b"content-type", b"text/plain")],
        body=b"body %d" % i,
        stored_at=now,
        fresh_until=now + 60,
        stale_until=now + 90,
        error_until=now + 300,
        uri_key=f"u:{i}",
        route="demo",
        tenant_id=1,
        tags=("t",),
        path=f"/items/{i}",
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


class CountingClient:
    """Counts the commands a store sends (each is one round trip outside a pipeline)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.commands: list[str] = []
        original = client.execute_command

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.commands.append(str(args[0]))
            return await original(*args, **kwargs)

        client.execute_command = counted


async def test_get_is_exactly_one_round_trip(redis_client: Any, redis_prefix: str) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix)
    now = time.time()
    await store.set("c:1", entry(now), now)
    counter = CountingClient(redis_client)
    assert await store.get("c:1") is not None
    assert await store.get("c:missing") is None
    assert counter.commands == ["GET", "GET"]


async def test_set_delete_and_stats_are_one_script_call_each(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix)
    now = time.time()
    await store.set("c:0", entry(now), now)  # scripts are loaded by now
    counter = CountingClient(redis_client)
    await store.set("c:1", entry(now, 1), now)
    await store.delete("c:1")
    await store.stats()
    assert counter.commands == ["EVALSHA", "EVALSHA", "EVALSHA"]


async def test_entry_ttl_follows_its_windows(redis_client: Any, redis_prefix: str) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix, ttl_margin=2.0)
    now = time.time()
    await store.set("c:1", entry(now, stale_until=now + 90, error_until=now + 30), now)
    ttl_ms = await redis_client.pttl(redis_prefix + "e:c:1")
    assert 90_000 < ttl_ms <= 92_000  # max(stale, error) plus the margin
    # Synthetic times work: only the difference to `now` matters.
    await store.set("c:2", entry(1000.0, 2), 1000.0)
    assert 301_000 < await redis_client.pttl(redis_prefix + "e:c:2") <= 302_000


async def test_indexes_expire_with_their_entries(redis_client: Any, redis_prefix: str) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix, ttl_margin=0.0)
    now = time.time()
    await store.set("c:1", entry(now, 1, tenant_id=4, tags=("a", "b")), now)
    index_keys = [
        redis_prefix + suffix for suffix in ("i:r:demo", "i:u:u:1", "i:t:4", "i:g:a", "i:g:b")
    ]
    for name in index_keys:
        assert 0 < await redis_client.pttl(name) <= 300_000, name
    # A longer-lived member extends the index, a shorter one never shortens it.
    await store.set("c:2", entry(now, 2, error_until=now + 900), now)
    await store.set("c:3", entry(now, 3, error_until=now + 10), now)
    assert await redis_client.pttl(redis_prefix + "i:r:demo") > 800_000


async def test_purge_walks_large_indexes_in_bounded_steps(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix, purge_batch=50)
    now = time.time()
    for i in range(600):
        await store.set(f"c:{i}", entry(now, i, tenant_id=i % 3), now)
    counter = CountingClient(redis_client)
    # Walks the tenant's index (the most selective): 200 members, 50 per step, then an empty
    # step that ends the walk.
    assert await store.purge(route="demo", tenant_id=1) == 200
    assert len(counter.commands) == 5
    assert (await store.stats()).entries == 400
    # Members that stay move the cursor on: 400 kept of the route's 400, 9 steps.
    counter.commands.clear()
    assert await store.purge(route="demo", prefix="/nothing") == 0
    assert len(counter.commands) == 9
    assert await store.purge(route="demo") == 400


async def test_purge_tidies_memberships_of_vanished_entries(
    redis_client: Any, redis_prefix: str
) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix)
    now = time.time()
    await store.set("c:1", entry(now, 1), now)
    await store.set("c:2", entry(now, 2), now)
    await redis_client.delete(redis_prefix + "e:c:1")  # as if evicted under maxmemory
    assert await store.purge(tag="t") == 1
    assert await redis_client.zcard(redis_prefix + "i:g:t") == 0
    assert await store.stats() == type(await store.stats())(entries=0, bytes=0)


async def test_foreign_or_damaged_data_is_a_miss(redis_client: Any, redis_prefix: str) -> None:
    store = RedisCacheStore(redis_client, prefix=redis_prefix)
    await redis_client.set(redis_prefix + "e:c:1", b"not an entry")
    assert await store.get("c:1") is None
    good = encode_entry(entry(time.time()))
    await redis_client.set(redis_prefix + "e:c:2", good[:20])
    assert await store.get("c:2") is None
    assert await store.delete("c:1") is True  # and it can still be removed


async def test_a_decoding_client_is_refused(redis_server: str) -> None:
    client = aioredis.Redis.from_url(redis_server, decode_responses=True)
    try:
        with pytest.raises(ValueError):
            RedisCacheStore(client)
    finally:
        await client.aclose()


async def test_prefixes_keep_stores_apart(redis_client: Any, redis_prefix: str) -> None:
    a = RedisCacheStore(redis_client, prefix=redis_prefix + "a:")
    b = RedisCacheStore(redis_client, prefix=redis_prefix + "b:")
    now = time.time()
    await a.set("c:1", entry(now), now)
    assert await b.get("c:1") is None
    assert await b.purge(all=True) == 0
    assert await a.get("c:1") is not None


_header = st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=16))


@given(
    status=st.integers(100, 599),
    headers=st.lists(_header, max_size=6),
    body=st.binary(max_size=300),
    times=st.lists(st.floats(0, 4e9, allow_nan=False), min_size=4, max_size=4),
    tenant=st.one_of(st.none(), st.integers(0, 2**53)),
    tags=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
    path=st.text(max_size=20),
    age=st.integers(0, 2**31),
)
def test_encoding_round_trips_exactly(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    times: list[float],
    tenant: int | None,
    tags: tuple[str, ...],
    path: str,
    age: int,
) -> None:
    stored, fresh, stale, error = times
    original = CacheEntry(
        status, headers, body, stored, fresh, stale, error, "u:x", "route", tenant, tags, path, age
    )
    assert decode_entry(encode_entry(original)) == original


def test_decode_rejects_garbage() -> None:
    assert decode_entry(b"") is None
    assert decode_entry(b"HXC1\x00\x00\x00\x05\x00\x00\x00\x00{bad}") is None
    assert decode_entry(b"XXXX" + encode_entry(entry(0.0))[4:]) is None
