"""The memory and Redis stores against a reference model, driven by hypothesis state machines.

Each step does one operation on every store and on a plain-Python model, and the answers must be
equal: the response caches (set, overwrite, get, delete, purge by every criterion, stats) and the
admission backends (rate limits, daily and monthly quotas, soft blocks, usage) on a fake clock
that crosses day and month boundaries. Where the conformance suites check chosen scenarios, these
check whatever sequences hypothesis finds, shrunk to the shortest failing one.

Cache entries here never expire during a run (TTL expiry is real time on Redis; the conformance
suite covers it). The Redis stores get a fresh key prefix per run, under the test's prefix.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from heliox.core.cachekey import uri_key
from heliox.core.ratelimit import (
    US,
    SlidingWindowState,
    TokenBucketState,
    sliding_window,
    to_us,
    token_bucket,
)
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
from heliox.state.cache import CacheEntry, CacheStore, PurgeFilter
from heliox.state.cache_memory import MemoryCacheStore, entry_size
from heliox.state.cache_redis import RedisCacheStore

T = TypeVar("T")

MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Runner:
    """One event loop per machine run: the stores are async, hypothesis steps are not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


# The Redis cache store's three bookkeeping keys per prefix live as long as the store; their
# contents are trimmed as entries expire (cache_common.lua). Every other key must expire.
PERMANENT_SUFFIXES = (b":i:all", b":sz", b":bytes", b":gen")  # bounded bookkeeping


async def keys_without_ttl(client: aioredis.Redis, prefix: str) -> list[bytes]:
    found = []
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        # -1: no TTL; -2 means it expired between SCAN and PTTL, which is fine.
        if not key.endswith(PERMANENT_SUFFIXES) and await client.pttl(key) == -1:
            found.append(key)
    return found


# --- response cache -------------------------------------------------------------------------

KEYS = [f"c:{i}" for i in range(6)]
ROUTES = ["demo", "products"]
PATHS = ["/items", "/items/1", "/items/1/x", "/other", "/é"]
TENANTS = [None, 1, 2]
TAGS = ["t1", "t2", "t3"]
QUERIES = [b"", b"a=1"]
URI_KEYS = [uri_key(r, p, q) for r in ROUTES for p in PATHS for q in QUERIES]


@st.composite
def entries(draw: st.DrawFn) -> CacheEntry:
    route = draw(st.sampled_from(ROUTES))
    path = draw(st.sampled_from(PATHS))
    query = draw(st.sampled_from(QUERIES))
    headers = draw(
        st.lists(
            st.tuples(st.sampled_from([b"content-type", b"etag", b"x-dup"]), st.binary(max_size=8)),
            max_size=3,
        )
    )
    return CacheEntry(
        status=draw(st.sampled_from([200, 203, 301, 404])),
        headers=headers,
        body=draw(st.binary(max_size=64)),
        stored_at=0.0,  # set when stored
        fresh_until=0.0,
        stale_until=0.0,
        error_until=0.0,
        uri_key=uri_key(route, path, query),
        route=route,
        tenant_id=draw(st.sampled_from(TENANTS)),
        tags=tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))),
        path=path,
        age_at_store=draw(st.integers(0, 100)),
    )


