"""One suite, every CacheStore: the memory and Redis stores must behave the same.

The memory store runs on a fake clock. Entries carry absolute times, so the Redis store is given
synthetic `now` values too; only its key TTLs follow real time (short ones are polled for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from heliox.core.cachekey import cache_key, uri_key
from heliox.core.variants import VariantIndex
from heliox.state.cache import CacheEntry, CacheStats, CacheStore
from heliox.state.cache_memory import MemoryCacheStore
from heliox.state.cache_redis import RedisCacheStore
from tests.support import FakeClock


@dataclass
class Harness:
    store: CacheStore
    now: Callable[[], float]
    wait_until_expired: Callable[[str, CacheEntry], Awaitable[None]]


async def _poll_until_gone(store: CacheStore, key: str, deadline: float) -> None:
    while await store.get(key) is not None:
        assert time.monotonic() < deadline, "entry outlived its TTL"
        await asyncio.sleep(0.02)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ],
    name="h",
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = FakeClock(1_700_000_000.0)
        memory = MemoryCacheStore(max_bytes=8 * 1024 * 1024, clock=clock)

        async def advance(key: str, entry: CacheEntry) -> None:
            clock.now = entry.expires_at + 0.001

        yield Harness(memory, clock, advance)
        return
    if request.param == "redis-cluster":
        # Three masters: the store's shards, and so a purge's steps, span all of them.
        client: Any = request.getfixturevalue("redis_cluster_client")
        prefix: str = request.getfixturevalue("redis_cluster_prefix")
    else:
        client = request.getfixturevalue("redis_client")
        prefix = request.getfixturevalue("redis_prefix")
    redis_store = RedisCacheStore(client, prefix=prefix, ttl_margin=0.0, purge_batch=3)

    async def wait(key: str, entry: CacheEntry) -> None:
        await _poll_until_gone(redis_store, key, time.monotonic() + 5)

    yield Harness(redis_store, time.time, wait)


def make_entry(
    now: float,
    *,
    route: str = "demo",
    path: str = "/items/1",
    query: bytes = b"",
    tenant: int | None = 1,
    tags: tuple[str, ...] = (),
    body: bytes = b"{}",
    fresh: float = 60,
    stale: float = 90,
    error: float = 300,
) -> CacheEntry:
    return CacheEntry(
        status=200,
        headers=[(b"content-type", b"application/json")],
        body=body,
        stored_at=now,
        fresh_until=now + fresh,
        stale_until=now + stale,
        error_until=now + error,
        uri_key=uri_key(route, path, query),
        route=route,
        tenant_id=tenant,
        tags=tags,
        path=path,
    )


def key_of(entry: CacheEntry, *, vary: bytes | None = None, query: bytes = b"") -> str:
    return cache_key("GET", entry.route, entry.path, query, [("accept", vary)], entry.tenant_id)


async def put(h: Harness, entry: CacheEntry, **kwargs: Any) -> str:
    key = key_of(entry, **kwargs)
    await h.store.set(key, entry, h.now())
    return key


async def test_roundtrip_is_exact_for_binary_bodies_and_duplicate_headers(h: Harness) -> None:
    now = h.now()
    entry = replace(
        make_entry(now, tags=("product-1", "catalogue"), tenant=None, path="/é/x"),
        status=203,
        headers=[
            (b"set-thing", b"a"),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
            (b"x-bin", bytes(range(1, 32)) + b"\x80\xff"),
            (b"etag", b'"v1"'),
            (b"last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
        body=bytes(range(256)) * 40,
        age_at_store=17,
    )
    key = await put(h, entry)
    got = await h.store.get(key)
    assert got == entry
    assert got is not None
    assert got.etag == b'"v1"' and got.last_modified == b"Sun, 06 Nov 1994 08:49:37 GMT"


async def test_empty_body_and_no_headers(h: Harness) -> None:
    entry = replace(make_entry(h.now()), headers=[], body=b"")
    key = await put(h, entry)
    assert await h.store.get(key) == entry


async def test_miss(h: Harness) -> None:
    assert await h.store.get("c:" + "0" * 32) is None
    assert await h.store.delete("c:" + "0" * 32) is False


async def test_overwrite_replaces_entry_and_its_indexes(h: Harness) -> None:
    now = h.now()
    first = make_entry(now, tags=("old",), body=b"one")
    key = await put(h, first)
    second = replace(first, tags=("new",), body=b"two", tenant_id=1)
    await h.store.set(key, second, now)
    assert await h.store.get(key) == second
    assert (await h.store.stats()).entries == 1
    assert await h.store.purge(tag="old") == 0
    assert await h.store.get(key) == second
    assert await h.store.purge(tag="new") == 1
    assert await h.store.get(key) is None


async def test_delete(h: Harness) -> None:
    key = await put(h, make_entry(h.now()))
    assert await h.store.delete(key) is True
    assert await h.store.get(key) is None
    assert await h.store.delete(key) is False
    assert (await h.store.stats()).entries == 0


async def _population(h: Harness) -> dict[str, str]:
    now = h.now()
    entries = {
        "a1": make_entry(now, route="a", path="/items/1", tenant=1, tags=("t1", "all")),
        "a2": make_entry(now, route="a", path="/items/2", tenant=2, tags=("t2", "all")),
        "a3": make_entry(now, route="a", path="/other/3", tenant=1, tags=("all",)),
        "b1": make_entry(now, route="b", path="/items/1", tenant=1, tags=("t1",)),
        "b2": make_entry(now, route="b", path="/items/9", tenant=None),
    }
    return {name: await put(h, entry) for name, entry in entries.items()}


async def _alive(h: Harness, keys: dict[str, str]) -> set[str]:
    return {name for name, key in keys.items() if await h.store.get(key) is not None}


@pytest.mark.parametrize(
    ("criteria", "gone"),
    [
        ({"route": "a"}, {"a1", "a2", "a3"}),
        ({"tenant_id": 1}, {"a1", "a3", "b1"}),
        ({"tag": "t1"}, {"a1", "b1"}),
        ({"tag": "all"}, {"a1", "a2", "a3"}),
        ({"prefix": "/items/"}, {"a1", "a2", "b1", "b2"}),
        ({"route": "a", "prefix": "/items/"}, {"a1", "a2"}),
        ({"route": "a", "tenant_id": 1}, {"a1", "a3"}),
        ({"tag": "all", "tenant_id": 2}, {"a2"}),
        ({"tag": "t1", "route": "b", "prefix": "/items/1"}, {"b1"}),
        ({"route": "nope"}, set()),
        ({"tag": "nope"}, set()),
        ({"tenant_id": 99}, set()),
        ({"all": True}, {"a1", "a2", "a3", "b1", "b2"}),
    ],
)
async def test_purge_by_each_dimension(
    h: Harness, criteria: dict[str, Any], gone: set[str]
) -> None:
    keys = await _population(h)
    assert await h.store.purge(**criteria) == len(gone)
    assert await _alive(h, keys) == set(keys) - gone
    assert (await h.store.stats()).entries == len(keys) - len(gone)
    assert await h.store.purge(**criteria) == 0  # nothing left to match


async def test_purge_by_uri_key_removes_every_variant_and_tenant(h: Harness) -> None:
    now = h.now()
    entry = make_entry(now, path="/items/7", query=b"a=1&b=2")
    variants = [
        await put(h, entry, query=b"b=2&a=1", vary=b"text/html"),
        await put(h, entry, query=b"a=1&b=2", vary=b"application/json"),
        await put(h, replace(entry, tenant_id=2), query=b"a=1&b=2"),
    ]
    other = await put(h, make_entry(now, path="/items/7", query=b"a=1"), query=b"a=1")
    assert len(set(variants)) == 3
    target = uri_key("demo", "/items/7", b"b=2&a=1")
    assert await h.store.purge(uri_key=target, tenant_id=2) == 1
    assert await h.store.purge(uri_key=target) == 2
    assert [await h.store.get(k) for k in variants] == [None, None, None]
    assert await h.store.get(other) is not None


async def test_invalidate_removes_what_the_writer_is_served_only(h: Harness) -> None:
    """After a write: the writer tenant's entries of the URL and the shared ones go, another
    tenant's stay; a writer without a tenant reaches only the shared ones."""
    now = h.now()
    entry = make_entry(now, path="/items/8")
    keys = {
        tenant: await put(h, replace(entry, tenant_id=tenant), vary=vary)
        for tenant, vary in ((1, b"a"), (2, b"a"), (None, b"a"), (12, b"a"))
    }
    second_variant = await put(h, replace(entry, tenant_id=1), vary=b"b")
    elsewhere = await put(h, make_entry(now, path="/items/9", tenant=None))
    target = uri_key("demo", "/items/8", b"")

    assert await h.store.invalidate(target, 1) == 3  # both of tenant 1's variants, the shared
    assert await h.store.get(keys[1]) is None and await h.store.get(second_variant) is None
    assert await h.store.get(keys[None]) is None
    for kept in (keys[2], keys[12], elsewhere):
        assert await h.store.get(kept) is not None

    await put(h, replace(entry, tenant_id=None), vary=b"a")
    assert await h.store.invalidate(target, None) == 1  # the shared entry only
    assert await h.store.get(keys[2]) is not None and await h.store.get(keys[12]) is not None
    assert await h.store.invalidate(target, 2) == 1
    assert await h.store.invalidate(target, 99) == 0
    assert await h.store.get(keys[12]) is not None


