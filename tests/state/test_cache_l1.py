"""Fresh entries kept in process (the Redis cache's L1): served only while fresh and only under
the removal generation they were read with; bounded by bytes."""

from __future__ import annotations

from typing import Any

import pytest

from heliox.state.admission import TOKEN_BUCKET, AdmissionRequest, LimitSpec
from heliox.state.admission_redis import RedisAdmission
from heliox.state.cache import CacheEntry
from heliox.state.cache_l1 import FreshEntries
from heliox.state.cache_memory import entry_size
from heliox.state.cache_redis import RedisCacheStore

NOW = 1_800_000_000.0


def entry(i: int = 0, *, fresh_for: float = 60, body: bytes = b"x" * 100) -> CacheEntry:
    return CacheEntry(
        status=200,
        headers=[(b"content-type", b"text/plain")],
        body=body,
        stored_at=NOW,
        fresh_until=NOW + fresh_for,
        stale_until=NOW + fresh_for + 30,
        error_until=NOW + fresh_for + 30,
        uri_key=f"u:{i}",
        route="demo",
        tenant_id=1,
        path=f"/items/{i}",
    )


def test_served_while_fresh_under_the_same_generation() -> None:
    fresh_entries = FreshEntries(1 << 20)
    e = entry()
    fresh_entries.put("k", e, b"7", NOW)
    assert fresh_entries.get("k", b"7", NOW + 59.9) is e
    assert fresh_entries.get("k", b"8", NOW + 1) is None  # a removal happened since: dropped
    assert len(fresh_entries) == 0 and fresh_entries.stored_bytes == 0
    fresh_entries.put("k", e, b"7", NOW)
    assert fresh_entries.get("k", b"7", NOW + 60) is None  # fresh_until reached
    assert len(fresh_entries) == 0


def test_discard_forgets_one_copy() -> None:
    fresh_entries = FreshEntries(1 << 20)
    fresh_entries.put("a", entry(1), b"7", NOW)
    fresh_entries.put("b", entry(2), b"7", NOW)
    fresh_entries.discard("a")
    fresh_entries.discard("missing")
    assert fresh_entries.get("a", b"7", NOW) is None
    assert fresh_entries.get("b", b"7", NOW) is not None
    assert (len(fresh_entries), fresh_entries.stored_bytes) == (1, entry_size("b", entry(2)))


def test_entries_that_are_not_fresh_or_too_big_are_not_kept() -> None:
    fresh_entries = FreshEntries(64 * 1024)
    fresh_entries.put("old", entry(fresh_for=-1), b"1", NOW)
    fresh_entries.put("big", entry(body=b"x" * 10_000), b"1", NOW)  # over an eighth of the budget
    assert len(fresh_entries) == 0
    fresh_entries.put("k", entry(), b"1", NOW)
    fresh_entries.put(
        "k", entry(fresh_for=-1), b"1", NOW
    )  # a newer, no longer fresh answer replaces it
    assert fresh_entries.get("k", b"1", NOW) is None and fresh_entries.stored_bytes == 0


def test_bounded_by_bytes_least_recently_used_out_first() -> None:
    # Entries 10..20 all have the same size (two-digit numbers in every field).
    size = entry_size("k10", entry(10))
    fresh_entries = FreshEntries(size * 10)
    for i in range(10, 20):
        fresh_entries.put(f"k{i}", entry(i), b"1", NOW)
    assert fresh_entries.get("k10", b"1", NOW) is not None  # now the most recently used
    fresh_entries.put("k20", entry(20), b"1", NOW)
    assert fresh_entries.stored_bytes <= fresh_entries.max_bytes
    assert fresh_entries.get("k11", b"1", NOW) is None  # the least recently used went
    assert fresh_entries.get("k10", b"1", NOW) is not None
    assert fresh_entries.evictions == 1


def test_a_zero_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FreshEntries(0)


@pytest.fixture
def shared(redis_client: Any, redis_prefix: str) -> tuple[RedisCacheStore, RedisAdmission]:
    """A Redis cache store and an admission backend reading its removal generation."""
    store = RedisCacheStore(redis_client, prefix=redis_prefix + "cache:")
    admission = RedisAdmission(
        redis_client, prefix=redis_prefix, cache_generation_key=store.generation_key
    )
    return store, admission


REQUEST = AdmissionRequest(subject="k:1", limit=LimitSpec(TOKEN_BUCKET, 1000, 1000))


async def generation(admission: RedisAdmission) -> bytes | None:
    return (await admission.admit(REQUEST)).cache_generation


@pytest.mark.redis
async def test_admission_reads_the_generation_that_removals_raise(
    shared: tuple[RedisCacheStore, RedisAdmission], redis_client: Any, redis_prefix: str
) -> None:
    store, admission = shared
    first = await generation(admission)
    assert first is not None and first.isdigit()  # created on first use
    assert await generation(admission) == first
    await store.set("k", entry(), NOW)
    assert await generation(admission) == first  # storing retires nothing
    await store.delete("k")
    second = await generation(admission)
    assert second is not None and int(second) > int(first)
    await store.purge(route="nothing-matches")
    third = await generation(admission)
    assert third is not None and int(third) > int(second)  # every purge counts
    # Without the key configured, nothing extra is read.
    plain = RedisAdmission(redis_client, prefix=redis_prefix)
    assert (await plain.admit(REQUEST)).cache_generation is None


@pytest.mark.redis
async def test_a_lost_generation_restarts_above_every_earlier_value(
    shared: tuple[RedisCacheStore, RedisAdmission], redis_client: Any
) -> None:
    store, admission = shared
    before = await generation(admission)
    assert before is not None
    await redis_client.delete(store.generation_key)
    after = await generation(admission)
    assert after is not None and int(after) > int(before)
