"""One suite, both admission backends: memory and Redis must decide identically.

Both run on the same fake clock: the memory backend reads it directly; the Redis backend sends it
to its scripts in place of Redis TIME (its test-only `clock` argument), so every scenario is exact
on both. The concurrency tests also run on real time (Redis TIME) with bounds. Every Redis key a
test leaves behind must carry a TTL (checked when each Redis test ends).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.asyncio as aioredis

from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    RATE,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    AdmissionBackend,
    AdmissionRequest,
    AdmissionResult,
    LimitSpec,
)
from heliox.state.admission_memory import MemoryAdmission
from heliox.state.admission_redis import RedisAdmission
from tests.cluster_support import LocalCluster
from tests.support import FakeClock

T0 = datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()
NY = "America/New_York"


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=ZoneInfo(tz)).timestamp()


Factory = Callable[..., AdmissionBackend]


@dataclass
class Harness:
    kind: str
    clock: FakeClock
    build: Factory
    made: list[AdmissionBackend] = field(default_factory=list)

    def backend(self, tz: str = "UTC", real_time: bool = False) -> AdmissionBackend:
        b = self.build(None if real_time else self.clock, tz)
        self.made.append(b)
        return b


@pytest.fixture
async def pooled_client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    """A client whose pool waits for a free connection: the default pool refuses the 101st
    concurrent command, and 1000 concurrent admits are the point of some tests here."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_server, max_connections=32, timeout=10)
    client = aioredis.Redis(connection_pool=pool)
    try:
        yield client
    finally:
        await client.aclose()
        await pool.aclose()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        # The gateway's own client: its admission commands are encoded once per request shape
        # and sent through the pipe (heliox.state.admission_redis.AdmitCall).
        pytest.param("redis-pipe", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ],
    name="h",
)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = FakeClock(T0)
    if request.param == "memory":

        def memory(clk: FakeClock | None, tz: str) -> AdmissionBackend:
            if clk is None:
                return MemoryAdmission(quota_tz=tz)
            return MemoryAdmission(clock=clk, quota_tz=tz)

        yield Harness("memory", clock, memory)
        return
    if request.param == "redis-cluster":
        client: Any = request.getfixturevalue("redis_cluster_client")
        prefix: str = request.getfixturevalue("redis_cluster_prefix")
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        urls = [f"redis://127.0.0.1:{port}/0" for port in cluster.masters()]
    else:
        kind = "piped" if request.param == "redis-pipe" else "pooled_client"
        client = request.getfixturevalue(kind)
        prefix = request.getfixturevalue("redis_prefix")
        urls = [request.getfixturevalue("redis_server")]

    def on_redis(clk: FakeClock | None, tz: str) -> AdmissionBackend:
        return RedisAdmission(client, prefix=prefix, quota_tz=tz, clock=clk)

    yield Harness("redis", clock, on_redis)
    for url in urls:
        sync = redis.Redis.from_url(url)
        try:
            keys = list(sync.scan_iter(match=prefix + "*", count=1000))
            without_ttl = [k for k in keys if sync.pttl(k) == -1]
            assert without_ttl == [], f"keys left without a TTL: {without_ttl}"
        finally:
            sync.close()


def tb(rate: float, burst: int) -> LimitSpec:
    return LimitSpec(TOKEN_BUCKET, rate, burst)


def sw(rate: float, window: int) -> LimitSpec:
    return LimitSpec(SLIDING_WINDOW, rate, 1, window)


async def admit_n(b: AdmissionBackend, req: AdmissionRequest, n: int) -> list[AdmissionResult]:
    return [await b.admit(req) for _ in range(n)]


# --- rate limits ----------------------------------------------------------------------------


async def test_burst_then_refill(h: Harness) -> None:
    b = h.backend()
    req = AdmissionRequest("k:1", tb(2, 5), quota_subject="k:1")
    results = await admit_n(b, req, 6)
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0]
    refused = results[-1]
    assert refused.reason == RATE
    assert (refused.limit, refused.retry_after, refused.reset_after) == (5, 0.5, 2.5)
    assert refused.now == T0
    h.clock.advance(0.5)
    again = await b.admit(req)
    assert again.allowed
    assert again.remaining == 0
    h.clock.advance(10)
    assert (await b.admit(req)).remaining == 4  # refilled to the burst, not beyond


async def test_rejections_do_not_drain(h: Harness) -> None:
    b = h.backend()
    req = AdmissionRequest("k:1", tb(1, 3), quota_subject="k:1")
    await admit_n(b, req, 3)
    for _ in range(50):  # a client hammering every 19 ms for 0.95 s
        h.clock.advance(0.019)
        assert not (await b.admit(req)).allowed
    h.clock.advance(0.05)  # one second since the bucket emptied
    assert (await b.admit(req)).allowed