async def test_purge_needs_criteria(h: Harness) -> None:
    with pytest.raises(ValueError):
        await h.store.purge()
    with pytest.raises(ValueError):
        await h.store.purge(all=True, route="a")


async def test_entry_lives_through_its_error_window(h: Harness) -> None:
    now = h.now()
    entry = make_entry(now, fresh=-20, stale=-10, error=120)  # stale already, errors still ok
    key = await put(h, entry)
    assert await h.store.get(key) == entry


async def test_expiry_past_the_stale_and_error_windows(h: Harness) -> None:
    now = h.now()
    # Half a second: long enough to read it back on a loaded machine, short enough to wait out.
    entry = make_entry(now, fresh=0.25, stale=0.5, error=0.5)
    key = await put(h, entry)
    assert await h.store.get(key) == entry
    await h.wait_until_expired(key, entry)
    assert await h.store.get(key) is None
    assert (await h.store.stats()).entries == 0


async def test_setting_an_already_expired_entry_removes_the_old_one(h: Harness) -> None:
    now = h.now()
    key = await put(h, make_entry(now))
    expired = make_entry(now - 1000, fresh=1, stale=2, error=3)
    await h.store.set(key, expired, now)
    assert await h.store.get(key) is None
    assert (await h.store.stats()).entries == 0


