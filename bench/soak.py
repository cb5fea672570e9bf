"""Soak: mixed traffic over many API keys and paths, checking that memory stays bounded.

Checks the memory targets: with a 64 MiB cache cap and 10^5 distinct entries cached,
resident memory stays under cap + 150 MB and does not grow; with 10^6 API keys hitting the
limiter on Redis, every Redis key has a TTL.

Two modes:

  production (default)  PostgreSQL (a throwaway database) and its own redis-server (own port, so
                        Redis's memory and keys are the gateway's alone)
  embedded              SQLite and in-process state: the cache lives in the gateway's own memory,
                        so "RSS < cache cap + 150 MB" is meaningful here

It starts the example upstream and one gateway (`heliox serve`, one granian worker), writes --keys
API keys straight into the database, bumps the config version and times the gateway's snapshot
reload (and its memory before and after, and the longest request stall meanwhile), then sends
mixed traffic for --minutes: cached GETs over --paths paths (each path's body a fixed size within
--body-bytes, so all paths together exceed the cache cap and eviction runs), hot and negative
cache entries, pass-through GET/POST, wrong keys (401), an over-limit key (429) and bad paths
(400). Requests that reach the limiter take their keys in turn, so the first --keys of them use
every key once; with --touch-all-keys the run goes on until every key has had an answer, then
--minutes more. Every --interval seconds it prints:

  wrk_mb all_mb  resident memory: the granian worker; the worker plus the server's supervisor
  fds thr        open files and threads of those processes
  cache cache_mb the cache's entry count and bytes (the gauges of GET /metrics)
  logq tasks fills  request-log queue, asyncio tasks and in-flight cache fills (GET /metrics)
  redis_mb keys no_ttl  Redis used_memory, key count, keys without a TTL (INFO keyspace; the
                 cache's bookkeeping keys left out)               (production only)
  idx idx_old    members of the cache's index of entries, and of those already expired and not
                 yet trimmed                                      (production only)
  keys%          API keys answered at least once
  rps p50 p99    the traffic in that interval, and its statuses

Then a summary with each check met or missed, and the figures:

  memory under cap   embedded: the worker's largest RSS (polled every 0.5 s) < --cache-mib MiB
                     + --headroom-mb MB
  no growth          after the warm-up (the first 20 % of the traffic time), the last sample's
                     RSS, open files and asyncio tasks within --tolerance of the first one's, and
                     the request-log queue never backed up (over 2,500 rows); also printed: the
                     worker RSS's trend over those samples (MiB/min)
  cache under cap    embedded: the cache_bytes gauge never above the cap, and the cap reached
                     (the paths requested need more than the cap, so entries were evicted)
  every key used     every API key answered at least once, none refused as unknown
  every key has TTL  production: no key without a TTL in any sample, nor in a final SCAN of
                     every key (PTTL each), outside the cache's bookkeeping keys
  bookkeeping bounded  production: those keys list no more than the live entries plus a bounded
                     backlog of expired ones

Exit status: 0 when every check is met, 1 when one is missed or the run failed, 2 when a
prerequisite is missing (redis-server, PostgreSQL), 130 on Ctrl-C. Everything it started is
stopped, and the database dropped, on every exit; the temp dir with the processes' logs is kept
(and named) unless every check is met.

    .venv/bin/python bench/soak.py --mode embedded                    # 10 min, 10^5 keys, 64 MiB
    .venv/bin/python bench/soak.py --keys 1000000 --touch-all-keys --minutes 3
    .venv/bin/python bench/soak.py --minutes 1 --keys 20000 --paths 20000 --interval 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, http
from benchkit.procs import Processes, children, exit_on_signals, free_port, wait_until
from benchkit.soakkeys import (
    KeySet,
    KeyWalk,
    bump_postgres,
    bump_sqlite,
    load_postgres,
    load_sqlite,
    new_keyset,
)
from benchkit.soaktraffic import Mix, Tally, traffic
from benchkit.soakwatch import (
    BOOKKEEPING,
    Memory,
    RssWatch,
    Sample,
    TtlScan,
    memory,
    proc_status,
    scan_ttls,
    take_sample,
)

PRODUCTION, EMBEDDED = "production", "embedded"
DEFAULT_PG = os.environ.get(
    "HELIOX_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_PREFIX = "heliox-soak:"
MIB = 2**20
MB = 10**6  # the memory target's "150 MB" is decimal megabytes
# Request-log queue length taken as a backlog: 5 % of LOG_QUEUE_SIZE's default (50,000).
LOG_BACKLOG = 2_500


def say(message: str) -> None:
    print(f"soak: {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mode",
        choices=(PRODUCTION, EMBEDDED),
        default=PRODUCTION,
        help="production: PostgreSQL + own redis-server (default); embedded: SQLite, in process",
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="traffic time (with --touch-all-keys: after every key was used)",
    )
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct API keys")
    ap.add_argument("--paths", type=int, default=100_000, help="distinct cached paths")
    ap.add_argument(
        "--body-bytes",
        default="512-3584",
        metavar="MIN-MAX",
        help="body size range of the cached responses (default 512-3584)",
    )
    ap.add_argument(
        "--cache-mib",
        type=float,
        default=64.0,
        help="CACHE_MAX_BYTES in MiB (the in-process cache's cap; default 64)",
    )
    ap.add_argument(
        "--headroom-mb",
        type=float,
        default=150.0,
        help="embedded: the worker's RSS must stay under the cap plus this many MB",
    )
    ap.add_argument(
        "--touch-all-keys",
        action="store_true",
        help="run until every key was answered once, then --minutes more",
    )
    ap.add_argument("--concurrency", type=int, default=32, help="clients sending at once")
    ap.add_argument("--tolerance", type=float, default=0.15, help="allowed growth after warm-up")
    ap.add_argument(
        "--reload-timeout",
        type=float,
        default=900.0,
        help="seconds the gateway may take to load the keys (default 900)",
    )
    ap.add_argument("--pg-admin-dsn", default=DEFAULT_PG,
                    help="PostgreSQL role allowed to create databases (production mode; env "
                         "HELIOX_BENCH_PG_ADMIN_DSN)")  # fmt: skip
    args = ap.parse_args(argv)
    if min(args.minutes, args.interval, args.cache_mib, args.reload_timeout) <= 0:
        ap.error("--minutes, --interval, --cache-mib and --reload-timeout must be positive")
    if args.keys < 1 or args.paths < 1 or args.concurrency < 1:
        ap.error("--keys, --paths and --concurrency must be at least 1")
    try:
        low, high = (int(v) for v in args.body_bytes.split("-", 1))
    except ValueError:
        ap.error("--body-bytes must look like MIN-MAX, e.g. 512-3584")
    if not 0 <= low <= high:
        ap.error("--body-bytes: MIN must be >= 0 and <= MAX")
    args.body_min, args.body_max = low, high
    return args


class Prerequisite(RuntimeError):
    """Something the soak needs is missing on this machine (exit 2)."""


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    """The processes and the database of one run; `close` undoes everything."""

    mode: str
    workdir: Path
    procs: Processes
    pg_admin_dsn: str
    database: str = ""
    dsn: str = ""  # the gateway's database (asyncpg form) in production mode
    sqlite_path: str = ""
    redis_port: int = 0
    gw: gateway.Gateway | None = None

    def start(self, cache_bytes: int) -> gateway.Gateway:
        up = gateway.start_upstream(self.procs, None)
        env = {
            "CACHE_MAX_BYTES": str(cache_bytes),
            "CONFIG_POLL_INTERVAL": "1",
            # The product's default, stated because benchkit's gateway defaults to shadow mode.
            "ABUSE_ACTION": "block",
        }
        if self.mode == PRODUCTION:
            env.update(self._start_redis())
            env.update(self._create_database())
        else:
            self.sqlite_path = str(self.workdir / "heliox.db")
            env["DATABASE_URL"] = "sqlite+aiosqlite:///" + self.sqlite_path
        self.gw = gateway.start_gateway(self.procs, self.mode, up, env, None)
        return self.gw

    def _start_redis(self) -> dict[str, str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise Prerequisite("redis-server is not installed (apt-get install -y redis-server)")
        import redis

        self.redis_port = free_port()
        proc = self.procs.start(
            "redis",
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
        )  # fmt: skip

        def ready() -> bool:
            proc.check_alive()
            with redis.Redis(port=self.redis_port, socket_timeout=1) as client:
                return bool(client.ping())

        wait_until(ready, "redis-server", timeout=30)
        return {
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "REDIS_KEY_PREFIX": REDIS_PREFIX,
        }

    def _create_database(self) -> dict[str, str]:
        try:
            asyncio.run(_pg(self.pg_admin_dsn, "SELECT 1"))
        except Exception as exc:
            raise Prerequisite(
                f"PostgreSQL at {self.pg_admin_dsn} is not reachable ({exc}); "
                "set --pg-admin-dsn or HELIOX_BENCH_PG_ADMIN_DSN"
            ) from exc
        self.database = "heliox_soak_" + uuid.uuid4().hex[:10]
        asyncio.run(_pg(self.pg_admin_dsn, f'CREATE DATABASE "{self.database}"'))
        self.dsn = self.pg_admin_dsn.rpartition("/")[0] + "/" + self.database
        return {"DATABASE_URL": self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)}

    def redis_client(self) -> Any:
        import redis

        return redis.Redis(port=self.redis_port, socket_timeout=120) if self.redis_port else None

    def load_keys(self, keys: KeySet) -> None:
        if self.mode == PRODUCTION:
            asyncio.run(load_postgres(self.dsn, keys))
        else:
            load_sqlite(self.sqlite_path, keys)

    def bump(self) -> None:
        if self.mode == PRODUCTION:
            asyncio.run(bump_postgres(self.dsn))
        else:
            bump_sqlite(self.sqlite_path)

    def close(self) -> None:
        self.procs.stop_all()
        if self.database:
            for attempt in range(3):
                try:
                    drop = f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
                    asyncio.run(_pg(self.pg_admin_dsn, drop))
                    break
                except Exception as exc:
                    if attempt == 2:
                        say(f"cleanup: could not drop database {self.database}: {exc!r}")
                    time.sleep(1)


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- the snapshot reload -------------------------------------------------------------------------


@dataclass
class Reload:
    insert_seconds: float
    seconds: float  # config version bumped -> the last key answered (includes <= 1 s of polling)
    before: Memory
    after: Memory
    worker_peak_mib: float
    stall_seconds: float  # the longest a trivial request (a 401) took meanwhile


class StallProbe:
    """Sends a request that needs no I/O (no key: 401) every 50 ms; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            with contextlib.suppress(Exception):  # a timeout is a stall too: measured below
                http.get(self.url, timeout=600)
            self.worst = max(self.worst, time.monotonic() - t0)
            self._stop.wait(0.05)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(620)