async def test_sliding_window_limits(h: Harness) -> None:
    b = h.backend()
    h.clock.now = T0 - T0 % 10  # a window boundary
    req = AdmissionRequest("ip:10.0.0.1", sw(1, 10))  # 10 per 10 s
    results = await admit_n(b, req, 11)
    assert [r.allowed for r in results] == [True] * 10 + [False]
    assert results[-1].limit == 10
    assert results[-1].retry_after == 11.0  # the next window, once the ten weigh nine
    h.clock.advance(15)  # halfway through the next window: the ten weigh five
    results = await admit_n(b, req, 6)
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert results[-1].retry_after == 1.0
    h.clock.advance(1.0)
    assert (await b.admit(req)).allowed


async def test_route_override_subjects_are_separate_counters(h: Harness) -> None:
    b = h.backend()
    key_wide = AdmissionRequest("k:1", tb(1, 1), quota_subject="k:1")
    route = AdmissionRequest("k:1:r:7", tb(1, 2), quota_subject="k:1")
    assert (await b.admit(key_wide)).allowed
    assert not (await b.admit(key_wide)).allowed
    assert [r.allowed for r in await admit_n(b, route, 3)] == [True, True, False]


async def test_no_limit_and_no_quota_is_always_admitted(h: Harness) -> None:
    b = h.backend()
    r = await b.admit(AdmissionRequest("ip:1.2.3.4"))
    assert r.allowed
    assert (r.limit, r.remaining, r.reason) == (0, 0, None)
    assert r.daily_remaining is None
    assert r.daily_reset is None


# --- quotas ---------------------------------------------------------------------------------


async def test_daily_quota_exhausts_then_resets_at_midnight_in_the_zone(h: Harness) -> None:
    b = h.backend(tz=NY)
    h.clock.now = local(NY, 2026, 11, 27, 23, 59)
    req = AdmissionRequest("k:1", daily_quota=3, quota_subject="k:1")
    results = await admit_n(b, req, 4)
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.daily_remaining for r in results] == [2, 1, 0, 0]
    refused = results[-1]
    assert refused.reason == DAILY_QUOTA
    assert refused.daily_reset == local(NY, 2026, 11, 28)
    assert refused.retry_after == 60.0
    h.clock.advance(59.999)
    assert not (await b.admit(req)).allowed
    h.clock.advance(0.001)
    fresh = await b.admit(req)
    assert fresh.allowed
    assert fresh.daily_remaining == 2
    usage = await b.usage("k:1", daily_limit=3)
    assert (usage.daily_used, usage.daily_remaining, usage.daily_period) == (1, 2, "d:2026-11-28")


async def test_a_25_hour_day_resets_after_25_hours(h: Harness) -> None:
    b = h.backend(tz=NY)
    h.clock.now = local(NY, 2026, 11, 1)  # DST ends at 02:00 this day
    r = await b.admit(AdmissionRequest("k:1", daily_quota=1, quota_subject="k:1"))
    assert r.daily_reset is not None
    assert r.daily_reset - r.now == 25 * 3600


async def test_monthly_quota_resets_on_the_first(h: Harness) -> None:
    b = h.backend(tz=NY)
    h.clock.now = local(NY, 2026, 11, 30, 23)
    req = AdmissionRequest("k:1", daily_quota=100, monthly_quota=2, quota_subject="k:1")
    results = await admit_n(b, req, 3)
    assert [r.allowed for r in results] == [True, True, False]
    refused = results[-1]
    assert refused.reason == MONTHLY_QUOTA
    assert refused.monthly_reset == local(NY, 2026, 12, 1)
    assert refused.retry_after == 3600.0
    assert refused.daily_remaining == 98  # the refused request took no daily quota either
    h.clock.now = local(NY, 2026, 12, 1)
    ok = await b.admit(req)
    assert ok.allowed
    assert (ok.monthly_remaining, ok.daily_remaining) == (1, 99)


async def test_rate_limited_requests_use_no_quota(h: Harness) -> None:
    b = h.backend()
    req = AdmissionRequest(
        "k:1", tb(0.001, 2), daily_quota=5, monthly_quota=50, quota_subject="k:1"
    )
    results = await admit_n(b, req, 10)
    assert sum(r.allowed for r in results) == 2
    assert {r.reason for r in results[2:]} == {RATE}
    assert results[-1].daily_remaining == 3
    usage = await b.usage("k:1", daily_limit=5, monthly_limit=50)
    assert (usage.daily_used, usage.monthly_used) == (2, 2)
    assert (usage.daily_remaining, usage.monthly_remaining) == (3, 48)


async def test_quota_refusals_take_no_rate_token(h: Harness) -> None:
    b = h.backend()
    capped = AdmissionRequest("k:1", tb(0.001, 5), daily_quota=1, quota_subject="k:1")
    assert (await b.admit(capped)).remaining == 4
    refused = await b.admit(capped)
    assert refused.reason == DAILY_QUOTA
    assert refused.remaining == 4  # the limiter as it stands, untouched
    # Same limiter without the quota: only one token was ever taken.
    uncapped = AdmissionRequest("k:1", tb(0.001, 5), quota_subject="k:1")
    assert (await b.admit(uncapped)).remaining == 3