@st.composite
def purge_filters(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        return {"all": True}
    chosen: dict[str, Any] = {}
    for name, values in (
        ("uri_key", URI_KEYS),
        ("route", ROUTES),
        ("tenant_id", [1, 2]),
        ("prefix", ["/items", "/items/1", "/o", "/"]),
        ("tag", TAGS),
    ):
        if draw(st.booleans()):
            chosen[name] = draw(st.sampled_from(values))
    if not chosen:
        chosen["route"] = draw(st.sampled_from(ROUTES))
    return chosen


def _timed(entry: CacheEntry, now: float, *, expired: bool = False) -> CacheEntry:
    if expired:
        return replace(entry, stored_at=now - 100, fresh_until=now - 50, stale_until=now - 1,
                       error_until=now - 1)  # fmt: skip
    return replace(entry, stored_at=now, fresh_until=now + 600, stale_until=now + 1200,
                   error_until=now + 3600)  # fmt: skip


class CacheStoresMachine(RuleBasedStateMachine):
    """Memory and Redis cache stores against a dict."""

    redis_url = ""
    base_prefix = ""

    def __init__(self) -> None:
        super().__init__()
        self.run = Runner()
        self.now = datetime.now(UTC).timestamp()
        self.model: dict[str, CacheEntry] = {}
        self.client = aioredis.Redis.from_url(self.redis_url)
        self.prefix = f"{self.base_prefix}{uuid.uuid4().hex[:8]}:"
        self.stores: dict[str, CacheStore] = {
            "memory": MemoryCacheStore(64 * 1024 * 1024, clock=lambda: self.now),
            "redis": RedisCacheStore(self.client, prefix=self.prefix, purge_batch=2),
        }

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.run.close()

    def _all(self, call: Callable[[CacheStore], Coroutine[Any, Any, T]]) -> dict[str, T]:
        return {name: self.run(call(store)) for name, store in self.stores.items()}

    @rule(key=st.sampled_from(KEYS), entry=entries())
    def set(self, key: str, entry: CacheEntry) -> None:
        stored = _timed(entry, self.now)
        self._all(lambda s: s.set(key, stored, self.now))
        self.model[key] = stored

    @rule(key=st.sampled_from(KEYS), entry=entries())
    def set_already_expired(self, key: str, entry: CacheEntry) -> None:
        """An answer that is already past its windows replaces what the key held with nothing."""
        stale = _timed(entry, self.now, expired=True)
        self._all(lambda s: s.set(key, stale, self.now))
        self.model.pop(key, None)

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: str) -> None:
        got = self._all(lambda s: s.get(key))
        expected = self.model.get(key)
        for name, entry in got.items():
            assert entry == expected, (name, key)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        removed = self._all(lambda s: s.delete(key))
        expected = self.model.pop(key, None) is not None
        assert removed == {name: expected for name in self.stores}

    @rule(criteria=purge_filters())
    def purge(self, criteria: dict[str, Any]) -> None:
        selector = PurgeFilter.of(
            uri_key=criteria.get("uri_key"), route=criteria.get("route"),
            tenant_id=criteria.get("tenant_id"), prefix=criteria.get("prefix"),
            tag=criteria.get("tag"), all=criteria.get("all", False),
        )  # fmt: skip
        gone = [k for k, e in self.model.items() if selector.matches(e)]
        counts = self._all(lambda s: s.purge(**criteria))
        for k in gone:
            del self.model[k]
        assert counts == {name: len(gone) for name in self.stores}, criteria

    @invariant()
    def every_redis_key_expires(self) -> None:
        assert self.run(keys_without_ttl(self.client, self.prefix)) == []

    @invariant()
    def entry_counts_agree(self) -> None:
        counts = {name: stats.entries for name, stats in self._all(lambda s: s.stats()).items()}
        assert counts == {name: len(self.model) for name in self.stores}


class BoundedMemoryCacheMachine(RuleBasedStateMachine):
    """A small memory store: evicts by LRU, never holds more than `max_bytes`, and never answers
    with anything but what was last stored under a key."""

    MAX_BYTES = 4096

    def __init__(self) -> None:
        super().__init__()
        self.run = Runner()
        self.now = 1_800_000_000.0
        self.store = MemoryCacheStore(self.MAX_BYTES, clock=lambda: self.now)
        self.model: dict[str, CacheEntry] = {}
        self.last: str | None = None

    def teardown(self) -> None:
        self.run.close()

    @rule(key=st.sampled_from(KEYS), entry=entries(), padding=st.integers(0, 3000))
    def set(self, key: str, entry: CacheEntry, padding: int) -> None:
        stored = _timed(replace(entry, body=entry.body + b"p" * padding), self.now)
        self.run(self.store.set(key, stored, self.now))
        self.model[key] = stored
        self.last = key if entry_size(key, stored) <= self.MAX_BYTES else None

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: str) -> None:
        got = self.run(self.store.get(key))
        assert got is None or got == self.model.get(key)
        if key == self.last:
            assert got == self.model[key]  # the newest entry that fits is never the one evicted

    @invariant()
    def stays_within_its_bound(self) -> None:
        stats = self.run(self.store.stats())
        assert 0 <= stats.bytes <= self.MAX_BYTES


# --- admission ------------------------------------------------------------------------------

# 2026-11-30 22:00 UTC: a day and a month end two hours in.
T0 = datetime(2026, 11, 30, 22, tzinfo=UTC).timestamp()
SPECS = {
    "fast": LimitSpec(TOKEN_BUCKET, 2.0, 3),
    "slow": LimitSpec(TOKEN_BUCKET, 0.25, 2),
    "window": LimitSpec(SLIDING_WINDOW, 2.0, 1, 2),
    "none": None,
}
QUOTAS = {"p0": (2, 4), "p1": (None, 3), "p2": (None, None)}
STEPS = [0.0, 0.001, 0.2, 0.5, 1.0, 3.0, 3600.0, 7200.0, 86_400.0]