def load_and_reload(stack: Stack, gw: gateway.Gateway, keys: KeySet, timeout: float) -> Reload:
    say(f"writing {keys.count:,} API keys into the database ...")
    t0 = time.monotonic()
    stack.load_keys(keys)
    inserted = time.monotonic() - t0
    say(f"  written in {inserted:.1f} s; bumping the config version, waiting for the gateway")
    before = memory(gw.proc.pid)
    probe_key = {"X-API-Key": keys.plaintext(keys.count - 1)}
    watch = RssWatch(gw.proc.pid, period=0.1)
    t1 = time.monotonic()
    watch.start(t1)
    last_said = [t1]

    def loaded() -> bool:
        gw.proc.check_alive()
        now = time.monotonic()
        if now - last_said[0] >= 15:
            say(f"  ... {now - t1:.0f} s, worker RSS {watch.poll().worker_mib:.0f} MiB")
            last_said[0] = now
        return http.get(gw.url + "/g/demo/items", headers=probe_key, timeout=10).status == 200

    try:
        with StallProbe(gw.url + "/g/demo/items") as stall:
            t1 = time.monotonic()
            stack.bump()
            wait_until(loaded, f"the gateway's snapshot with {keys.count:,} keys", timeout, 0.1)
            seconds = time.monotonic() - t1
    finally:
        watch.stop()
    after = memory(gw.proc.pid)
    result = Reload(inserted, seconds, before, after, watch.worker_max, stall.worst)
    say(
        f"  snapshot reloaded in {seconds:.1f} s; worker RSS {before.worker_mib:.0f} -> "
        f"{after.worker_mib:.0f} MiB (peak {watch.worker_max:.0f}); longest stall "
        f"{stall.worst:.2f} s"
    )
    return result


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Schedule:
    started: float
    minutes: float
    walk: KeyWalk
    touch_all: bool

    def end(self) -> float | None:
        if not self.touch_all:
            return self.started + self.minutes * 60
        if self.walk.first_all_touched is None:
            return None  # not known until the last key has been answered
        return self.walk.first_all_touched + self.minutes * 60

    def done(self) -> bool:
        end = self.end()
        if end is not None:
            return time.monotonic() >= end
        # Two full rounds of keys and some never answered: they never will be; stop.
        return self.walk.drawn > 2 * self.walk.count + 10_000


