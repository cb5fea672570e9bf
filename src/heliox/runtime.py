"""Everything one gateway process holds while it runs, started and stopped in one place.

The hot path reads `runtime.snapshot` (swapped whole on a config change) and calls the state
backends; the admin API and UI use the session factory. Background work, all started by `start`
and stopped by `stop`: the request-log writer, the dependency health checks, the periodic jobs
(`BACKGROUND_JOBS`), the config poll and, with Redis, the config and abuse-forget subscription,
the workers' shared metrics dump (several workers) and the periodic heap trim
(`MEMORY_TRIM_INTERVAL`). HELIOX_SPILL_DIR and HELIOX_METRICS_DIR are read here rather than in
`Settings`: the worker processes of a server read them after the CLI may have set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection, Request

from heliox.config import Settings
from heliox.core.anomaly import AbuseDetector, DetectorConfig
from heliox.core.breaker import RecentEvents
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.logwriter import LogWriter
from heliox.db.migrate import upgrade_database
from heliox.db.snapshot_loader import load_delta, load_snapshot, read_config_version
from heliox.jobs import periodic_jobs
from heliox.memory_trim import trim_periodically
from heliox.metrics import Metrics, SharedMetrics
from heliox.net.upstream_client import UpstreamClient
from heliox.seed import seed
from heliox.snapshot import Snapshot, apply_delta
from heliox.state.admission import AdmissionBackend, key_subject
from heliox.state.admission_memory import MemoryAdmission
from heliox.state.admission_redis import RedisAdmission
from heliox.state.bloom_store import MemoryNegativeCache, NegativeCache, RedisNegativeCache
from heliox.state.cache import CacheStore
from heliox.state.cache_l1 import FreshEntries
from heliox.state.cache_memory import MemoryCacheStore
from heliox.state.cache_redis import RedisCacheStore
from heliox.state.redis_client import redis_client
from heliox.state.redis_pipe import describe
from heliox.structured_log import AccessLog
from heliox.worker import JobScheduler

log = logging.getLogger("heliox")

CONFIG_CHANNEL = "config"
# An admin unblock: every instance drops the key's abuse-detector baseline (message: the key id).
ABUSE_FORGET_CHANNEL = "abuse-forget"
# Redis errors this recent (seconds) make /health say degraded even when the last check passed:
# a Redis that answers PING but refuses the commands requests send is not healthy.
REDIS_TROUBLE_WINDOW = 10.0
# At stop, how long closing the database connections may take (a hung server never answers).
ENGINE_DISPOSE_TIMEOUT = 2.0


def detector_config(settings: Settings) -> DetectorConfig:
    """The detector the ABUSE_* settings describe (the gateway's and `heliox abuse replay`'s)."""
    return DetectorConfig(
        window_seconds=settings.abuse_window_seconds,
        alpha=settings.abuse_ewma_alpha,
        threshold=settings.abuse_zscore_threshold,
        min_samples=settings.abuse_min_samples,
        min_rate=settings.abuse_min_rate,
        min_baseline_requests=settings.abuse_min_baseline_requests,
        min_ratio=settings.abuse_min_spike_ratio,
        limit_fraction=settings.abuse_min_limit_fraction,
        action=settings.abuse_action,
    )


class DependencyState:
    """The last background check of one dependency, as /health reports it."""

    __slots__ = ("checked_at", "error", "seconds", "status")

    def __init__(self) -> None:
        self.status = "ok"
        self.error = ""
        self.checked_at = 0.0  # wall clock; 0 until the first check
        self.seconds = 0.0  # how long that check took

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "checked_at": self.checked_at}
        out["check_seconds"] = round(self.seconds, 4)
        if self.error:
            out["error"] = self.error
        return out


# The acting admin of a request from its UI session (sync or async), None without one.
SessionActor = Callable[[Request], "str | Awaitable[str | None] | None"]


class AuthThrottle(Protocol):
    """Failed admin authentications per client address (admin.throttle.AdminAuthGuard)."""

    async def attempt(self, conn: HTTPConnection) -> Any: ...

    async def succeeded(self, attempt: Any) -> None: ...

    async def failed(self, attempt: Any, channel: str) -> float: ...


@dataclass
class CacheDeps:
    """What the gateway's cache layer uses of the runtime (`Runtime.cache_deps` builds it)."""

    cache: CacheStore
    negative: NegativeCache
    redis: Any  # redis.asyncio.Redis when REDIS_URL is set, else None
    metrics: Metrics
    upstream: UpstreamClient
    fresh_entries: FreshEntries | None
    key_prefix: str  # REDIS_KEY_PREFIX
    add_task: Callable[[asyncio.Task[None]], None]  # a background task the owner cancels


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance_id = uuid.uuid4().hex[:8]
        self.metrics = Metrics()
        self.snapshot = Snapshot()
        self.engine: AsyncEngine = make_engine(
            settings.effective_database_url,
            pool_size=settings.database_pool_size,
            connect_timeout=settings.database_timeout,
        )
        self.session_factory: async_sessionmaker[AsyncSession] = make_session_factory(self.engine)
        self.upstream = UpstreamClient(
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            pool_timeout=settings.upstream_pool_timeout,
            max_requests_per_key=settings.upstream_max_requests_per_key,
            deny_networks=settings.upstream_deny_network_list,
            keepalive_timeout=settings.upstream_keepalive_timeout,
            on_retry=partial(self.metrics.count, "upstream_retries"),
        )
        self.logs = LogWriter(
            self.engine,
            is_postgres=settings.is_postgres,
            metrics=self.metrics,
            queue_size=settings.log_queue_size,
            spill_path=Path(os.environ.get("HELIOX_SPILL_DIR", "var"))
            / f"logs-spill-{os.getpid()}.jsonl",
            write_timeout=settings.log_write_timeout,
        )
        # ACCESS_LOG: the gateway checks this one attribute per request (None: off).
        self.access_log: AccessLog | None = (
            AccessLog(self.metrics, capacity=settings.access_log_buffer)
            if settings.access_log
            else None
        )
        self.redis: Any = None  # redis.asyncio.Redis when REDIS_URL is set
        self.admission: AdmissionBackend = MemoryAdmission(quota_tz=settings.quota_timezone)
        self.detector = AbuseDetector(detector_config(settings))
        # State: in-process unless REDIS_URL is set (then shared by every instance, below).
        self.cache: CacheStore = MemoryCacheStore(settings.cache_max_bytes)
        # With Redis: fresh entries kept in process as well (the cache's L1).
        self.fresh_entries: FreshEntries | None = None
        self.negative: NegativeCache = MemoryNegativeCache(
            expected_items=settings.bloom_expected_items,
            false_positive_rate=settings.bloom_false_positive_rate,
            rotation_seconds=settings.bloom_rotation_seconds,
            hash_key=self.bloom_hash_key,
        )
        s = settings
        if s.redis_url:
            # Connections open lazily; building the clients here lets every step hold them.
            self.redis = redis_client(s)
            self.redis.probe_key = s.redis_key_prefix + "probe:" + self.instance_id
            cache = RedisCacheStore(self.redis, prefix=s.redis_key_prefix + "cache:")
            self.cache = cache
            if s.cache_l1_max_bytes:
                self.fresh_entries = FreshEntries(s.cache_l1_max_bytes)
            self.admission = RedisAdmission(
                self.redis,
                prefix=s.redis_key_prefix,
                quota_tz=s.quota_timezone,
                # Only needed by the in-process copies: without them, no extra read.
                cache_generation_key=cache.generation_key
                if self.fresh_entries is not None
                else None,
            )
            self.negative = RedisNegativeCache(
                self.redis,
                expected_items=s.bloom_expected_items,
                false_positive_rate=s.bloom_false_positive_rate,
                rotation_seconds=s.bloom_rotation_seconds,
                hash_key=self.bloom_hash_key,
                prefix=s.redis_key_prefix + "neg:",
            )
        folder = os.environ.get("HELIOX_METRICS_DIR")
        self.shared_metrics = SharedMetrics(self.metrics, folder) if folder else None
        self._metric_renders: dict[str, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.jobs: JobScheduler | None = None  # periodic jobs, when BACKGROUND_JOBS is on
        self._reload_lock = asyncio.Lock()
        # /health answers from these, refreshed in the background (never waits on a dependency).
        self.dependencies: dict[str, DependencyState] = {"database": DependencyState()}
        if s.redis_url:
            self.dependencies["redis"] = DependencyState()
        # Requests admitted without a rate-limit check because the store failed (fail-open).
        self.fail_open_admissions = RecentEvents(60)
        self.started = False
        self.draining: bool = False  # set when the server begins to shut down
        # Set by the gateway: the cache fills in flight in this process (`process_stats`).
        self.fill_flights: Sized | None = None
        # Set by the application (main): the admin authentication throttle, and the UI's
        # session as an admin API credential.
        self.admin_guard: AuthThrottle | None = None
        self.session_actor: SessionActor | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await upgrade_database(s.effective_database_url)
        if s.auto_seed:
            await seed(self.session_factory, s)
        await self.reload_config()
        await self.upstream.start()
        self.logs.start()
        if self.access_log is not None:
            self.access_log.start()
        await self.check_dependencies()  # the first answer of /health is a real one
        self._tasks.append(
            asyncio.create_task(self._watch_dependencies(), name="heliox-health-checks")
        )
        if s.background_jobs:
            self.jobs = JobScheduler(
                periodic_jobs(s, self.session_factory),
                redis=self.redis,
                prefix=s.redis_key_prefix,
                metrics=self.metrics,
            )
            self.jobs.start()
        self._tasks.append(asyncio.create_task(self._poll_config(), name="heliox-config-poll"))
        if self.shared_metrics is not None:
            self._tasks.append(asyncio.create_task(self._dump_metrics(), name="heliox-metrics"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="heliox-config-sub"))
        if s.memory_trim_interval:
            self._tasks.append(
                asyncio.create_task(
                    trim_periodically(s.memory_trim_interval), name="heliox-memory-trim"
                )
            )
        self.started = True
        # Everything built at start-up (snapshot, modules) is long-lived: keep it out of every
        # garbage collection, which otherwise shows as latency spikes under load.
        gc.freeze()
        log.info(
            "heliox %s ready (%s mode, %d routes, %d keys)",
            self.instance_id,
            s.deployment_mode,
            len(self.snapshot.routes),
            len(self.snapshot.keys),
        )

    async def stop(self) -> None:
        if self.jobs is not None:  # first: a job in progress stops and releases its lock
            await self.jobs.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.logs.stop()
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)
        await self.upstream.close()
        if self.redis is not None:
            await self.redis.aclose()
        # A hung database must not hold the exit up: the process is leaving, its sockets with it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ENGINE_DISPOSE_TIMEOUT):
                await self.engine.dispose()

    @property
    def bloom_hash_key(self) -> bytes:
        # Keyed hashing: nobody without the secret can craft paths that collide in the filter.
        return hmac.new(self.settings.secret_key.encode(), b"heliox-bloom", "sha256").digest()[:16]

    # --- configuration -----------------------------------------------------------------------
    async def reload_config(self) -> None:
        """Load the whole snapshot (start-up, and when no delta can bring this one up to date)."""
        async with self._reload_lock:
            await self._load_whole()

    async def sync_config(self) -> None:
        """Bring the snapshot up to the database's config version: apply what the versions since
        this one changed, re-reading just those rows, or load it whole when they are not all
        recorded (this instance missed more than the database keeps, or a write predates them)."""
        async with self._reload_lock:
            delta = await load_delta(self.session_factory, self.snapshot)
            if delta is None:
                await self._load_whole()
            elif delta.version != self.snapshot.version:
                # No await between taking the old snapshot and swapping: apply_delta updates its
                # key tables in place, and nothing may read them half-applied.
                self._swap(apply_delta(self.snapshot, delta))
                self.metrics.count("config_deltas_applied")

    async def _load_whole(self) -> None:
        self._swap(await load_snapshot(self.session_factory))
        self.metrics.count("config_full_reloads")
        if self.started:
            # As at start-up: a million new key objects left to the collector make every full
            # collection walk them, stalling requests ~1 s each time (measured at 10^6 keys).
            gc.freeze()

    def _swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        # Route labels name configured routes only: a removed route's series go with it.
        self.metrics.keep_routes(snapshot.routes)
        self.metrics.count("config_reloads")  # every new snapshot, whole or by delta
        self.metrics.gauges["config_version"] = snapshot.version

    async def config_changed(self) -> None:
        """After an admin write has committed: apply it here and tell the other instances."""
        await self.sync_config()
        if self.redis is not None:
            try:
                await self.redis.publish(
                    self.settings.redis_key_prefix + CONFIG_CHANNEL, str(self.snapshot.version)
                )
            except Exception as exc:  # polling still propagates the change
                log.warning("could not publish config version on Redis: %s", exc)

    def cache_deps(self) -> CacheDeps:
        """The backends, client and settings the gateway's cache layer works with."""
        return CacheDeps(
            cache=self.cache,
            negative=self.negative,
            redis=self.redis,
            metrics=self.metrics,
            upstream=self.upstream,
            fresh_entries=self.fresh_entries,
            key_prefix=self.settings.redis_key_prefix,
            add_task=self.add_task,
        )

    def inflight_fills(self) -> int:
        """How many cache fills are in flight in this process."""
        return len(self.fill_flights) if self.fill_flights is not None else 0

    def process_stats(self) -> dict[str, int]:
        """What must stay flat under load, for the worker answering: tasks, fills, upstream
        requests' bulkhead entries (routes and keys with one in flight), files, memory."""
        routes, keys = self.upstream.bulkheads.in_flight()
        stats = {
            "asyncio_tasks": len(asyncio.all_tasks()),
            "inflight_fills": self.inflight_fills(),
            "upstream_busy_routes": routes,
            "upstream_busy_keys": keys,
        }
        with contextlib.suppress(OSError):
            stats["open_fds"] = len(os.listdir("/proc/self/fd"))
            with open("/proc/self/statm", encoding="ascii") as fh:
                stats["rss_bytes"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return stats

    def add_task(self, task: asyncio.Task[None]) -> None:
        """A background task that stop() cancels."""
        self._tasks.append(task)

    async def render_metrics(self, kind: Literal["json", "prometheus"]) -> Any:
        """`as_json()` or `prometheus_text()` of this process's metrics, or of all workers'
        merged when the server runs several, without stalling requests.

        Only a copy of the counters is taken on the event loop; merging the workers' files and
        rendering run in a thread. Scrapes that arrive while one is rendering share its result.
        """
        pending = self._metric_renders.get(kind)
        if pending is None:
            self.metrics.gauges["log_queue_length"] = self.logs.pending  # as of this scrape
            self._health_gauges()
            dump = self.metrics.dump()
            pending = asyncio.ensure_future(asyncio.to_thread(self._render_metrics, kind, dump))
            self._metric_renders[kind] = pending
            pending.add_done_callback(lambda _: self._metric_renders.pop(kind, None))
        # Shielded: a scraper that goes away must not cancel the render the others wait for.
        return await asyncio.shield(pending)

    def _render_metrics(self, kind: str, dump: dict[str, Any]) -> Any:
        if self.shared_metrics is not None:
            view = self.shared_metrics.merged(dump)
        else:
            view = Metrics.merged([dump])
        return view.as_json() if kind == "json" else view.prometheus_text()

    async def _dump_metrics(self) -> None:
        assert self.shared_metrics is not None
        while True:
            await asyncio.sleep(0.5)
            self._health_gauges()
            dump = self.metrics.dump()  # the copy on the loop; JSON and the file in a thread
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.shared_metrics.write, dump)

    async def _poll_config(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_poll_interval)
            try:
                version = await read_config_version(self.session_factory)
                if version != self.snapshot.version:
                    await self.sync_config()
            except Exception as exc:  # database down: keep serving the last snapshot
                self.metrics.count("config_poll_errors")
                log.debug("config poll failed: %s", exc)

    async def forget_abuse_state(self, key_id: int) -> None:
        """After an unblock: this instance and every other one forget the key's baseline, so
        no detector re-flags it on the traffic it judged before."""
        self.detector.forget(key_subject(key_id))
        self.metrics.count("abuse_forgets")
        if self.redis is not None:
            try:
                channel = self.settings.redis_key_prefix + ABUSE_FORGET_CHANNEL
                # The sender's id: its own message comes back to it, already applied.
                await self.redis.publish(channel, f"{key_id} {self.instance_id}")
            except Exception as exc:
                log.warning("could not tell the other instances to forget key %s: %s", key_id, exc)

    def _forgotten(self, data: object) -> None:
        """An abuse-forget message, "<key id> <sender's instance id>" (a bare key id from an
        instance of an earlier version)."""
        with contextlib.suppress(TypeError, ValueError):
            text = data.decode() if isinstance(data, bytes) else str(data)
            key, _, sender = text.partition(" ")
            if sender == self.instance_id:
                return
            self.detector.forget(key_subject(int(key)))
            self.metrics.count("abuse_forgets")

    async def _watch_config(self) -> None:
        channel = self.settings.redis_key_prefix + CONFIG_CHANNEL
        forget = self.settings.redis_key_prefix + ABUSE_FORGET_CHANNEL
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel, forget)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    name = message.get("channel")
                    if (name.decode() if isinstance(name, bytes) else name) == forget:
                        self._forgotten(message.get("data"))
                        continue
                    with contextlib.suppress(Exception):
                        await self.sync_config()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("config subscription lost: %s; retrying", exc)
                await asyncio.sleep(1.0)

    # --- health ------------------------------------------------------------------------------
    async def check_dependencies(self) -> None:
        """Check every dependency at once, each within HEALTH_TIMEOUT, and keep the results."""
        checks = [self._check("database", self._check_database)]
        if self.redis is not None:
            checks.append(self._check("redis", self.redis.check))
        await asyncio.gather(*checks)

    async def _check(self, name: str, probe: Callable[[], Any]) -> None:
        state = self.dependencies[name]
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.health_timeout):
                await probe()
        except Exception as exc:
            state.status = "degraded"
            if isinstance(exc, TimeoutError):
                state.error = f"no answer within {self.settings.health_timeout:g} s"
            else:
                state.error = describe(exc)
        else:
            state.status, state.error = "ok", ""
        state.seconds = time.monotonic() - t0
        state.checked_at = time.time()

    async def _check_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _watch_dependencies(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            with contextlib.suppress(Exception):
                await self.check_dependencies()

    def _redis_health(self) -> dict[str, Any]:
        """The Redis check, plus what requests saw since: breaker, recent errors, fail-open."""
        out = self.dependencies["redis"].as_json()
        client = self.redis
        now = time.monotonic()
        breaker = client.breaker
        out["breaker"] = breaker.state
        if not breaker.closed:
            out["status"] = "degraded"
            out["breaker_retry_in"] = round(breaker.wait(now), 3)
        errors = client.trouble.count(now)
        out["errors_last_minute"] = errors
        if client.last_error:
            out["last_error"] = client.last_error
            out["last_error_at"] = client.last_error_at
            if time.time() - client.last_error_at < REDIS_TROUBLE_WINDOW:
                out["status"] = "degraded"
        out["fail_open_admissions_last_minute"] = self.fail_open_admissions.count(now)
        return out

    def _health_gauges(self) -> None:
        """heliox_database_up, heliox_redis_up (1: /health says ok) and
        heliox_redis_breaker_open, from the last checks (no I/O): set before each dump."""
        gauges = self.metrics.gauges
        for name, details in self.dependency_health().items():
            gauges[f"{name}_up"] = 1.0 if details["status"] == "ok" else 0.0
        if self.redis is not None:
            gauges["redis_breaker_open"] = 0.0 if self.redis.breaker.closed else 1.0

    def dependency_health(self) -> dict[str, dict[str, Any]]:
        """Each dependency's state as /health reports it (no I/O: the last checks)."""
        out: dict[str, dict[str, Any]] = {}
        for name, state in self.dependencies.items():
            out[name] = self._redis_health() if name == "redis" else state.as_json()
        return out

    async def health(self) -> dict[str, Any]:
        """Answers at once from the last background checks: never waits on a dependency."""
        details = self.dependency_health()
        checks = {name: d["status"] for name, d in details.items()}
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return {
            "status": status,
            "mode": self.settings.deployment_mode,
            "instance": self.instance_id,
            "config_version": self.snapshot.version,
            "checks": checks,
            "dependencies": details,
            "time": time.time(),
            # Log rows given up (queue full, spill file unwritable): 0 unless rows were lost.
            "log_rows_lost": self.logs.lost,
        }
