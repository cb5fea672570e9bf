"""Redis admission beyond the shared suite: keys and TTLs, round trips, script reloads, clock skew,
outages, and bit-for-bit agreement with the memory backend on random traffic."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from heliox.core.quota import daily_period
from heliox.state import admission_redis
from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    QUOTA_TTL_MARGIN_SECONDS,
    RATE,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionUnavailable,
    LimitSpec,
)
from heliox.state.admission_memory import MemoryAdmission
from heliox.state.admission_redis import LuaScript, RedisAdmission
from tests.e2e.faults import OwnRedis
from tests.support import FakeClock, pipelined_redis

pytestmark = pytest.mark.redis

T0 = datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()
NY = "America/New_York"


class Counting:
    """Wraps a redis.asyncio client and counts the calls the backend makes."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await attr(*args, **kwargs)

        return counted


async def keys_of(client: Any, prefix: str) -> dict[str, int]:
    """Every key under the prefix with its PTTL."""
    out = {}
    async for k in client.scan_iter(match=prefix + "*", count=1000):
        out[k.decode()] = await client.pttl(k)
    return out


async def test_keys_share_one_hash_tag_and_all_expire(redis_client: Any, redis_prefix: str) -> None:
    clock = FakeClock(T0)
    b = RedisAdmission(redis_client, prefix=redis_prefix, clock=clock)
    req = AdmissionRequest(
        "k:1:r:7", LimitSpec(TOKEN_BUCKET, 2, 10), daily_quota=10, monthly_quota=100,
        quota_subject="k:1",
    )  # fmt: skip
    await b.admit(req)
    await b.block("k:1", T0 + 300, {"reason": "test"})
    keys = await keys_of(redis_client, redis_prefix)
    p = redis_prefix
    assert set(keys) == {
        f"{p}{{k:1}}:tb:k:1:r:7",
        f"{p}{{k:1}}:q:d:2026-11-27",
        f"{p}{{k:1}}:q:m:2026-11",
        f"{p}{{k:1}}:blk",
        f"{p}{{blocks}}:until",
        f"{p}{{blocks}}:info",
    }
    request_keys = [k for k in keys if "{k:1}" in k]
    assert len({key_slot(k.encode()) for k in request_keys}) == 1
    assert all(ttl > 0 for ttl in keys.values())
    # One token taken at 2/s: full again in 0.5 s, kept one more second.
    assert 0 < keys[f"{p}{{k:1}}:tb:k:1:r:7"] <= 1500
    day_left_ms = (datetime(2026, 11, 28, tzinfo=UTC).timestamp() - T0) * 1000
    margin_ms = QUOTA_TTL_MARGIN_SECONDS * 1000
    assert day_left_ms < keys[f"{p}{{k:1}}:q:d:2026-11-27"] <= day_left_ms + margin_ms
    assert 299_000 < keys[f"{p}{{k:1}}:blk"] <= 300_000


async def test_one_evalsha_per_admit(redis_client: Any, redis_prefix: str) -> None:
    counting = Counting(redis_client)
    b = RedisAdmission(counting, prefix=redis_prefix)  # type: ignore[arg-type]
    req = AdmissionRequest(
        "k:1", LimitSpec(SLIDING_WINDOW, 100, 1, 60), daily_quota=1000, monthly_quota=10_000,
        quota_subject="k:1",
    )  # fmt: skip
    await b.admit(req)  # may load the script on this server first
    counting.calls.clear()
    for _ in range(50):
        assert (await b.admit(req)).allowed
    assert counting.calls == {"evalsha": 50}


async def test_a_skewed_local_clock_costs_one_retry_then_is_learned(
    redis_client: Any, redis_prefix: str
) -> None:
    counting = Counting(redis_client)
    behind = 3 * 86400.0
    b = RedisAdmission(
        counting,  # type: ignore[arg-type]
        prefix=redis_prefix,
        quota_tz=NY,
        local_clock=lambda: time.time() - behind,
    )
    req = AdmissionRequest("k:1", daily_quota=5, quota_subject="k:1")
    await b.admit(req)  # guessed a day three days ago, corrected by Redis's clock
    counting.calls.clear()
    r = await b.admit(req)
    assert counting.calls == {"evalsha": 1}
    assert r.daily_remaining == 3
    assert r.daily_reset == daily_period(r.now, NY).end


async def test_period_retry_lands_in_the_right_period(redis_client: Any, redis_prefix: str) -> None:
    clock = FakeClock(datetime(2026, 11, 28, 0, 0, 1, tzinfo=ZoneInfo(NY)).timestamp())
    counting = Counting(redis_client)
    b = RedisAdmission(counting, prefix=redis_prefix, quota_tz=NY, clock=clock)  # type: ignore[arg-type]
    # Force a stale guess: pretend the calendar last saw the previous day.
    b._calendar.daily(clock.now - 3600)  # the cache now holds the 27th
    r = await b.admit(AdmissionRequest("k:1", daily_quota=5, quota_subject="k:1"))
    assert r.daily_reset == datetime(2026, 11, 29, tzinfo=ZoneInfo(NY)).timestamp()
    assert (await b.usage("k:1")).daily_period == "d:2026-11-28"