@dataclass
class Run:
    started: float = 0.0  # monotonic
    samples: list[Sample] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    seconds: float = 0.0
    worker_max: float = 0.0
    worker_max_at: float = 0.0
    tree_max: float = 0.0
    worker_hwm: float = 0.0  # the kernel's peak RSS of the worker over its life (VmHWM)
    metrics: dict[str, Any] = field(default_factory=dict)


def header(production: bool) -> str:
    redis_cols = f" {'redis_mb':>8} {'keys':>9} {'no_ttl':>6} {'idx':>7} {'idx_old':>7}"
    return (
        f"{'t':>6} {'wrk_mb':>7} {'all_mb':>7} {'fds':>4} {'thr':>4} {'cache':>7} "
        f"{'cache_mb':>8} {'logq':>6} {'tasks':>5} {'fills':>5}"
        + (redis_cols if production else "")
        + f" {'keys%':>6} {'rps':>6} {'p50_ms':>7} {'p99_ms':>7}  statuses"
    )


def line(s: Sample, t: Tally, seconds: float, key_count: int) -> str:
    lat = sorted(t.latencies)
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(t.statuses.items()))
    if t.errors:
        statuses += " " + " ".join(f"{k}:{v}" for k, v in sorted(t.errors.items()))
    text = (
        f"{s.at:6.0f} {s.worker_mib:7.1f} {s.tree_mib:7.1f} {s.fds:4d} {s.threads:4d} "
        f"{s.cache_entries:7d} {s.cache_bytes / MIB:8.1f} {s.log_queue:6d} {s.tasks:5d} "
        f"{s.inflight:5d}"
    )
    if s.redis is not None:
        r = s.redis
        text += (
            f" {r.used_mib:8.1f} {r.keys:9d} {r.no_ttl:6d} {r.index_members:7d} "
            f"{r.index_expired:7d}"
        )
    share = 100 * s.keys_touched / key_count
    return text + (f" {share:6.1f} {len(lat) / seconds:6.0f} {p50:7.1f} {p99:7.1f}  {statuses}")


