"""Heliox on a real Redis Cluster (three masters), in process: the settings, the client's guards,
and the stores the conformance suites do not cover (locks, Bloom filters, the admin throttle,
fill notices over pub/sub). The admission and cache stores run their whole conformance suites
against the cluster too (tests/state/*conformance*); the gateway, end to end with a failover, in
tests/e2e/test_redis_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from heliox.config import ConfigError, load_settings
from heliox.core.auth_throttle import ThrottlePolicy
from heliox.gateway.coalescing import FillNotices
from heliox.state.admission import AdmissionRequest, AdmissionUnavailable
from heliox.state.admission_redis import RedisAdmission
from heliox.state.auth_throttle import AuthThrottle
from heliox.state.bloom_store import RedisNegativeCache
from heliox.state.cache import CacheEntry, CacheStats, CacheUnavailable
from heliox.state.cache_redis import CLUSTER_SHARDS, RedisCacheStore
from heliox.state.lock_redis import RedisLocks
from heliox.state.redis_client import redis_client
from heliox.state.redis_cluster import ClusterRedis
from heliox.state.redis_pipe import RedisUnavailable
from tests.cluster_support import LocalCluster

pytestmark = pytest.mark.redis


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///run/redis.sock", "not a unix socket"),
        ("redis://10.0.0.1:6379/2", "only database 0 (REDIS_URL names database 2)"),
        ("redis://10.0.0.1:6379?db=1", "only database 0 (REDIS_URL names database 1)"),
    ],
)
def test_cluster_settings_refuse_what_a_cluster_cannot_be(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_CLUSTER") as refused:
        load_settings(deployment_mode="demo", redis_url=url, redis_cluster=True)
    assert problem in str(refused.value)
    # Standalone, the same URLs are fine.
    assert not load_settings(deployment_mode="demo", redis_url=url).redis_cluster


async def test_the_settings_build_a_cluster_client_with_their_breaker(
    redis_cluster: LocalCluster,
) -> None:
    settings = load_settings(
        deployment_mode="demo",
        redis_url=redis_cluster.url,
        redis_cluster=True,
        redis_breaker_failures=3,
        redis_pool_size=7,
    )
    client = redis_client(settings)
    try:
        assert isinstance(client, ClusterRedis)
        assert client.breaker.threshold == 3
        await client.check()  # PING on every master, and a write
        nodes = {node.name for node in client.get_primaries()}
        assert len(nodes) == 3
    finally:
        await client.aclose()


async def test_an_unreachable_cluster_opens_the_breaker() -> None:
    client = ClusterRedis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    client.breaker.threshold = 2
    try:
        errors = []
        for _ in range(3):
            try:
                await client.get("k")
            except Exception as exc:
                errors.append(type(exc))
        # ConnectionErrors (which every store turns into "Redis unavailable"), then the breaker.
        assert errors == [RedisConnectionError, RedisConnectionError, RedisUnavailable]
        assert not client.breaker.closed
    finally:
        await client.aclose()


def test_cache_shards_spread_over_every_master(
    redis_cluster: LocalCluster, redis_cluster_client: Any
) -> None:
    store = RedisCacheStore(redis_cluster_client, prefix="heliox:cache:")
    assert len(store.shard_prefixes) == CLUSTER_SHARDS
    owners = [redis_cluster.master_of(key_slot(p.encode() + b"gen")) for p in store.shard_prefixes]
    per_master = {port: owners.count(port) for port in redis_cluster.masters()}
    # Masters own thirds of the slot space; the shards' slots are spread evenly over it.
    assert all(n >= CLUSTER_SHARDS // 3 - 1 for n in per_master.values()), per_master


async def test_locks_bloom_filters_and_the_admin_throttle_on_the_cluster(
    redis_cluster_client: Any, redis_cluster_prefix: str
) -> None:
    p = redis_cluster_prefix
    locks = RedisLocks(redis_cluster_client, prefix=p + "lock:")
    token = await locks.acquire("fill", 5000)
    assert token is not None
    assert await locks.acquire("fill", 5000) is None
    assert await locks.release("fill", token) is True

    bloom = RedisNegativeCache(
        redis_cluster_client, expected_items=1000, false_positive_rate=0.01, prefix=p + "neg:"
    )
    routes = [f"route-{i}" for i in range(8)]  # their filters land on different masters
    for route in routes:
        assert await bloom.add(route, "/missing", 1_000.0) is True
        assert await bloom.might_contain(route, "/missing", 1_000.0) is True
        assert await bloom.might_contain(route, "/other", 1_000.0) is False
    await bloom.clear(routes[0])
    assert await bloom.might_contain(routes[0], "/missing", 1_000.0) is False
    assert await bloom.might_contain(routes[1], "/missing", 1_000.0) is True

    throttle = AuthThrottle(ThrottlePolicy(max_failures=2), redis=redis_cluster_client, prefix=p)
    assert await throttle.failed("192.0.2.7") == (1, 0.0)
    failures, locked = await throttle.failed("192.0.2.7")
    assert (failures, locked > 0) == (2, True)
    assert (await throttle.standing("192.0.2.7")).locked_for > 0


async def test_admission_reads_the_cache_generation_beside_its_script(
    redis_cluster_client: Any, redis_cluster_prefix: str
) -> None:
    store = RedisCacheStore(redis_cluster_client, prefix=redis_cluster_prefix + "cache:")
    admission = RedisAdmission(
        redis_cluster_client,
        prefix=redis_cluster_prefix,
        cache_generation_key=store.generation_key,
    )
    first = await admission.admit(AdmissionRequest("k:1", None, quota_subject="k:1"))
    assert first.cache_generation == await store.generation()
    await store.purge(all=True)  # a removal moves it
    second = await admission.admit(AdmissionRequest("k:2", None, quota_subject="k:2"))
    assert second.cache_generation is not None
    assert int(second.cache_generation) > int(first.cache_generation or b"0")


async def test_fill_notices_reach_an_instance_subscribed_through_another_node(
    redis_cluster: LocalCluster, redis_cluster_prefix: str
) -> None:
    # Two clients, as two instances: each subscribes through the node its channel maps to,
    # and a cluster delivers ordinary PUBLISH to subscribers on every node.
    a = ClusterRedis.from_url(redis_cluster.url)
    b = ClusterRedis.from_url(f"redis://127.0.0.1:{redis_cluster.ports[-1]}/0")
    channel = redis_cluster_prefix + "fills"
    listening, sending = FillNotices(a, channel), FillNotices(b, channel)
    task = asyncio.create_task(listening.run())
    try:
        assert await listening.ready(within=10)
        waiter = listening.register("c:1")
        await sending.publish("c:1", "stored")
        assert await asyncio.wait_for(waiter, 10) == "stored"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.aclose()
        await b.aclose()


async def test_fills_recover_when_a_failover_lost_the_generations_latest_raises(
    redis_cluster_client: Any, redis_cluster_prefix: str
) -> None:
    store = RedisCacheStore(redis_cluster_client, prefix=redis_cluster_prefix + "cache:")
    now = time.time()
    entry = CacheEntry(
        status=200, headers=[], body=b"x", stored_at=now, fresh_until=now + 60,
        stale_until=now + 60, error_until=now + 60, uri_key="u:1", route="r", tenant_id=None,
    )  # fmt: skip
    before = await store.generation()
    await store.purge(route="r")  # every shard's fence is now above `before`
    # What a failover losing the latest writes to the generation's master leaves behind.
    await redis_cluster_client.set(store.generation_key, before)
    stale = await store.generation()
    assert stale == before
    assert await store.set("c:1", entry, now, generation=stale) is False  # the fence says no
    # ... and the refusal brought the generation up to the fence: the next fill is stored.
    assert int(await store.generation()) > int(before)
    assert await store.set("c:1", entry, now, generation=await store.generation()) is True
    assert await store.get("c:1") == entry


async def test_a_cache_shard_moved_to_another_master_under_traffic(
    redis_cluster: LocalCluster, redis_cluster_client: Any, redis_cluster_prefix: str
) -> None:
    """Resharding: the slot of one cache shard migrates (MIGRATING/IMPORTING, keys moved in
    batches) while reads, fills and purges run on it. No wrong answer, few errors, and once the
    slot has moved everything works and the shard's bookkeeping is whole."""
    store = RedisCacheStore(redis_cluster_client, prefix=redis_cluster_prefix + "cache:")
    admission = RedisAdmission(
        redis_cluster_client, prefix=redis_cluster_prefix, cache_generation_key=store.generation_key
    )
    shard = store.shard_prefixes[0]
    keys = [k for k in (f"c:{i}" for i in range(2000)) if store._shard(k) == shard][:40]

    def entry(i: int) -> CacheEntry:
        now = time.time()
        return CacheEntry(
            status=200, headers=[], body=b"body %d" % i, stored_at=now, fresh_until=now + 60,
            stale_until=now + 60, error_until=now + 60, uri_key=f"u:{i}", route="moving",
            tenant_id=None, path=f"/{i}",
        )  # fmt: skip

    for i, key in enumerate(keys):
        assert await store.set(key, entry(i), time.time())
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    moving = True

    async def traffic(offset: int) -> None:
        n = offset
        while moving:
            i = n % len(keys)
            n += 1
            try:
                admitted = await admission.admit(AdmissionRequest("k:1", None, quota_subject="k:1"))
                found = await store.get(keys[i])
                if found is None:
                    await store.set(
                        keys[i], entry(i), time.time(), generation=admitted.cache_generation
                    )
                elif found.body != b"body %d" % i:
                    wrong.append(f"{keys[i]}: {found.body!r}")
                if n % 25 == 0:
                    await store.purge(route="moving", prefix=f"/{i}")
                outcomes["ok"] += 1
            except (CacheUnavailable, AdmissionUnavailable):
                outcomes["error"] += 1
            await asyncio.sleep(0)

    slot = key_slot((shard + "gen").encode())
    source = redis_cluster.master_of(slot)
    target = next(port for port in redis_cluster.masters() if port != source)
    tasks = [asyncio.create_task(traffic(k * 7)) for k in range(4)]

    async def more_traffic(than: int) -> None:
        """Until the traffic has gone on past `than` answers (a deadline, not a guess)."""
        deadline = time.monotonic() + 15
        while outcomes["ok"] + outcomes["error"] <= than:
            assert time.monotonic() < deadline, f"traffic stalled: {outcomes}"
            await asyncio.sleep(0.01)  # the poll's interval

    try:
        await more_traffic(20)  # traffic runs when the move starts
        moved = await asyncio.to_thread(
            redis_cluster.migrate_slot, slot, target, lambda: time.sleep(0.05)
        )
        during = outcomes["ok"] + outcomes["error"]
        await more_traffic(during + 20)  # and goes on after it
    finally:
        moving = False
        await asyncio.gather(*tasks)
    try:
        assert moved > 0
        assert redis_cluster.master_of(slot) == target
        assert wrong == []
        assert outcomes["ok"] > 0 and outcomes["error"] <= outcomes["ok"] // 10, outcomes
        # Moved and whole: a purge finds every entry of the shard, and nothing is left after.
        for i, key in enumerate(keys):
            await store.set(key, entry(i), time.time())
        assert (await store.stats()).entries == len(keys)
        assert await store.purge(route="moving") == len(keys)
        assert [k for k in keys if await store.get(k) is not None] == []
        assert await store.stats() == CacheStats(entries=0, bytes=0)
    finally:
        await asyncio.to_thread(redis_cluster.migrate_slot, slot, source)
