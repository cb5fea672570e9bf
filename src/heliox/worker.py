"""Running the periodic jobs: in `heliox worker`, or inside each gateway (BACKGROUND_JOBS=true).

Time is cut into periods of each job's interval (multiples of it since the epoch, read from Redis
`TIME` so every machine agrees). A job runs at most once per period across all processes:

1. take the job's lock: `SET NX PX` with a random owner token (renewed while the job runs);
2. read the job's "done" marker; if it already names this period, another process ran it: stop;
3. run the job, write the marker, release the lock by compare-and-delete (only our own token).

A process that dies mid-run leaves no marker, so once its lock expires another one runs the job
in the same period. Without Redis (embedded mode, one process) jobs simply run on their schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from heliox.config import Settings
from heliox.jobs import Job
from heliox.metrics import Metrics
from heliox.state.lock_redis import RedisLocks

log = logging.getLogger("heliox.jobs")

Outcome = Literal["ran", "done", "busy"]

# A job holds its lock this long past its last renewal; a dead holder blocks others this long.
LOCK_LEASE_SECONDS = 30.0
RENEW_EVERY_SECONDS = LOCK_LEASE_SECONDS / 3
# After a failure (the job raised, Redis or the database unreachable), try again this soon.
RETRY_SECONDS = 30.0
# Renew only while the token is still ours (the lock may have expired and been taken since).
_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class UnknownJob(ValueError):
    """`heliox worker --job NAME` named no job."""


def period_of(now: float, interval: float) -> int:
    return int(now // interval)


def seconds_to_next_period(now: float, interval: float) -> float:
    return (period_of(now, interval) + 1) * interval - now


class JobScheduler:
    """Runs each job once per period; with a Redis client, once per period across processes."""

    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        redis: Any = None,
        prefix: str = "heliox:",
        metrics: Metrics | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.redis = redis
        self.prefix = prefix + "jobs:"
        self.metrics = metrics or Metrics()
        self._locks = RedisLocks(redis, prefix=self.prefix) if redis is not None else None
        self._extend = redis.register_script(_EXTEND_LUA) if redis is not None else None
        self._local_done: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"heliox-job-{job.name}"))

    async def stop(self) -> None:
        """Cancel the schedule; a job in progress stops and releases its lock."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def run_all_once(self) -> dict[str, Outcome]:
        """Each job once, now, unless already run this period (`heliox worker --once`)."""
        now = await self.now()
        return {job.name: await self.run_due(job, now) for job in self.jobs}

    # --- one period --------------------------------------------------------------------------
    async def now(self) -> float:
        if self.redis is None:
            return time.time()
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1e6

    async def run_due(self, job: Job, now: float) -> Outcome:
        """Run `job` for the period containing `now` unless it has run (or is running) already."""
        period = period_of(now, job.interval)
        if self._locks is None:
            if self._local_done.get(job.name, -1) >= period:
                return "done"
            await self._run(job, period)
            self._local_done[job.name] = period
            return "ran"
        token = await self._locks.acquire(job.name, int(LOCK_LEASE_SECONDS * 1000))
        if token is None:
            self.metrics.count("jobs_skipped")
            return "busy"
        renewer = asyncio.create_task(self._renew(job.name, token))
        try:
            done = await self.redis.get(self._done_key(job))
            if done is not None and int(done) >= period:
                self.metrics.count("jobs_skipped")
                return "done"
            await self._run(job, period)
            # Kept a few periods: long enough to be read by everyone in this one.
            keep_ms = int(max(job.interval * 3, 60.0) * 1000)
            await self.redis.set(self._done_key(job), period, px=keep_ms)
            return "ran"
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self._locks.release(job.name, token)
            except Exception as exc:  # it expires by itself within the lease
                log.warning("job %s: could not release its lock: %s", job.name, exc)

    async def _run(self, job: Job, period: int) -> None:
        started = time.perf_counter()
        try:
            summary = await job.run()
        except Exception:
            self.metrics.count("job_errors")
            raise
        self.metrics.count("jobs_run")
        log.info(
            "job %s ran for period %d in %.3f s: %s",
            job.name,
            period,
            time.perf_counter() - started,
            summary,
        )

    async def _renew(self, name: str, token: str) -> None:
        assert self._extend is not None
        while True:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            try:
                kept = await self._extend(
                    keys=[self.prefix + name], args=[token, int(LOCK_LEASE_SECONDS * 1000)]
                )
            except Exception as exc:
                log.warning("job %s: could not renew its lock: %s", name, exc)
                continue
            if not kept:
                # Another process may start the job too; every job is idempotent, so finish.
                log.warning("job %s: lost its lock while running", name)
                return

    def _done_key(self, job: Job) -> str:
        return f"{self.prefix}{job.name}:done"

    # --- the schedule ------------------------------------------------------------------------
    async def _loop(self, job: Job) -> None:
        while True:
            try:
                await self.run_due(job, await self.now())
                delay = seconds_to_next_period(await self.now(), job.interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # One line (a database or Redis outage repeats it every retry); the traceback
                # with LOG_LEVEL=DEBUG.
                log.warning(
                    "job %s failed: %s; retrying",
                    job.name,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                delay = min(job.interval, RETRY_SECONDS)
            # A little jitter so every process does not hit Redis in the same millisecond.
            await asyncio.sleep(delay + random.uniform(0, min(1.0, job.interval / 10)))


async def run_worker(
    settings: Settings,
    *,
    once: bool = False,
    only: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> int:
    """`heliox worker`: migrate, then run the periodic jobs until SIGTERM/SIGINT (exit 0)."""
    from heliox.db.engine import make_engine, make_session_factory
    from heliox.db.migrate import upgrade_database
    from heliox.jobs import periodic_jobs
    from heliox.state.redis_client import redis_client

    engine = make_engine(  # connects lazily
        settings.effective_database_url,
        pool_size=min(settings.database_pool_size, 4),
        connect_timeout=settings.database_timeout,
    )
    jobs = periodic_jobs(settings, make_session_factory(engine))
    if only:
        unknown = sorted(set(only) - {job.name for job in jobs})
        if unknown:
            await engine.dispose()
            raise UnknownJob(
                f"unknown job(s) {', '.join(unknown)}; jobs: {', '.join(j.name for j in jobs)}"
            )
        jobs = [job for job in jobs if job.name in only]
    redis = redis_client(settings) if settings.redis_url else None
    scheduler = JobScheduler(jobs, redis=redis, prefix=settings.redis_key_prefix)
    try:
        await upgrade_database(settings.effective_database_url, progress=progress)
        if once:
            for name, outcome in (await scheduler.run_all_once()).items():
                log.info("job %s: %s", name, _OUTCOME_TEXT[outcome])
            return 0
        if redis is None:
            log.warning(
                "no REDIS_URL: jobs are not coordinated with other processes; run a single "
                "worker, and BACKGROUND_JOBS=false on the gateway if this worker runs beside it"
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        scheduler.start()
        log.info(
            "worker ready: %s",
            ", ".join(f"{j.name} every {j.interval:g} s" for j in jobs) or "no jobs",
        )
        await stop.wait()
        log.info("worker stopping")
        await scheduler.stop()
        return 0
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


_OUTCOME_TEXT: dict[Outcome, str] = {
    "ran": "ran",
    "done": "already ran this period (elsewhere)",
    "busy": "running elsewhere right now",
}