def run_traffic(
    args: argparse.Namespace, stack: Stack, gw: gateway.Gateway, keys: KeySet
) -> tuple[Run, Mix]:
    walk = KeyWalk(keys.count)
    mix = Mix(keys, walk, args.paths, args.body_min, args.body_max)
    tally = Tally()
    client = stack.redis_client()
    started = time.monotonic()
    out = Run(started)
    schedule = Schedule(started, args.minutes, walk, args.touch_all_keys)
    watch = RssWatch(gw.proc.pid)
    watch.start(started)
    total = "until every key is used, then " if args.touch_all_keys else ""
    say(f"traffic: {total}{args.minutes:g} min over {args.paths:,} cached paths and "
        f"{keys.count:,} keys, concurrency {args.concurrency}")  # fmt: skip
    print(header(client is not None), flush=True)

    def sample() -> Sample:
        gw.proc.check_alive()
        at = time.monotonic() - started
        return take_sample(gw.proc.pid, gw.url, client, REDIS_PREFIX, at, walk.touched_count)

    def absorb(t: Tally) -> None:
        out.statuses.update(t.statuses)
        out.errors.update(t.errors)
        out.requests += len(t.latencies)

    async def loop() -> None:
        load = asyncio.create_task(traffic(gw.url, mix, args.concurrency, schedule.done, tally))
        last = started
        next_at = started + args.interval
        try:
            while not load.done():
                end = schedule.end()
                wake = next_at if end is None else min(next_at, end)
                await asyncio.wait({load}, timeout=max(0.0, wake - time.monotonic()))
                now = time.monotonic()
                if now < next_at and not load.done():
                    continue  # woke at the end: the traffic stops by itself right after
                if load.done() and out.samples and now - started - out.samples[-1].at < 2:
                    break  # the last sample was taken as the traffic ended
                s = await asyncio.to_thread(sample)
                out.samples.append(s)
                t = tally.take()
                absorb(t)
                print(line(s, t, max(now - last, 1e-6), keys.count), flush=True)
                last = now
                next_at = max(next_at + args.interval, time.monotonic() + 1)
            await load
        finally:
            if not load.done():
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)

    try:
        asyncio.run(loop())
    finally:
        watch.stop()
        out.seconds = time.monotonic() - started
        absorb(tally.take())
        out.worker_max, out.worker_max_at, out.tree_max = (
            watch.worker_max, watch.worker_max_at, watch.tree_max
        )  # fmt: skip
        out.worker_hwm = sum(proc_status(p, "VmHWM") for p in children(gw.proc.pid)) / 1024
        if client is not None:
            client.close()
    out.metrics = http.get(
        gw.url + "/metrics", headers={"X-Admin-Key": gateway.ADMIN_KEY}, timeout=30
    ).json()
    return out, mix


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    met: bool | None  # None: a figure, not judged
    detail: str