async def test_stats_count_entries_and_bytes(h: Harness) -> None:
    assert await h.store.stats() == CacheStats(entries=0, bytes=0)
    now = h.now()
    small = await put(h, make_entry(now, path="/s", body=b"x" * 10))
    after_small = await h.store.stats()
    big = await put(h, make_entry(now, path="/b", body=b"x" * 10_000))
    after_big = await h.store.stats()
    assert after_small.entries == 1 and after_big.entries == 2
    assert after_small.bytes > 10
    assert after_big.bytes - after_small.bytes >= 10_000
    await h.store.delete(big)
    assert await h.store.stats() == after_small
    await h.store.purge(route="demo")
    assert (await h.store.stats()).bytes == 0
    assert await h.store.get(small) is None


async def test_many_entries_purged_in_batches(h: Harness) -> None:
    now = h.now()
    keys = [
        await put(h, make_entry(now, path=f"/p/{i}", tenant=i % 2, tags=("bulk",)))
        for i in range(40)
    ]
    assert await h.store.purge(tag="bulk", tenant_id=1) == 20
    alive = [k for k in keys if await h.store.get(k) is not None]
    assert len(alive) == 20
    assert await h.store.purge(all=True) == 20
    assert (await h.store.stats()).entries == 0


async def test_non_ascii_names_index_and_purge(h: Harness) -> None:
    now = h.now()
    entry = make_entry(now, route="démo", path="/café/1", tags=("thé",), tenant=3)
    key = await put(h, entry)
    assert await h.store.get(key) == entry
    assert await h.store.purge(route="démo", prefix="/caf") == 1
    await put(h, entry)
    assert await h.store.purge(tag="thé") == 1
    await put(h, entry)
    assert await h.store.purge(prefix="/café/") == 1


# --- variant index records ------------------------------------------------------------------
def _index_entry(now: float, index: VariantIndex, *, tenant: int | None = 1) -> CacheEntry:
    """A URL's variant index as the cache layer stores it: status 0, the index as the body."""
    return replace(
        make_entry(now, tenant=tenant, body=index.encode()),
        status=0,
        headers=[],
        fresh_until=now + 300,
        stale_until=now + 300,
        error_until=now + 300,
    )


async def test_variant_index_record_roundtrips_and_purges_with_its_variants(h: Harness) -> None:
    now = h.now()
    gzip, plain = make_entry(now, body=b"gz", tags=("t1",)), make_entry(now, body=b"id")
    keys = [await put(h, gzip, vary=b"gzip"), await put(h, plain, vary=b"identity")]
    index = VariantIndex(("accept-encoding",), tuple(keys), ("gzip", "identity"))
    primary = key_of(gzip)
    await h.store.set(primary, _index_entry(now, index), now)
    got = await h.store.get(primary)
    assert got is not None and got.status == 0
    assert VariantIndex.decode(got.body) == index
    # Same URI key, route, tenant and path as its variants: a purge by URL takes them all.
    assert await h.store.purge(uri_key=gzip.uri_key) == 3
    assert [await h.store.get(k) for k in (primary, *keys)] == [None, None, None]
    for k in keys:
        await h.store.set(k, make_entry(now), now)
    await h.store.set(primary, _index_entry(now, index), now)
    assert await h.store.invalidate(gzip.uri_key, 1) == 3
    for k in keys:
        await h.store.set(k, make_entry(now), now)
    await h.store.set(primary, _index_entry(now, index), now)
    assert await h.store.purge(route="demo") == 3
    assert (await h.store.stats()).entries == 0


async def test_set_drops_the_variants_it_is_told_to_without_moving_the_generation(
    h: Harness,
) -> None:
    now = h.now()
    entry = make_entry(now)
    old, kept = await put(h, entry, vary=b"old"), await put(h, entry, vary=b"kept")
    before = await h.store.generation()
    primary = key_of(entry)
    index = VariantIndex(("accept",), (kept,), ())
    stored = await h.store.set(
        primary, _index_entry(now, index), now, generation=before, drop=(old, "c:" + "0" * 32)
    )
    assert stored is True
    assert await h.store.get(old) is None
    assert await h.store.get(kept) == entry
    assert await h.store.generation() == before  # not a removal readers must hear about
    stats = await h.store.stats()
    assert stats.entries == 2
    # A store refused for a moved generation drops nothing either.
    await h.store.delete("c:" + "1" * 32)
    assert await h.store.set(primary, entry, now, generation=before, drop=(kept,)) is False
    assert await h.store.get(kept) == entry
