"""JobScheduler: one run per period, across processes with Redis; lock taken and released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from heliox.jobs import Job, periodic_jobs
from heliox.worker import (
    LOCK_LEASE_SECONDS,
    JobScheduler,
    period_of,
    seconds_to_next_period,
)

HOUR = 3600.0
T0 = 1_800_000_000.0  # a period boundary for a 1 h interval (and for 10 s)


class Counter:
    """A job body that counts its runs and can be held open or made to fail."""

    def __init__(self) -> None:
        self.runs = 0
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self) -> str:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("job failed")
        self.runs += 1
        return f"run {self.runs}"


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Any]:
    from heliox.config import load_settings
    from heliox.state.redis_client import redis_client

    client = redis_client(load_settings(redis_url=redis_server, deployment_mode="demo"))
    try:
        yield client
    finally:
        await client.aclose()


def test_periods_are_aligned_to_the_interval() -> None:
    assert period_of(T0, HOUR) == period_of(T0 + HOUR - 0.001, HOUR)
    assert period_of(T0 + HOUR, HOUR) == period_of(T0, HOUR) + 1
    assert seconds_to_next_period(T0 + 10, HOUR) == pytest.approx(HOUR - 10)
    assert seconds_to_next_period(T0, HOUR) == pytest.approx(HOUR)


async def test_embedded_runs_once_per_period() -> None:
    body = Counter()
    scheduler = JobScheduler([Job("j", HOUR, body)])
    job = scheduler.jobs[0]
    assert await scheduler.run_due(job, T0) == "ran"
    assert await scheduler.run_due(job, T0 + 100) == "done"
    assert await scheduler.run_due(job, T0 + HOUR) == "ran"
    assert body.runs == 2
    assert scheduler.metrics.events["jobs_run"] == 2


async def test_embedded_failure_is_retried_in_the_same_period() -> None:
    body = Counter()
    body.fail = True
    scheduler = JobScheduler([Job("j", HOUR, body)])
    with pytest.raises(RuntimeError):
        await scheduler.run_due(scheduler.jobs[0], T0)
    body.fail = False
    assert await scheduler.run_due(scheduler.jobs[0], T0 + 1) == "ran"
    assert scheduler.metrics.events["job_errors"] == 1


async def test_two_schedulers_sharing_redis_run_a_period_once(
    redis: Any, redis_prefix: str
) -> None:
    body = Counter()
    job = Job("j", HOUR, body)
    a = JobScheduler([job], redis=redis, prefix=redis_prefix)
    b = JobScheduler([job], redis=redis, prefix=redis_prefix)
    assert await a.run_due(job, T0) == "ran"
    assert await b.run_due(job, T0 + 5) == "done"
    assert await a.run_due(job, T0 + 6) == "done"
    assert await b.run_due(job, T0 + HOUR) == "ran"
    assert await a.run_due(job, T0 + HOUR + 1) == "done"
    assert body.runs == 2
    # The lock is released after each run; only the done marker (with an expiry) stays.
    assert await redis.exists(f"{redis_prefix}jobs:j") == 0
    ttl = await redis.pttl(f"{redis_prefix}jobs:j:done")
    assert 0 < ttl <= 3 * HOUR * 1000


async def test_concurrent_schedulers_run_once(redis: Any, redis_prefix: str) -> None:
    body = Counter()
    job = Job("j", HOUR, body)
    schedulers = [JobScheduler([job], redis=redis, prefix=redis_prefix) for _ in range(8)]
    outcomes = await asyncio.gather(*(s.run_due(job, T0) for s in schedulers))
    assert outcomes.count("ran") == 1
    assert set(outcomes) <= {"ran", "busy", "done"}
    assert body.runs == 1


async def test_a_running_job_holds_its_lock_and_others_skip(redis: Any, redis_prefix: str) -> None:
    body = Counter()
    body.gate = asyncio.Event()
    job = Job("j", HOUR, body)
    a = JobScheduler([job], redis=redis, prefix=redis_prefix)
    b = JobScheduler([job], redis=redis, prefix=redis_prefix)
    running = asyncio.create_task(a.run_due(job, T0))
    await body.started.wait()
    token = await redis.get(f"{redis_prefix}jobs:j")
    assert token
    assert 0 < await redis.pttl(f"{redis_prefix}jobs:j") <= LOCK_LEASE_SECONDS * 1000
    assert await b.run_due(job, T0 + 1) == "busy"
    body.gate.set()
    assert await running == "ran"
    assert await redis.exists(f"{redis_prefix}jobs:j") == 0


async def test_a_failed_run_leaves_the_period_to_another_process(
    redis: Any, redis_prefix: str
) -> None:
    body = Counter()
    body.fail = True
    job = Job("j", HOUR, body)
    a = JobScheduler([job], redis=redis, prefix=redis_prefix)
    b = JobScheduler([job], redis=redis, prefix=redis_prefix)
    with pytest.raises(RuntimeError):
        await a.run_due(job, T0)
    assert await redis.exists(f"{redis_prefix}jobs:j") == 0  # released despite the failure
    body.fail = False
    assert await b.run_due(job, T0 + 1) == "ran"


async def test_stop_cancels_a_running_job_and_releases_its_lock(
    redis: Any, redis_prefix: str
) -> None:
    body = Counter()
    body.gate = asyncio.Event()  # never set: the job runs until stopped
    scheduler = JobScheduler([Job("j", 3600.0, body)], redis=redis, prefix=redis_prefix)
    scheduler.start()
    await asyncio.wait_for(body.started.wait(), 10)
    assert await redis.exists(f"{redis_prefix}jobs:j") == 1
    await scheduler.stop()
    assert await redis.exists(f"{redis_prefix}jobs:j") == 0
    assert await redis.exists(f"{redis_prefix}jobs:j:done") == 0


async def test_a_lock_taken_by_someone_else_is_never_released_by_us(
    redis: Any, redis_prefix: str
) -> None:
    body = Counter()
    job = Job("j", HOUR, body)
    scheduler = JobScheduler([job], redis=redis, prefix=redis_prefix)
    await redis.set(f"{redis_prefix}jobs:j", "someone-else", px=60_000)
    assert await scheduler.run_due(job, T0) == "busy"
    assert await redis.get(f"{redis_prefix}jobs:j") == b"someone-else"
    assert body.runs == 0


async def test_a_long_job_keeps_renewing_its_lock(
    redis: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heliox.worker

    monkeypatch.setattr(heliox.worker, "LOCK_LEASE_SECONDS", 0.3)
    monkeypatch.setattr(heliox.worker, "RENEW_EVERY_SECONDS", 0.05)
    body = Counter()
    body.gate = asyncio.Event()
    job = Job("j", HOUR, body)
    running = asyncio.create_task(
        JobScheduler([job], redis=redis, prefix=redis_prefix).run_due(job, T0)
    )
    await body.started.wait()
    loop = asyncio.get_running_loop()
    # Watch for more than three leases: without renewals the lock would lapse after 0.3 s.
    watch_until = loop.time() + 1.0
    lapsed = 0
    while loop.time() < watch_until:
        lapsed += await redis.get(f"{redis_prefix}jobs:j") is None
        await asyncio.sleep(0.02)
    body.gate.set()
    assert await running == "ran"
    assert lapsed == 0


async def test_periodic_jobs_include_log_retention() -> None:
    from heliox.config import load_settings

    settings = load_settings(deployment_mode="demo", log_retention_interval_seconds=120)
    jobs = periodic_jobs(settings, session_factory=None)  # type: ignore[arg-type]
    assert [(j.name, j.interval) for j in jobs] == [("log-retention", 120.0)]


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_gateway_runs_the_jobs_only_with_background_jobs_on(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    from heliox.config import load_settings
    from heliox.runtime import Runtime

    monkeypatch.setenv("HELIOX_SPILL_DIR", str(tmp_path / "spill"))
    settings = load_settings(
        deployment_mode="demo",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}",
        auto_seed=False,
        background_jobs=enabled,
    )
    runtime = Runtime(settings)
    await runtime.start()
    try:
        if enabled:
            assert runtime.jobs is not None
            for _ in range(200):  # the first run starts at once: the period has not run yet
                if runtime.metrics.events["jobs_run"]:
                    break
                await asyncio.sleep(0.05)
            assert runtime.metrics.events["jobs_run"] == 1
        else:
            assert runtime.jobs is None
            assert runtime.metrics.events["jobs_run"] == 0
    finally:
        await runtime.stop()