async def test_cost_counts_against_limit_and_quota(h: Harness) -> None:
    b = h.backend()
    req = AdmissionRequest("k:1", tb(1, 10), daily_quota=7, quota_subject="k:1", cost=3)
    results = await admit_n(b, req, 3)
    assert [r.allowed for r in results] == [True, True, False]
    assert results[-1].reason == DAILY_QUOTA
    assert results[-1].daily_remaining == 1
    assert results[1].remaining == 4


# --- blocks ---------------------------------------------------------------------------------


async def test_block_unblock_and_listing_with_expiry(h: Harness) -> None:
    b = h.backend()
    info = {"reason": "abuse", "score": 7.5, "observed": 250, "baseline": 50.0}
    await b.block("k:1", T0 + 300, info)
    await b.block("k:2", T0 + 60, {"reason": "manual"})
    listed = await b.blocked()
    assert [(x.subject, x.until) for x in listed] == [("k:2", T0 + 60), ("k:1", T0 + 300)]
    assert listed[1].info == info

    for req in (
        AdmissionRequest("k:1", tb(10, 10), daily_quota=10, quota_subject="k:1"),
        AdmissionRequest("k:1:r:7", tb(10, 10), quota_subject="k:1"),  # a route override
    ):
        r = await b.admit(req)
        assert (r.allowed, r.reason, r.blocked_until, r.retry_after) == (
            False,
            BLOCKED,
            T0 + 300,
            300.0,
        )
    assert (await b.admit(AdmissionRequest("k:3", tb(10, 10), quota_subject="k:3"))).allowed
    assert (await b.usage("k:1")).daily_used == 0  # blocked requests use nothing

    h.clock.advance(60)  # k:2's block lapses exactly now
    assert [x.subject for x in await b.blocked()] == ["k:1"]
    assert (await b.admit(AdmissionRequest("k:2", quota_subject="k:2"))).allowed

    assert await b.unblock("k:1") is True
    assert await b.unblock("k:1") is False
    assert await b.blocked() == []
    assert (await b.admit(AdmissionRequest("k:1", quota_subject="k:1"))).allowed


async def test_a_block_can_be_replaced_and_one_in_the_past_lifts_it(h: Harness) -> None:
    b = h.backend()
    await b.block("ip:9.9.9.9", T0 + 100, {})
    await b.block("ip:9.9.9.9", T0 + 10, {"reason": "shortened"})
    assert [(x.until, x.info) for x in await b.blocked()] == [(T0 + 10, {"reason": "shortened"})]
    await b.block("ip:8.8.8.8", T0 + 50, {})
    await b.block("ip:8.8.8.8", T0 - 1, {})
    assert [x.subject for x in await b.blocked()] == ["ip:9.9.9.9"]
    assert (await b.admit(AdmissionRequest("ip:8.8.8.8"))).allowed
    h.clock.advance(10)
    assert await b.unblock("ip:9.9.9.9") is False  # already lapsed


async def test_now_is_the_backend_clock(h: Harness) -> None:
    assert await h.backend().now() == T0
    real = h.backend(real_time=True)
    before = await real.now()
    r = await real.admit(AdmissionRequest("k:1", tb(1, 1)))
    after = await real.now()
    assert before <= r.now <= after


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [tb(1, 100), sw(10, 10)], ids=["token_bucket", "sliding_window"])
async def test_concurrent_admits_on_a_frozen_clock_admit_exactly_the_limit(
    h: Harness, spec: LimitSpec
) -> None:
    b = h.backend()
    h.clock.now = T0 - T0 % 10
    req = AdmissionRequest("k:hot", spec, quota_subject="k:hot")
    results = await asyncio.gather(*(b.admit(req) for _ in range(1000)))
    assert sum(r.allowed for r in results) == 100
    assert sorted(r.remaining for r in results if r.allowed) == list(range(100))


async def test_concurrent_admits_never_overrun_a_quota(h: Harness) -> None:
    b = h.backend()
    req = AdmissionRequest("k:hot", tb(1, 10_000), daily_quota=300, quota_subject="k:hot")
    results = await asyncio.gather(*(b.admit(req) for _ in range(1000)))
    assert sum(r.allowed for r in results) == 300
    assert (await b.usage("k:hot")).daily_used == 300


async def test_concurrent_admits_in_real_time_stay_within_burst_plus_refill(h: Harness) -> None:
    b = h.backend(real_time=True)
    rate, burst = 200.0, 100
    req = AdmissionRequest("k:hot", tb(rate, burst), quota_subject="k:hot")
    start = await b.now()
    results = await asyncio.gather(*(b.admit(req) for _ in range(1000)))
    end = await b.now()
    admitted = sum(r.allowed for r in results)
    assert burst <= admitted <= burst + rate * (end - start)
    # Each admitted request saw the bucket at its own instant: the counts stay consistent.
    assert all(start <= r.now <= end for r in results)