def growth(samples: list[Sample], tolerance: float) -> Check:
    """What grew after the warm-up (the first 20 % of the traffic time), beyond `tolerance`."""
    name = "no growth after warm-up"
    if not samples:
        return Check(name, False, "no samples")
    warm_from = samples[-1].at * 0.2
    warm = [s for s in samples if s.at >= warm_from]
    if len(warm) < 2:
        return Check(name, False, "too few samples after the warm-up (run longer, or sample "
                                  "more often with --interval)")  # fmt: skip
    first, last = warm[0], warm[-1]
    problems = []
    for label, attr, unit in (
        ("worker RSS", "worker_mib", " MiB"),
        ("all RSS", "tree_mib", " MiB"),
        ("open files", "fds", ""),
    ):
        a, b = getattr(first, attr), getattr(last, attr)
        if b > a * (1 + tolerance) + 1:
            problems.append(f"{label} grew from {a:.1f} to {b:.1f}{unit}")
    if last.tasks > max(50, first.tasks * (1 + tolerance)):
        problems.append(f"asyncio tasks grew from {first.tasks} to {last.tasks}")
    # The queue's length at any instant is about one flush's worth of rows; a backlog is what
    # would show the writer falling behind.
    queue_top = max(s.log_queue for s in warm)
    if queue_top > LOG_BACKLOG:
        problems.append(f"log queue reached {queue_top} (a backlog: over {LOG_BACKLOG})")
    # The end points can hide a steady climb inside the tolerance: the trend says whether it
    # levelled off.
    minutes = [s.at / 60 for s in warm]
    slope = statistics.linear_regression(minutes, [s.worker_mib for s in warm]).slope
    figures = (
        f"worker RSS trend {slope:+.1f} MiB/min; "
        f"t={first.at:.0f}s -> t={last.at:.0f}s: worker RSS {first.worker_mib:.1f} -> "
        f"{last.worker_mib:.1f} MiB, all {first.tree_mib:.1f} -> {last.tree_mib:.1f} MiB, "
        f"fds {first.fds} -> {last.fds}, tasks {first.tasks} -> {last.tasks} (tolerance "
        f"{tolerance:.0%}); log queue at most {queue_top}"
    )
    return Check(name, not problems, "; ".join(problems) + ("; " if problems else "") + figures)


def memory_check(run: Run, cap: int, headroom_mb: float) -> Check:
    limit = cap + headroom_mb * MB
    worker = max([run.worker_max, *(s.worker_mib for s in run.samples)]) * MIB
    tree = max([run.tree_max, *(s.tree_mib for s in run.samples)]) * MIB
    return Check(
        f"worker RSS < cap + {headroom_mb:g} MB",
        worker < limit,
        f"max {worker / MIB:.1f} MiB (t={run.worker_max_at:.0f}s) against "
        f"{limit / MIB:.1f} MiB ({cap / MIB:g} MiB + {headroom_mb:g} MB): headroom "
        f"{(limit - worker) / MIB:.1f} MiB; with the server's supervisor process: max "
        f"{tree / MIB:.1f} MiB ({'under' if tree < limit else 'over'} the limit); the worker's "
        f"peak over its life, the key load included (VmHWM): {run.worker_hwm:.1f} MiB",
    )


