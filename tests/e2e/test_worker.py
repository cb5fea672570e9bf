"""`heliox worker` as real processes: retention runs, once per period across two workers."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select

from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database
from heliox.db.models import RequestLog
from tests.e2e.harness import (
    Gateway,
    Proc,
    Upstream,
    gateway_env,
    running,
    start_gateway,
    start_process,
    wait_until,
)

RAN = re.compile(r"job log-retention ran for period (\d+)")


def add_logs(url: str, ages_days: list[float]) -> None:
    """Migrate the database and add one request-log row per age."""

    async def run() -> None:
        await upgrade_database(url)
        engine = make_engine(url, pool_size=1)
        now = datetime.now(UTC)
        async with make_session_factory(engine)() as session:
            for age in ages_days:
                session.add(
                    RequestLog(
                        ts=now - timedelta(days=age),
                        method="GET",
                        path=f"/aged-{age}",
                        status=200,
                        latency_ms=1.0,
                    )
                )
            await session.commit()
        await engine.dispose()

    asyncio.run(run())


def log_count(url: str) -> tuple[int, int]:
    """(rows older than 30 days, younger rows)."""

    async def run() -> tuple[int, int]:
        engine = make_engine(url, pool_size=1)
        cutoff = datetime.now(UTC) - timedelta(days=30)
        try:
            async with make_session_factory(engine)() as session:
                old = await session.scalar(
                    select(func.count()).select_from(RequestLog).where(RequestLog.ts < cutoff)
                )
                young = await session.scalar(
                    select(func.count()).select_from(RequestLog).where(RequestLog.ts >= cutoff)
                )
        finally:
            await engine.dispose()
        return int(old or 0), int(young or 0)

    return asyncio.run(run())


def periods(proc: Proc) -> list[int]:
    return [int(p) for p in RAN.findall(proc.output())]


def job_runs(gw: Gateway) -> int:
    admin = {"X-Admin-Key": gw.env["ADMIN_API_KEY"]}  # production: metrics need the key
    events = httpx.get(gw.url + "/metrics", headers=admin, timeout=5).json()["events"]
    return int(events.get("jobs_run", 0))


def test_two_workers_run_each_period_once_and_delete_old_logs(
    tmp_path: Path, upstream: Upstream, pg_url: str, redis_server: str, redis_prefix: str
) -> None:
    add_logs(pg_url, [400, 45, 31, 29, 1, 0])
    env = gateway_env(
        upstream,
        database_url=pg_url,
        redis_url=redis_server,
        extra={
            "REDIS_KEY_PREFIX": redis_prefix,
            "LOG_RETENTION_INTERVAL_SECONDS": "1",
            "LOG_LEVEL": "INFO",
        },
    )
    workers = [start_process(f"worker-{i}", ["worker"], env, tmp_path) for i in (1, 2)]
    # A gateway that leaves the jobs to the workers, started while they run.
    gateway = start_gateway(tmp_path, {**env, "BACKGROUND_JOBS": "false", "LOG_LEVEL": "WARNING"})
    with running(gateway.proc, *workers):
        wait_until(lambda: len(set(periods(workers[0]) + periods(workers[1]))) >= 4, 60)
        assert log_count(pg_url) == (0, 3)
        assert job_runs(gateway) == 0
        for worker in workers:
            assert worker.stop() == 0, worker.output()
    seen = periods(workers[0]) + periods(workers[1])
    assert len(seen) == len(set(seen)), f"a period ran twice: {sorted(seen)}"
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        assert client.exists(f"{redis_prefix}jobs:log-retention") == 0  # no lock left behind
    finally:
        client.close()