@dataclass
class AdmissionModel:
    """The decision order and bookkeeping of `AdmissionBackend.admit`, as plain data. Rate
    arithmetic is `heliox.core.ratelimit` (itself tested against tables and properties); what
    the model adds is the order, the all-or-nothing commit, the quota periods and the blocks."""

    buckets: dict[tuple[str, str], TokenBucketState] = field(default_factory=dict)
    windows: dict[tuple[str, str], SlidingWindowState] = field(default_factory=dict)
    quotas: dict[tuple[str, str], int] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)  # principal -> until (µs)

    @staticmethod
    def periods(now_us: int) -> tuple[str, str]:
        day = datetime.fromtimestamp(now_us // US, UTC)
        return f"d:{day.date().isoformat()}", f"m:{day.year:04d}-{day.month:02d}"

    def admit(self, req: AdmissionRequest, now_us: int) -> tuple[object, ...]:
        principal, spec = req.principal, req.limit
        if self.blocks.get(principal, 0) > now_us:
            return (False, BLOCKED, spec.limit if spec else 0, 0, None, None)
        day, month = self.periods(now_us)
        dused = self.quotas.get((principal, day), 0)
        mused = self.quotas.get((principal, month), 0)
        dq, mq = req.daily_quota, req.monthly_quota

        def left(used: int, quota: int | None, extra: int = 0) -> int | None:
            return None if quota is None else max(0, quota - used - extra)

        rkey = (principal, req.subject)
        commit: Callable[[], None] = lambda: None  # noqa: E731
        limit = remaining = 0
        if spec is not None:
            if spec.algorithm == TOKEN_BUCKET:
                tb = token_bucket(self.buckets.get(rkey), spec.rate, spec.burst, now_us, req.cost)
                decision, state_tb = tb.decision, tb.state

                def commit() -> None:
                    self.buckets[rkey] = state_tb
            else:
                sw = sliding_window(
                    self.windows.get(rkey), spec.limit, spec.window_seconds * US, now_us, req.cost
                )
                decision, state_sw = sw.decision, sw.state

                def commit() -> None:
                    self.windows[rkey] = state_sw

            limit, remaining = decision.limit, decision.remaining
            if not decision.allowed:
                return (False, RATE, limit, remaining, left(dused, dq), left(mused, mq))
        reason = None
        if dq is not None and dused + req.cost > dq:
            reason = DAILY_QUOTA
        elif mq is not None and mused + req.cost > mq:
            reason = MONTHLY_QUOTA
        if reason is not None:
            view = self._view(spec, rkey, now_us)
            return (False, reason, view[0], view[1], left(dused, dq), left(mused, mq))
        commit()
        if dq is not None:
            self.quotas[(principal, day)] = dused + req.cost
        if mq is not None:
            self.quotas[(principal, month)] = mused + req.cost
        return (True, None, limit, remaining, left(dused, dq, req.cost), left(mused, mq, req.cost))

    def _view(self, spec: LimitSpec | None, rkey: tuple[str, str], now_us: int) -> tuple[int, int]:
        if spec is None:
            return 0, 0
        if spec.algorithm == TOKEN_BUCKET:
            d = token_bucket(self.buckets.get(rkey), spec.rate, spec.burst, now_us, 0).decision
        else:
            d = sliding_window(
                self.windows.get(rkey), spec.limit, spec.window_seconds * US, now_us, 0
            ).decision
        return d.limit, d.remaining


def _summary(result: AdmissionResult) -> tuple[object, ...]:
    return (
        result.allowed,
        result.reason,
        result.limit,
        result.remaining,
        result.daily_remaining,
        result.monthly_remaining,
    )


class AdmissionMachine(RuleBasedStateMachine):
    """Memory and Redis admission against `AdmissionModel`, on one fake clock."""

    redis_url = ""
    base_prefix = ""

    def __init__(self) -> None:
        super().__init__()
        self.run = Runner()
        self.now = T0
        self.model = AdmissionModel()
        self.client = aioredis.Redis.from_url(self.redis_url)
        self.prefix = f"{self.base_prefix}{uuid.uuid4().hex[:8]}:"
        clock = self._clock
        self.backends: dict[str, AdmissionBackend] = {
            "memory": MemoryAdmission(clock=clock),
            "redis": RedisAdmission(self.client, prefix=self.prefix, clock=clock),
        }
        self.admitted: dict[tuple[str, str], list[float]] = {}

    def _clock(self) -> float:
        return self.now

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.run.close()

    @rule(step=st.sampled_from(STEPS))
    def tick(self, step: float) -> None:
        self.now += step

    @rule(
        principal=st.sampled_from(sorted(QUOTAS)),
        spec=st.sampled_from(sorted(SPECS)),
        cost=st.sampled_from([1, 1, 1, 0, 2]),
    )
    def admit(self, principal: str, spec: str, cost: int) -> None:
        daily, monthly = QUOTAS[principal]
        req = AdmissionRequest(
            subject=f"{principal}:{spec}", limit=SPECS[spec], daily_quota=daily,
            monthly_quota=monthly, quota_subject=principal, cost=cost,
        )  # fmt: skip
        now_us = to_us(self.now)
        expected = self.model.admit(req, now_us)
        for name, backend in self.backends.items():
            got = _summary(self.run(backend.admit(req)))
            assert got == expected, (name, req, self.now)
        if expected[0] and SPECS[spec] is not None:
            self.admitted.setdefault((principal, spec), []).extend([self.now] * cost)

    # Admission is what most steps should do: a second rule with the same body doubles its share.
    admit_again = admit

    @rule(principal=st.sampled_from(sorted(QUOTAS)), seconds=st.sampled_from([0.5, 2.0, 600.0]))
    def block(self, principal: str, seconds: float) -> None:
        until = self.now + seconds
        for backend in self.backends.values():
            self.run(backend.block(principal, until, {"reason": "test"}))
        self.model.blocks[principal] = to_us(until)

    @rule(principal=st.sampled_from(sorted(QUOTAS)))
    def unblock(self, principal: str) -> None:
        was = self.model.blocks.pop(principal, 0) > to_us(self.now)
        lifted = {name: self.run(b.unblock(principal)) for name, b in self.backends.items()}
        assert lifted == {name: was for name in self.backends}

    @rule()
    def blocked(self) -> None:
        now_us = to_us(self.now)
        expected = sorted(p for p, until in self.model.blocks.items() if until > now_us)
        for name, backend in self.backends.items():
            listed = sorted(b.subject for b in self.run(backend.blocked()))
            assert listed == expected, name

    @rule(principal=st.sampled_from(sorted(QUOTAS)))
    def usage(self, principal: str) -> None:
        day, month = AdmissionModel.periods(to_us(self.now))
        expected = (
            self.model.quotas.get((principal, day), 0),
            self.model.quotas.get((principal, month), 0),
        )
        for name, backend in self.backends.items():
            u = self.run(backend.usage(principal))
            assert (u.daily_used, u.monthly_used) == expected, name

    @invariant()
    def every_redis_key_expires(self) -> None:
        assert self.run(keys_without_ttl(self.client, self.prefix)) == []

    @invariant()
    def token_buckets_never_exceed_burst_plus_refill(self) -> None:
        """Independent of the arithmetic: over any span, a bucket admits at most
        burst + rate * span requests."""
        for (_, spec_name), times in self.admitted.items():
            spec = SPECS[spec_name]
            if spec is None or spec.algorithm != TOKEN_BUCKET:
                continue
            for i, start in enumerate(times):
                span = times[-1] - start
                assert len(times) - i <= spec.burst + math.floor(spec.rate * span + 1e-9)


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture
def machine_prefix(redis_server: str, redis_prefix: str) -> Iterator[tuple[str, str]]:
    yield redis_server, redis_prefix
    client = redis.Redis.from_url(redis_server)
    try:
        keys = list(client.scan_iter(match=redis_prefix + "*", count=1000))
        without_ttl = [
            k for k in keys if client.pttl(k) == -1 and not k.endswith(PERMANENT_SUFFIXES)
        ]
        assert without_ttl == [], f"keys left without a TTL: {without_ttl[:10]}"
    finally:
        client.close()


def test_cache_stores_match_the_model(machine_prefix: tuple[str, str]) -> None:
    url, prefix = machine_prefix
    machine = type("CacheRun", (CacheStoresMachine,), {"redis_url": url, "base_prefix": prefix})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_bounded_memory_cache_never_exceeds_its_size() -> None:
    run_state_machine_as_test(BoundedMemoryCacheMachine, settings=MACHINE_SETTINGS)


def test_admission_backends_match_the_model(machine_prefix: tuple[str, str]) -> None:
    url, prefix = machine_prefix
    machine = type("AdmissionRun", (AdmissionMachine,), {"redis_url": url, "base_prefix": prefix})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
