"""Soak: mixed traffic for a fixed time, watching for anything that grows without bound.

Starts its own example upstream, its own redis-server (own port, so its memory and key count
are the gateway's alone), a fresh PostgreSQL database and a production-mode gateway; loads
--keys API keys straight into the database; then sends mixed traffic over --paths distinct paths
and all those keys for --minutes, and every --interval seconds prints:

  rss_mb   fds   threads      the gateway's serving processes (/proc)
  cache    logq               cached entries and log queue length (GET /metrics gauges)
  redis_mb redis_keys no_ttl  Redis used_memory, DBSIZE, keys without a TTL (SCAN)
  rps  p50  p99  statuses     the traffic in that interval

At the end it compares the last sample with the one taken once the warm-up (the first 20 % of
the run) is over and exits 1 if resident memory, open files or the log queue grew by more than
--tolerance, or any Redis key outside the cache store's three bookkeeping keys has no TTL.
Everything it started is stopped when it ends, Ctrl-C included.

    .venv/bin/python bench/soak.py                       # 10 minutes, 10^5 keys and paths
    .venv/bin/python bench/soak.py --minutes 1 --keys 20000 --paths 20000

Not exposed by the gateway, so not printed: its asyncio task count and in-flight (coalescing)
map size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import redis
from yarl import URL

PG_ADMIN = os.environ.get("HELIOX_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "soak-admin-key-0123456789abcdef"
PERMANENT_REDIS_SUFFIXES = (b":i:all", b":sz", b":bytes")  # cache store bookkeeping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise SystemExit(f"soak: {what} did not come up within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


# --- the processes ----------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    database: str = ""
    redis_port: int = 0
    upstream_port: int = 0
    gateway_port: int = 0
    gateway: subprocess.Popen[bytes] | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def start(self, keys: int) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("soak: redis-server is not installed")
        self.redis_port = free_port()
        self.spawn(
            "redis",
            [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            dict(os.environ),
        )  # fmt: skip
        wait_for(lambda: redis.Redis(port=self.redis_port).ping(), "redis-server")

        self.upstream_port = free_port()
        py = [sys.executable, "-m", "heliox"]
        self.spawn("upstream", [*py, "upstream", "--port", str(self.upstream_port)],
                   dict(os.environ))  # fmt: skip
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.upstream_port}/health"), "upstream")

        self.database = "heliox_soak_" + uuid.uuid4().hex[:8]
        asyncio.run(_pg(PG_ADMIN, f'CREATE DATABASE "{self.database}"'))
        dsn = PG_ADMIN.rpartition("/")[0] + "/" + self.database
        env = {
            **os.environ,
            "DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "ADMIN_API_KEY": ADMIN_KEY,
            "SECRET_KEY": secrets.token_hex(16),
            "AUTO_SEED": "true",
            "LOG_LEVEL": "WARNING",
            "CONFIG_POLL_INTERVAL": "1",
            "EXAMPLE_UPSTREAM_URL": f"http://127.0.0.1:{self.upstream_port}",
        }
        self.gateway_port = free_port()
        self.gateway = self.spawn("gateway", [*py, "serve", "--port", str(self.gateway_port)], env)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.gateway_port}/health"), "gateway", 90)
        plaintexts = asyncio.run(_load_keys(dsn, keys))
        return plaintexts

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.database:
            asyncio.run(_pg(PG_ADMIN, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))


async def _pg(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _load_keys(dsn: str, count: int) -> list[str]:
    """Insert `count` keys in one statement (PostgreSQL hashes them), then bump the config
    version so the gateway reloads its snapshot."""
    secret = secrets.token_hex(6)
    conn = await asyncpg.connect(dsn)
    try:
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name, description, is_active, created_at, updated_at)"
            " VALUES ('soak', '', true, now(), now()) RETURNING id"
        )
        await conn.execute(
            """
            INSERT INTO api_keys (tenant_id, name, key_hash, key_prefix, rate_limit_rps,
                rate_limit_burst, rate_limit_algorithm, rate_limit_window_seconds, daily_quota,
                monthly_quota, is_active, created_at, updated_at)
            SELECT $1, 'soak-' || g,
                encode(sha256(convert_to('hx_soak_' || $2 || '_' || g, 'UTF8')), 'hex'),
                'hx_soak_' || g, CASE WHEN g % 50 = 0 THEN 1 ELSE 1000 END,
                CASE WHEN g % 50 = 0 THEN 2 ELSE 2000 END, 'token_bucket', 1, 1000000000,
                NULL, true, now(), now()
            FROM generate_series(1, $3) AS g
            """,
            tenant,
            secret,
            count,
        )
        await conn.execute("UPDATE config_version SET version = version + 1")
    finally:
        await conn.close()
    return [f"hx_soak_{secret}_{i}" for i in range(1, count + 1)]


# --- the traffic --------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def take(self) -> Tally:
        out = Tally(self.statuses, self.latencies, self.errors)
        self.statuses, self.latencies, self.errors = Counter(), [], Counter()
        return out


def next_request(keys: list[str], paths: int, rng: random.Random) -> tuple[str, str, bytes, str]:
    """(method, path, body, key) for one request of the mix. Keys whose number is a multiple
    of 50 are limited to 1 request/s; one of them is used hard (a noisy client: 429s)."""
    key = keys[rng.randrange(len(keys))]
    noisy = keys[min(49, len(keys) - 1)]
    p = rng.randrange(paths)
    roll = rng.random()
    if roll < 0.45:
        return "GET", f"/g/demo/respond/p{p}", b"", key  # cached, 10^5 distinct entries
    if roll < 0.60:
        return "GET", f"/g/products/items/{p % 12}", b"", key  # hot entries, some 404s
    if roll < 0.70:
        return "GET", f"/g/demo/items/missing-{p}", b"", key  # negative cache / Bloom
    if roll < 0.82:
        return "GET", f"/g/webhooks/echo/p{p}?q={rng.randrange(10**6)}", b"", key  # pass-through
    if roll < 0.90:
        return "POST", f"/g/webhooks/echo/p{p}", b"x" * rng.randrange(2048), key
    if roll < 0.94:
        return "GET", f"/g/demo/respond/p{p}", b"", f"hx_wrong_{p}"  # 401
    if roll < 0.97:
        return "GET", f"/g/demo/items/{p % 12}", b"", noisy  # mostly 429
    return "GET", f"/g/demo/%2e%2e/p{p}", b"", key  # 400


async def traffic(
    url: str, keys: list[str], paths: int, concurrency: int, stop_at: float, tally: Tally
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                method, path, body, key = next_request(keys, paths, rng)
                t0 = time.perf_counter()
                try:
                    async with session.request(
                        method, URL(url + path, encoded=True), data=body or None,
                        headers={"X-API-Key": key},
                    ) as r:  # fmt: skip
                        await r.read()
                        tally.statuses[r.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.errors[type(exc).__name__] += 1
                tally.latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


# --- the samples --------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    rss_mb: float
    fds: int
    threads: int
    cache_entries: int
    log_queue: int
    tasks: int  # asyncio tasks in the worker that answered /metrics
    inflight: int  # cache fills in flight there
    redis_mb: float
    redis_keys: int
    no_ttl: int


def serving_pids(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def proc_status(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def sample(stack: Stack, started: float) -> Sample:
    import json
    import urllib.request

    assert stack.gateway is not None
    pids = serving_pids(stack.gateway.pid)
    rss = sum(proc_status(p, "VmRSS") for p in pids) / 1024
    fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)
    threads = sum(proc_status(p, "Threads") for p in pids)
    metrics_url = f"http://127.0.0.1:{stack.gateway_port}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        metrics = json.load(r)
    gauges = metrics.get("gauges", {})
    client = redis.Redis(port=stack.redis_port, socket_timeout=30)
    try:
        used = int(client.info("memory")["used_memory"]) / 2**20
        count = int(client.dbsize())
        no_ttl = keys_without_ttl(client)
    finally:
        client.close()
    return Sample(
        time.monotonic() - started, rss, fds, threads, int(gauges.get("cache_entries", 0)),
        int(metrics.get("log_queue_length", 0)),
        int(metrics.get("process", {}).get("asyncio_tasks", -1)),
        int(metrics.get("process", {}).get("inflight_fills", -1)), used, count, no_ttl,
    )  # fmt: skip


def keys_without_ttl(client: redis.Redis) -> int:
    """Keys with no expiry (PTTL -1), checked in pipelined batches."""
    found = 0
    batch: list[bytes] = []

    def check() -> int:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pttl(key)
        return sum(1 for ttl in pipe.execute() if ttl == -1)

    for key in client.scan_iter(count=5000):
        if not key.endswith(PERMANENT_REDIS_SUFFIXES):
            batch.append(key)
        if len(batch) >= 5000:
            found += check()
            batch = []
    if batch:
        found += check()
    return found


HEADER = (
    f"{'t':>6} {'rss_mb':>7} {'fds':>5} {'thr':>4} {'cache':>7} {'logq':>6} {'tasks':>5} "
    f"{'fills':>5} {'redis_mb':>8} "
    f"{'redis_keys':>10} {'no_ttl':>6} {'rps':>6} {'p50_ms':>7} {'p99_ms':>7}  statuses"
)


def line(s: Sample, t: Tally, seconds: float) -> str:
    lat = sorted(t.latencies)
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(t.statuses.items()))
    if t.errors:
        statuses += " " + " ".join(f"{k}:{v}" for k, v in sorted(t.errors.items()))
    return (
        f"{s.at:6.0f} {s.rss_mb:7.1f} {s.fds:5d} {s.threads:4d} {s.cache_entries:7d} "
        f"{s.log_queue:6d} {s.tasks:5d} {s.inflight:5d} {s.redis_mb:8.1f} "
        f"{s.redis_keys:10d} {s.no_ttl:6d} "
        f"{len(lat) / seconds:6.0f} {p50:7.1f} {p99:7.1f}  {statuses}"
    )


def verdict(samples: list[Sample], minutes: float, tolerance: float) -> list[str]:
    """What grew after the warm-up, beyond `tolerance` (a fraction)."""
    warm = [s for s in samples if s.at >= minutes * 60 * 0.2]
    if len(warm) < 2:
        return ["too few samples after the warm-up to judge (run longer or sample more often)"]
    first, last = warm[0], warm[-1]
    problems = []
    for name in ("rss_mb", "fds"):
        a, b = getattr(first, name), getattr(last, name)
        if b > a * (1 + tolerance) + 1:
            problems.append(f"{name} grew from {a:.1f} to {b:.1f} after the warm-up")
    if last.tasks > max(50, first.tasks * (1 + tolerance)):
        problems.append(f"asyncio tasks grew from {first.tasks} to {last.tasks}")
    if last.log_queue > max(100, first.log_queue * (1 + tolerance)):
        problems.append(f"log queue grew to {last.log_queue}")
    if any(s.no_ttl for s in samples):
        problems.append(f"Redis keys without a TTL: up to {max(s.no_ttl for s in samples)}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct API keys")
    ap.add_argument("--paths", type=int, default=100_000, help="distinct paths")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tolerance", type=float, default=0.15, help="allowed growth after warm-up")
    args = ap.parse_args()
    if args.minutes <= 0 or args.interval <= 0 or args.keys < 1 or args.paths < 1:
        ap.error("--minutes, --interval, --keys and --paths must be positive")

    stack = Stack(Path(tempfile.mkdtemp(prefix="heliox-soak-")))
    samples: list[Sample] = []
    try:
        print(f"soak: starting upstream, redis-server, PostgreSQL database, gateway in "
              f"{stack.workdir}", flush=True)  # fmt: skip
        keys = stack.start(args.keys)
        gateway_url = f"http://127.0.0.1:{stack.gateway_port}"
        probe = f"{gateway_url}/g/demo/items"

        def key_works() -> bool:
            import urllib.request

            req = urllib.request.Request(probe, headers={"X-API-Key": keys[-1]})
            with urllib.request.urlopen(req, timeout=5) as r:
                return bool(r.status == 200)

        wait_for(key_works, "the loaded keys", 60)
        print(f"soak: {args.keys} keys loaded; {args.minutes:g} min of traffic over "
              f"{args.paths} paths, concurrency {args.concurrency}", flush=True)  # fmt: skip
        print(HEADER, flush=True)
        started = time.monotonic()
        stop_at = started + args.minutes * 60
        tally = Tally()

        async def run() -> None:
            load = asyncio.create_task(
                traffic(gateway_url, keys, args.paths, args.concurrency, stop_at, tally)
            )
            last = time.monotonic()
            while not load.done():
                await asyncio.wait({load}, timeout=max(0.0, min(args.interval, stop_at - last)))
                now = time.monotonic()
                s = await asyncio.to_thread(sample, stack, started)
                samples.append(s)
                print(line(s, tally.take(), max(now - last, 1e-6)), flush=True)
                last = now
            await load

        asyncio.run(run())
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
    finally:
        stack.stop()
    problems = verdict(samples, args.minutes, args.tolerance)
    for p in problems:
        print("soak: GREW:", p)
    print("soak: flat" if not problems else "soak: not flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
