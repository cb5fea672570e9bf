"""The in-process store's own guarantees: an LRU that stays under its byte cap."""

from __future__ import annotations

import gc
import tracemalloc

from heliox.state.cache import CacheEntry
from heliox.state.cache_memory import MemoryCacheStore, entry_size
from tests.support import FakeClock

NOW = 1_700_000_000.0


def entry(i: int, body: bytes = b"x" * 100, *, error: float = 300) -> CacheEntry:
    return CacheEntry(
        status=200,
        headers=[(b"content-type", b"application/json"), (b"etag", b'"%d"' % i)],
        body=body,
        stored_at=NOW,
        fresh_until=NOW + 60,
        stale_until=NOW + 90,
        error_until=NOW + error,
        uri_key=f"u:{i:032x}",
        route="demo",
        tenant_id=i % 7,
        tags=(f"t{i % 50}",),
        path=f"/items/{i}",
    )


def key(i: int) -> str:
    return f"c:{i:032x}"


async def test_stays_under_its_cap_with_many_distinct_keys() -> None:
    cap = 1024 * 1024
    store = MemoryCacheStore(max_bytes=cap, clock=FakeClock(NOW))
    for i in range(120_000):
        await store.set(key(i), entry(i), NOW)
        if i % 1000 == 0:
            assert (await store.stats()).bytes <= cap
    stats = await store.stats()
    assert stats.bytes <= cap
    assert stats.bytes > cap * 0.9  # it is used, not just emptied
    # The running total is the sum over what is actually held, and only recent keys survive.
    survivors = [i for i in range(120_000) if await store.get(key(i)) is not None]
    assert len(survivors) == stats.entries
    assert sum(entry_size(key(i), entry(i)) for i in survivors) == stats.bytes
    assert survivors == list(range(120_000 - len(survivors), 120_000))
    # Indexes shrink with the evictions: a purge finds only what is held.
    assert await store.purge(route="demo") == stats.entries
    assert await store.stats() == type(stats)(entries=0, bytes=0)


async def test_size_estimate_bounds_real_memory() -> None:
    cap = 2 * 1024 * 1024
    store = MemoryCacheStore(max_bytes=cap, clock=FakeClock(NOW))
    entries = [(key(i), entry(i)) for i in range(30_000)]  # built outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k, e in entries:
            await store.set(k, e, NOW)
        held = {k for k, _ in entries if k in store._lru}
        del entries  # only what the store holds stays alive
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (await store.stats()).bytes <= cap
    # Evicted entries were freed and the estimate is not an undercount of what remains.
    assert after - before <= cap * 1.1, (after - before, len(held))


async def test_least_recently_used_goes_first() -> None:
    one = entry_size(key(0), entry(0))
    store = MemoryCacheStore(max_bytes=one * 3, clock=FakeClock(NOW))
    for i in range(3):
        await store.set(key(i), entry(i), NOW)
    assert await store.get(key(0)) is not None  # 0 is now the most recent
    await store.set(key(3), entry(3), NOW)
    assert await store.get(key(1)) is None
    assert all([await store.get(key(i)) is not None for i in (0, 2, 3)])


async def test_an_entry_larger_than_the_cap_is_not_stored() -> None:
    store = MemoryCacheStore(max_bytes=10_000, clock=FakeClock(NOW))
    await store.set(key(1), entry(1), NOW)
    await store.set(key(2), entry(2, body=b"x" * 20_000), NOW)
    assert await store.get(key(2)) is None
    assert await store.get(key(1)) is not None  # nothing was evicted for it
    # Replacing an entry with an oversized version drops the old one: it is outdated.
    await store.set(key(1), entry(1, body=b"x" * 20_000), NOW)
    assert await store.get(key(1)) is None
    assert (await store.stats()).bytes == 0


async def test_expired_entries_go_lazily_on_the_injected_clock() -> None:
    clock = FakeClock(NOW)
    store = MemoryCacheStore(clock=clock)
    await store.set(key(1), entry(1, error=90), NOW)
    clock.now = NOW + 89.9
    assert await store.get(key(1)) is not None
    clock.now = NOW + 90
    assert (await store.stats()).entries == 1  # not yet noticed
    assert await store.get(key(1)) is None
    assert (await store.stats()).entries == 0


async def test_purge_skips_expired_entries_without_counting_them() -> None:
    clock = FakeClock(NOW)
    store = MemoryCacheStore(clock=clock)
    await store.set(key(1), entry(1, error=90), NOW)
    await store.set(key(2), entry(2, error=900), NOW)
    clock.now = NOW + 100
    assert await store.purge(route="demo") == 1
    assert (await store.stats()).entries == 0


async def test_zero_cap_stores_nothing() -> None:
    store = MemoryCacheStore(max_bytes=0, clock=FakeClock(NOW))
    await store.set(key(1), entry(1), NOW)
    assert await store.get(key(1)) is None