def cache_check(run: Run, mix: Mix, cap: int) -> Check:
    top = max((s.cache_bytes for s in run.samples), default=0)
    full = [s for s in run.samples if s.cache_entries]
    per_entry = statistics.median(s.cache_bytes / s.cache_entries for s in full) if full else 0
    working_set = per_entry * mix.cached_seen_count
    reached = top >= 0.9 * cap
    evicting = reached and working_set > cap
    return Check(
        "cache bytes never above the cap, cap reached",
        top <= cap and evicting,
        f"max {top:,} B = {top / MIB:.1f} MiB of {cap / MIB:g} MiB ({top / cap:.1%}); "
        f"{mix.cached_seen_count:,} distinct cached paths requested x ~{per_entry:,.0f} B per "
        f"entry = ~{working_set / MIB:,.0f} MiB ({working_set / cap:.1f}x the cap"
        + ("" if evicting else ": eviction NOT exercised, use more --paths or --body-bytes")
        + f"); entries max {max((s.cache_entries for s in run.samples), default=0):,}",
    )


def keys_check(mix: Mix, run: Run, scan: TtlScan | None) -> Check:
    walk = mix.walk
    when = ""
    if walk.first_all_touched is not None:
        when = f", all of them {walk.first_all_touched - run.started:.0f} s into the traffic"
    counters = ""
    if scan is not None:
        # Admission writes a principal's daily counter only when it admits a request: the
        # limiter's own record of how many keys it saw today.
        daily = scan.kinds.get("quota counter (daily)", 0)
        counters = f"; daily quota counters in Redis at the end: {daily:,}"
    return Check(
        "every API key reached the limiter",
        walk.all_touched and mix.unknown_keys == 0,
        f"{walk.touched_count:,} of {walk.count:,} keys answered{when}; "
        f"{mix.unknown_keys:,} answers 401 for a loaded key{counters}",
    )


def ttl_check(run: Run, scan: TtlScan | None) -> Check:
    per_sample = max((s.redis.no_ttl for s in run.samples if s.redis), default=0)
    if scan is None:
        return Check("every Redis key has a TTL", False, "final scan did not run")
    kinds = ", ".join(f"{k} {n:,}" for k, n in scan.kinds.most_common())
    shown = ", ".join(scan.without_ttl[:5]) + (" ..." if len(scan.without_ttl) > 5 else "")
    return Check(
        "every Redis key has a TTL",
        per_sample == 0 and not scan.without_ttl,
        f"final SCAN of {scan.keys:,} keys in {scan.seconds:.0f} s: {len(scan.without_ttl)} "
        f"without a TTL{' (' + shown + ')' if shown else ''} besides the bookkeeping keys "
        f"({', '.join(BOOKKEEPING)}); per-sample maximum {per_sample}; keys: {kinds}",
    )


def bookkeeping_check(run: Run, scan: TtlScan | None, final_members: int) -> Check:
    redis_samples = [s.redis for s in run.samples if s.redis]
    if not redis_samples or scan is None:
        return Check("cache bookkeeping bounded", False, "no Redis samples")
    worst = max(redis_samples, key=lambda r: r.index_expired)
    bound = max(1000, int(0.05 * max(r.index_members for r in redis_samples)))
    skew = max(abs(r.sizes - r.index_members) for r in redis_samples)
    orphans = max(0, final_members - scan.entries)
    ok = worst.index_expired <= bound and orphans <= bound and skew <= bound
    return Check(
        "cache bookkeeping bounded",
        ok,
        f"index of entries: at most {max(r.index_members for r in redis_samples):,} members, "
        f"at most {worst.index_expired:,} of them expired and not yet trimmed (bound {bound:,}); "
        f"sizes hash vs index differ by at most {skew:,}; at the end {final_members:,} members "
        f"for {scan.entries:,} entries",
    )


def print_summary(
    args: argparse.Namespace, checks: list[Check], phases: dict[str, float], wall: float
) -> None:
    print()
    say(f"summary ({args.mode} mode, {args.keys:,} API keys, {args.paths:,} cached paths, "
        f"cache cap {args.cache_mib:g} MiB)")  # fmt: skip
    for c in checks:
        mark = "info   " if c.met is None else "met    " if c.met else "MISSED "
        print(f"  {mark} {c.name}: {c.detail}", flush=True)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
    print(f"  time    {wall / 60:.1f} min in all ({times})", flush=True)