async def test_a_script_missing_on_the_server_is_loaded_and_retried(
    redis_client: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variant of the script this server has never seen, instead of SCRIPT FLUSH on a shared
    # server: the first EVALSHA gets NOSCRIPT.
    fresh = LuaScript.from_source(
        "admit.lua", admission_redis.ADMIT.source + f"\n-- {uuid.uuid4()}"
    )
    monkeypatch.setattr(admission_redis, "ADMIT", fresh)
    counting = Counting(redis_client)
    b = RedisAdmission(counting, prefix=redis_prefix)  # type: ignore[arg-type]
    req = AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, 1, 2))
    first = await b.admit(req)
    assert first.allowed
    assert first.remaining == 1
    assert counting.calls == {"evalsha": 2, "script_load": 1}
    assert (await b.admit(req)).remaining == 0
    assert counting.calls == {"evalsha": 3, "script_load": 1}


async def test_an_encoded_command_meeting_noscript_loads_the_script_and_is_sent_again(
    own_redis: OwnRedis,
) -> None:
    # SCRIPT FLUSH on a server of the test's own (the shared one serves the other process).
    piped = pipelined_redis(own_redis.url)
    assert piped.pipe is not None
    try:
        b = RedisAdmission(piped, prefix="t:")
        req = AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, 1, 5))
        await b.admit(req)
        await b.admit(req)  # the second use of this shape: sent encoded from now on
        assert req.backend_memo is not None and req.backend_memo.command is not None
        with own_redis.client() as sync:
            sync.script_flush()
        sent = piped.pipe.commands_sent
        r = await b.admit(req)
        assert r.allowed and r.remaining == 2
        # NOSCRIPT, SCRIPT LOAD, the same encoded EVALSHA again.
        assert piped.pipe.commands_sent == sent + 3
    finally:
        await piped.aclose()


async def test_a_request_shape_is_encoded_once_per_backend_and_quota_period(
    redis_server: str, redis_prefix: str
) -> None:
    clock = FakeClock(T0)
    piped = pipelined_redis(redis_server)
    assert piped.pipe is not None
    try:
        b = RedisAdmission(piped, prefix=redis_prefix, clock=clock)
        req = AdmissionRequest(
            "k:1:r:7", LimitSpec(TOKEN_BUCKET, 1, 10), daily_quota=5, quota_subject="k:1"
        )
        await b.admit(req)
        call = req.backend_memo
        assert call is not None and call.command is None  # one use: not worth encoding yet
        sent = piped.pipe.commands_sent
        for left in (3, 2):
            clock.advance(0.001)  # the clock override is the command's one open argument
            r = await b.admit(req)
            assert r.allowed and r.daily_remaining == left
        assert req.backend_memo is call and call.command is not None
        assert piped.pipe.commands_sent == sent + 2  # one EVALSHA each, nothing else

        clock.advance(86400)  # the next day: a new period, so a new command, a fresh quota
        r = await b.admit(req)
        assert r.allowed and r.daily_remaining == 4
        assert req.backend_memo is not call

        # Another backend (another prefix) never sends the first one's command.
        other = RedisAdmission(piped, prefix=redis_prefix + "other:", clock=clock)
        r = await other.admit(req)
        assert r.daily_remaining == 4 and r.remaining == 9
        assert (await b.usage("k:1")).daily_used == 1
    finally:
        await piped.aclose()


async def test_redis_down_raises_admission_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    # No retries: redis-py's default client retries a refused connection with backoff for seconds.
    client = aioredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    b = RedisAdmission(client, prefix="heliox-test:down:")
    try:
        with pytest.raises(AdmissionUnavailable):
            await b.admit(AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, 1, 1)))
        with pytest.raises(AdmissionUnavailable):
            await b.block("k:1", time.time() + 60, {})
        with pytest.raises(AdmissionUnavailable):
            await b.blocked()
        with pytest.raises(AdmissionUnavailable):
            await b.usage("k:1")
        with pytest.raises(AdmissionUnavailable):
            await b.now()
    finally:
        await client.aclose()


async def test_flushed_keys_restart_the_counters(redis_client: Any, redis_prefix: str) -> None:
    b = RedisAdmission(redis_client, prefix=redis_prefix, clock=FakeClock(T0))
    req = AdmissionRequest(
        "k:1", LimitSpec(TOKEN_BUCKET, 0.001, 3), daily_quota=5, quota_subject="k:1"
    )
    for _ in range(3):
        await b.admit(req)
    assert not (await b.admit(req)).allowed
    await redis_client.delete(*(await keys_of(redis_client, redis_prefix)))
    r = await b.admit(req)
    assert (r.allowed, r.remaining, r.daily_remaining) == (True, 2, 4)