def info_checks(reload: Reload, run: Run, keys: int) -> list[Check]:
    added = reload.after.worker_mib - reload.before.worker_mib
    out = [
        Check(
            f"snapshot load of {keys:,} keys",
            None,
            f"database insert {reload.insert_seconds:.1f} s; gateway reload {reload.seconds:.1f} s "
            f"(version bump to the last key answering); worker RSS {reload.before.worker_mib:.0f}"
            f" -> {reload.after.worker_mib:.0f} MiB (+{added:.0f} MiB, ~{added * MIB / keys:,.0f}"
            f" B per key), peak {reload.worker_peak_mib:.0f} MiB during the reload; longest "
            f"request stall meanwhile {reload.stall_seconds:.2f} s",
        )
    ]
    m = run.metrics
    cache = m.get("cache", {})
    events = m.get("events", {})
    redis_mib = max((s.redis.used_mib for s in run.samples if s.redis), default=None)
    statuses = " ".join(f"{k}:{v:,}" for k, v in sorted(run.statuses.items()))
    errors = " ".join(f"{k}:{v:,}" for k, v in sorted(run.errors.items()))
    out.append(
        Check(
            "traffic",
            None,
            f"{run.requests:,} requests in {run.seconds / 60:.1f} min "
            f"({run.requests / max(run.seconds, 1e-6):,.0f}/s): {statuses}"
            + (f"; client errors {errors}" if errors else "")
            + f"; cache hit rate {cache.get('hit_rate')}; log rows dropped "
            f"{events.get('log_queue_dropped', 0):,}; abuse blocks {events.get('abuse_blocks', 0)}"
            + (f"; Redis used_memory max {redis_mib:.0f} MiB" if redis_mib is not None else ""),
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    wall0 = time.monotonic()
    phases: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="heliox-soak-"))
    stack = Stack(args.mode, workdir, Processes(workdir), args.pg_admin_dsn)
    cap = int(args.cache_mib * MIB)
    keys = new_keyset(args.keys)
    checks: list[Check] = []
    failed: BaseException | None = None
    try:
        what = "PostgreSQL database, redis-server" if args.mode == PRODUCTION else "SQLite"
        say(f"{args.mode} mode: starting the upstream, {what} and the gateway in {workdir}")
        t = time.monotonic()
        gw = stack.start(cap)
        phases["start"] = time.monotonic() - t
        t = time.monotonic()
        reload = load_and_reload(stack, gw, keys, args.reload_timeout)
        phases["keys"] = time.monotonic() - t
        run, mix = run_traffic(args, stack, gw, keys)
        phases["traffic"] = run.seconds
        checks.append(growth(run.samples, args.tolerance))
        if args.mode == EMBEDDED:
            checks.append(keys_check(mix, run, None))
            checks.append(memory_check(run, cap, args.headroom_mb))
            checks.append(cache_check(run, mix, cap))
        else:
            say("traffic done; SCAN of every Redis key, PTTL of each ...")
            t = time.monotonic()
            client = stack.redis_client()
            try:
                scan = scan_ttls(client, REDIS_PREFIX, say)
                final_members = int(client.zcard(REDIS_PREFIX + "cache:i:all"))
            finally:
                client.close()
            phases["scan"] = time.monotonic() - t
            checks.append(keys_check(mix, run, scan))
            checks.append(ttl_check(run, scan))
            checks.append(bookkeeping_check(run, scan, final_members))
            rss = max([run.worker_max, *(s.worker_mib for s in run.samples)])
            checks.append(Check("worker RSS", None, f"max {rss:.1f} MiB (the cache is in Redis)"))
        checks += info_checks(reload, run, args.keys)
    except KeyboardInterrupt as exc:
        failed = exc
        say("interrupted")
    except Prerequisite as exc:
        say(str(exc))
        return 2  # after `finally` has stopped what was started
    except Exception as exc:
        failed = exc
        say(f"failed: {type(exc).__name__}: {exc}")
        if stack.gw is not None:
            say(f"gateway log ({stack.gw.proc.log_path}), last lines:\n{stack.gw.proc.tail(20)}")
    finally:
        t = time.monotonic()
        stack.close()
        phases["stop"] = time.monotonic() - t
    wall = time.monotonic() - wall0
    if failed is not None:
        say(f"logs kept in {workdir}")
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    print_summary(args, checks, phases, wall)
    missed = [c for c in checks if c.met is False]
    if missed:
        say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    say("all checks met" if not missed else f"{len(missed)} check(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