async def test_braces_in_subjects_cannot_break_out_of_the_hash_tag(
    redis_client: Any, redis_prefix: str
) -> None:
    b = RedisAdmission(redis_client, prefix=redis_prefix, clock=FakeClock(T0))
    spec = LimitSpec(TOKEN_BUCKET, 0.001, 1)
    assert (await b.admit(AdmissionRequest("ip:{x}", spec))).allowed
    assert (await b.admit(AdmissionRequest("ip:%7Bx%7D", spec))).allowed  # a distinct subject
    assert not (await b.admit(AdmissionRequest("ip:{x}", spec))).allowed
    for key in await keys_of(redis_client, redis_prefix):
        tag = key[len(redis_prefix) :]
        assert tag.count("{") == 1
        assert tag.count("}") == 1
    with pytest.raises(ValueError):
        RedisAdmission(redis_client, prefix="bad{prefix}:")


async def test_string_replies_work_too(redis_server: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server, decode_responses=True)
    try:
        b = RedisAdmission(client, prefix=redis_prefix, clock=FakeClock(T0))
        r = await b.admit(AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, 1, 2), daily_quota=9))
        assert (r.allowed, r.remaining, r.daily_remaining) == (True, 1, 8)
        await b.block("k:2", T0 + 5, {"reason": "x"})
        assert [(x.subject, x.info) for x in await b.blocked()] == [("k:2", {"reason": "x"})]
    finally:
        await client.aclose()


async def test_redis_and_memory_agree_bit_for_bit_on_random_traffic(
    redis_client: Any, redis_prefix: str
) -> None:
    """The Lua script repeats the core's float arithmetic; any drift shows up here as inequality."""
    rng = random.Random(4242)
    clock = FakeClock(datetime(2026, 11, 30, 23, 58, tzinfo=ZoneInfo(NY)).timestamp())
    memory = MemoryAdmission(clock=clock, quota_tz=NY)
    on_redis = RedisAdmission(redis_client, prefix=redis_prefix, quota_tz=NY, clock=clock)
    specs = [
        LimitSpec(TOKEN_BUCKET, 3.3, 7),
        LimitSpec(TOKEN_BUCKET, 0.37, 2),
        LimitSpec(TOKEN_BUCKET, 123.456, 50),
        LimitSpec(SLIDING_WINDOW, 0.7, 1, 7),
        LimitSpec(SLIDING_WINDOW, 13.0, 1, 1),
    ]
    requests = [
        AdmissionRequest(f"k:{i}:r:{j}", spec, daily_quota=dq, monthly_quota=mq,
                         quota_subject=f"k:{i}", cost=cost)
        for i, (dq, mq) in enumerate([(None, None), (400, None), (700, 300)])
        for j, spec in enumerate(specs)
        for cost in (1, 2)
    ]  # fmt: skip
    requests.append(AdmissionRequest("ip:1.2.3.4"))
    outcomes: Counter[str | None] = Counter()
    for step in range(3000):
        clock.now += rng.choice([0.0, 0.0, 1e-6, 0.0137, 0.05, 0.1, 0.29, 1.3])
        if step % 300 == 150:
            for b in (memory, on_redis):
                await b.block("k:1", clock.now + 2.5, {"step": step})
        req = rng.choice(requests)
        mine, theirs = memory.admit_sync(req), await on_redis.admit(req)
        assert mine == theirs, (step, req)
        outcomes[mine.reason] += 1
    assert all(outcomes[r] > 10 for r in (None, RATE, DAILY_QUOTA, MONTHLY_QUOTA, BLOCKED))
    assert await memory.blocked() == await on_redis.blocked()
    for q in ("k:0", "k:1", "k:2"):
        assert await memory.usage(q, daily_limit=400) == await on_redis.usage(q, daily_limit=400)
    assert (await memory.usage("k:2")).monthly_period == "m:2026-12"  # the run crossed the month


async def test_real_time_blocks_use_redis_time_and_expire_by_ttl(
    redis_client: Any, redis_prefix: str
) -> None:
    b = RedisAdmission(redis_client, prefix=redis_prefix)  # Redis TIME, real TTLs
    await b.block("k:long", await b.now() + 600, {})
    refused = await b.admit(AdmissionRequest("k:long"))
    assert refused.reason == "blocked"
    assert refused.blocked_until is not None
    assert 0 < refused.blocked_until - refused.now <= 600
    assert await b.unblock("k:long") is True

    await b.block("k:short", await b.now() + 0.2, {})
    key = f"{redis_prefix}{{k:short}}:blk"
    deadline = time.monotonic() + 5
    while await redis_client.exists(key):
        assert time.monotonic() < deadline, "block key outlived its TTL"
        await asyncio.sleep(0.02)
    assert (await b.admit(AdmissionRequest("k:short"))).allowed
    assert await b.blocked() == []
