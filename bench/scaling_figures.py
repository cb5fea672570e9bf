"""The measurements behind docs/scaling.md: Redis commands and CPU per request, request-log rows
on PostgreSQL (bytes, COPY rate, backend CPU), connections per instance; then the fleet table.

    .venv/bin/python bench/scaling_figures.py                 # about 6 minutes
    .venv/bin/python bench/scaling_figures.py --no-cluster    # skip the Redis Cluster part

Needs PostgreSQL (a throwaway database is created and dropped), redis-server and redis-cli on the
PATH (a private Redis is started on a free port, so its command counts and CPU are this run's
alone), and wrk for the CPU runs. Prints every figure it produces; nothing is asserted.

Redis: a gateway (`heliox serve`, one worker, production mode) on the private Redis; each case
(cache HIT, MISS then stored, pass-through, 429, purge) is sent N times one at a time under
`MONITOR`, which tells the commands the gateway sends (round trips' commands) from those its Lua
scripts run inside Redis; the idle rate (background timers) is measured and subtracted. Then wrk
drives HIT, MISS (a new URL per request), pass-through and 429 at 50 connections with MONITOR off,
and the Redis server's CPU (INFO cpu, user + sys) and the gateway's CPU (/proc) are divided by the
requests; the most Redis and PostgreSQL connections the gateway held meanwhile are sampled.

PostgreSQL: bytes on disk per request-log row (the partitions holding rows, indexes and TOAST
included) from the rows that gateway wrote, and from batches of 2,000 rows written through the
gateway's own LogWriter (COPY + roll-up upserts) into fresh throwaway databases, by one writer and
by four at once; the backends' CPU is read from /proc/<pid>/stat (run on the database's host, as
root or its user), else only wall time is shown.

Redis Cluster (skipped with --no-cluster): a local cluster of three masters and three replicas
(tests/cluster_support.py), a gateway with REDIS_CLUSTER=true, with the defaults and with
CACHE_L1_MAX_BYTES=0: commands per master (commandstats) and CPU per request on every node.

The fleet table at the end is bench/benchkit/fleet.py's arithmetic on this run's costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchkit import fleet, services, wrk  # noqa: E402
from benchkit import gateway as gw_kit  # noqa: E402
from benchkit import http as bhttp  # noqa: E402
from benchkit.cpu import process_ticks  # noqa: E402
from benchkit.procs import Processes, children, free_port, wait_until  # noqa: E402

DEFAULT_PG = os.environ.get(
    "HELIOX_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TICK = os.sysconf("SC_CLK_TCK")
_MONITOR_LINE = re.compile(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


def say(message: str) -> None:
    print(f"scaling: {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


# --- Redis -------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port: its counters and CPU are this run's only."""

    def __init__(self, procs: Processes) -> None:
        import redis

        self.port = free_port()
        folder = procs.workdir / f"redis-{self.port}"
        folder.mkdir()
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ]
        self.proc = procs.start("redis", cmd)
        self.client = redis.Redis(port=self.port, socket_timeout=10)
        wait_until(lambda: bool(self.client.ping()), "private redis-server", timeout=30)
        self.workdir = procs.workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def counters(self) -> tuple[Counter[str], float]:
        stats = self.client.info("commandstats")
        calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
        cpu = self.client.info("cpu")
        return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def monitor(self, action: Callable[[], None]) -> tuple[Counter[str], Counter[str], float]:
        """(commands the clients sent, commands Lua scripts ran, seconds) while `action` runs."""
        log = self.workdir / f"monitor-{uuid.uuid4().hex[:6]}.txt"
        with log.open("w") as sink:
            mon = subprocess.Popen(
                ["redis-cli", "-p", str(self.port), "monitor"], stdout=sink, stderr=sink
            )
            try:
                wait_until(lambda: log.stat().st_size > 0, "MONITOR to start", timeout=10)
                self.client.execute_command("ECHO", "start")  # type: ignore[no-untyped-call]
                started = time.perf_counter()
                action()
                time.sleep(0.5)  # work a request set off after its answer (fills, log flushes)
                elapsed = time.perf_counter() - started
                self.client.execute_command("ECHO", "stop")  # type: ignore[no-untyped-call]
                time.sleep(0.2)
            finally:
                mon.terminate()
                mon.wait(10)
        sent: Counter[str] = Counter()
        scripted: Counter[str] = Counter()
        on = False
        for line in log.read_text(errors="replace").splitlines():
            m = _MONITOR_LINE.match(line)
            if not m:
                continue
            source, command = m.group(1), m.group(2).lower()
            if command == "echo":
                on = not on
                continue
            if on:
                (scripted if source == "lua" else sent)[command] += 1
        return sent, scripted, elapsed


def per_request(
    counts: Counter[str], idle: Counter[str], idle_s: float, elapsed: float, n: int
) -> dict[str, float]:
    """Commands per request with the background rate (idle counts per second) taken out."""
    result = {}
    for command in set(counts) | set(idle):
        value = (counts[command] - idle[command] / idle_s * elapsed) / n
        if abs(value) >= 0.005:
            result[command] = value
    return dict(sorted(result.items(), key=lambda kv: -kv[1]))


def show(label: str, sent: dict[str, float], scripted: dict[str, float]) -> None:
    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in d.items()) or "none"

    out(f"  {label:34} sent {sum(sent.values()):5.2f} ({fmt(sent)})")
    out(f"  {'':34} in scripts {sum(scripted.values()):5.2f} ({fmt(scripted)})")


def api(gw: gw_kit.Gateway, path: str, key: str) -> bhttp.Reply:
    return bhttp.get(gw.url + path, headers={"X-API-Key": key})


def limited_key(gw: gw_kit.Gateway) -> str:
    tenant = gw_kit.admin(gw, "POST", "/admin/tenants", {"name": "Limited"})
    key = gw_kit.admin(
        gw,
        "POST",
        "/admin/keys",
        {
            "tenant_id": tenant["id"],
            "name": "limited",
            "rate_limit_rps": 1,
            "rate_limit_burst": 1,
            "daily_quota": None,
            "monthly_quota": None,
        },
    )
    secret = str(key["key"])
    path = f"/g/{gw_kit.CACHED_ROUTE}{gw_kit.ITEMS}"
    wait_until(
        lambda: api(gw, path, secret).status == 429,
        "the limited key to answer 429",
        timeout=30,
        interval=0.2,
    )
    return secret


def count_commands(r: PrivateRedis, gw: gw_kit.Gateway, n: int) -> str:
    """Prints the counts; returns the rate-limited key it made."""
    key = gw.api_key
    hit = f"/g/{gw_kit.CACHED_ROUTE}{gw_kit.ITEMS}"
    passing = f"/g/{gw_kit.PASS_ROUTE}{gw_kit.ITEMS}"
    tag = uuid.uuid4().hex[:6]
    for _ in range(50):
        api(gw, hit, key)
    idle_sent, idle_scripted, idle_s = r.monitor(lambda: time.sleep(5))
    out(
        f"Redis commands per request (n={n} each, one at a time, MONITOR; background rate "
        f"subtracted: {sum(idle_sent.values()) / idle_s:.2f} sent/s, "
        f"{sum(idle_scripted.values()) / idle_s:.2f} in scripts/s while idle)"
    )
    limited = limited_key(gw)

    def case(label: str, action: Callable[[int], None], count: int = n) -> None:
        def run() -> None:
            for i in range(count):
                action(i)

        sent, scripted, elapsed = r.monitor(run)
        s = per_request(sent, idle_sent, idle_s, elapsed, count)
        sc = per_request(scripted, idle_scripted, idle_s, elapsed, count)
        show(label, s, sc)

    def expect(status: int, reply: bhttp.Reply, what: str) -> None:
        if reply.status != status:
            raise SystemExit(f"{what}: {reply.status}, expected {status}: {reply.body[:200]!r}")

    case("cache HIT", lambda i: expect(200, api(gw, hit, key), "HIT"))
    case(
        "cache MISS (entry stored)",
        lambda i: expect(200, api(gw, f"{hit}?s={tag}-{i}", key), "MISS"),
    )
    case("pass-through (no cache policy)", lambda i: expect(200, api(gw, passing, key), "pass"))
    refused: Counter[int] = Counter()
    # One token a second: the odd request finds a token again and is answered 200.
    case("429 (rate limit refused)", lambda i: refused.update([api(gw, hit, limited).status]))
    out(f"  (statuses of that case: {dict(refused)})")

    def purge(i: int) -> None:
        reply = bhttp.request(
            "POST",
            gw.url + "/admin/cache/purge",
            headers={"X-Admin-Key": gw_kit.ADMIN_KEY},
            payload={"url": f"{hit}?s={tag}-{i}"},
        )
        expect(200, reply, "purge")

    case("purge of one URL (admin API)", purge, min(n, 100))

    def purge_route(i: int) -> None:
        reply = bhttp.request(
            "POST",
            gw.url + "/admin/cache/purge",
            headers={"X-Admin-Key": gw_kit.ADMIN_KEY},
            payload={"route": gw_kit.CACHED_ROUTE},
        )
        expect(200, reply, "purge route")
        purged.append(int(reply.json()["purged"]))

    purged: list[int] = []
    sent, scripted, elapsed = r.monitor(lambda: purge_route(0))
    s = per_request(sent, idle_sent, idle_s, elapsed, max(1, purged[0]))
    sc = per_request(scripted, idle_scripted, idle_s, elapsed, max(1, purged[0]))
    show(f"purge of a route, per entry ({purged[0]})", s, sc)
    return limited


_UNIQUE_URLS = """
counter = 0
tag = "%s"
request = function()
  counter = counter + 1
  return wrk.format(nil, "%s?u=" .. tag .. "-" .. counter)
end
"""


def cpu_runs(
    r: PrivateRedis,
    gw: gw_kit.Gateway,
    seconds: float,
    limited: str,
    db_name: str,
    pg_dsn: str,
) -> dict[str, tuple[float, float, float]]:
    """case -> (req/s, Redis CPU s/request, gateway CPU s/request) under wrk, MONITOR off; the
    most Redis and PostgreSQL connections the gateway held meanwhile are printed too."""
    hit = f"/g/{gw_kit.CACHED_ROUTE}{gw_kit.ITEMS}"
    passing = f"/g/{gw_kit.PASS_ROUTE}{gw_kit.ITEMS}"
    script = r.workdir / "unique.lua"
    script.write_text(_UNIQUE_URLS % (uuid.uuid4().hex[:8], hit))
    cases = [
        ("cache HIT", hit, gw.api_key, None),
        ("cache MISS", hit, gw.api_key, script),
        ("pass-through", passing, gw.api_key, None),
        ("429", hit, limited, None),
    ]
    pids = [gw.proc.pid]
    results = {}
    out(
        f"Redis server CPU per request (wrk, 50 connections, {seconds:.0f} s per case, after 2 s "
        "of warm-up; the gateway's CPU beside it, upstream excluded; most connections held)"
    )
    me = int(r.client.client_id())
    for label, path, key, lua in cases:
        # MISS: every request a new URL of the cached route (fetched, then stored).
        extra = ["-s", str(lua)] if lua else []
        warm = wrk.command(gw.url + path, connections=50, duration=2, headers={"X-API-Key": key})
        subprocess.run(warm[:-1] + extra + warm[-1:], capture_output=True, check=True)
        cmd = wrk.command(
            gw.url + path, connections=50, duration=seconds, headers={"X-API-Key": key}
        )
        _, cpu0 = r.counters()
        t0 = process_ticks(pids)
        run = subprocess.Popen(cmd[:-1] + extra + cmd[-1:], stdout=subprocess.PIPE, text=True)
        peak_redis = peak_pg = 0
        while run.poll() is None:
            peak_redis = max(peak_redis, sum(int(c["id"]) != me for c in r.client.client_list()))
            peak_pg = max(peak_pg, len(asyncio.run(_pg_fetch(pg_dsn, _PG_CONNS % db_name))))
            time.sleep(0.5)
        res = wrk.parse(run.stdout.read() if run.stdout else "")
        _, cpu1 = r.counters()
        t1 = process_ticks(pids)
        redis_cpu = (cpu1 - cpu0) / res.requests
        gw_cpu = (t1 - t0) / TICK / res.requests
        results[label] = (res.rps, redis_cpu, gw_cpu)
        sustain = 0.8 / redis_cpu if redis_cpu > 0 else float("inf")
        out(
            f"  {label:12} {res.rps:7,.0f} req/s  Redis {redis_cpu * 1e6:5.1f} µs/req "
            f"(one master at 80 % of a core: {sustain:7,.0f} req/s)  gateway "
            f"{gw_cpu * 1e6:4.0f} µs/req  non-2xx {res.non_2xx:,}  connections at most: "
            f"Redis {peak_redis}, PostgreSQL {peak_pg}"
        )
    return results


_PG_CONNS = "SELECT pid FROM pg_stat_activity WHERE datname = '%s'"


def connection_counts(r: PrivateRedis, gw: gw_kit.Gateway, db_name: str, pg_dsn: str) -> None:
    out("Connections of one instance (`heliox serve`, one worker) after the wrk runs:")
    me = int(r.client.client_id())
    clients = [c for c in r.client.client_list() if int(c["id"]) != me]
    subs = [c for c in clients if int(c.get("sub", 0)) or int(c.get("psub", 0))]
    names = Counter(c.get("name") or "-" for c in clients)
    out(f"  Redis CLIENT LIST: {len(clients)} (subscribers {len(subs)}; names {dict(names)})")
    rows = asyncio.run(
        _pg_fetch(
            pg_dsn,
            f"SELECT application_name, state FROM pg_stat_activity WHERE datname = '{db_name}'",
        )
    )
    out(
        f"  PostgreSQL pg_stat_activity: {len(rows)} ({dict(Counter(str(row[1]) for row in rows))})"
    )
    pids = {gw.proc.pid, *children(gw.proc.pid)}
    if shutil.which("ss"):
        text = subprocess.run(
            ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=False
        ).stdout
        ports: Counter[str] = Counter()
        for line in text.splitlines():
            if not any(f"pid={pid}," in line for pid in pids):
                continue
            peer = line.split()[3] if len(line.split()) > 3 else ""
            port = peer.rpartition(":")[2]
            label = {str(r.port): "redis", "5432": "postgresql"}.get(port)
            if label:
                ports[label] += 1
        out(f"  ss -tnp (the gateway's processes' established sockets): {dict(ports)}")


async def _pg_fetch(dsn: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


# --- PostgreSQL --------------------------------------------------------------------------------

_SIZES = """
WITH used AS (SELECT tableoid AS part, count(*) AS n FROM request_logs GROUP BY 1)
SELECT (SELECT coalesce(sum(n), 0) FROM used),
       (SELECT coalesce(sum(pg_total_relation_size(part)), 0) FROM used),
       (SELECT count(*) FROM used),
       (SELECT count(*) FROM request_log_minutes),
       pg_total_relation_size('request_log_minutes'),
       (SELECT count(*) FROM request_log_route_minutes),
       pg_total_relation_size('request_log_route_minutes')
"""


def log_sizes(dsn: str, label: str) -> float:
    found = asyncio.run(_pg_fetch(dsn, _SIZES))[0]
    rows, size, parts, mins, min_size, rmins, rmin_size = (int(v) for v in found)
    per = size / rows if rows else 0.0
    out(
        f"  {label}: {rows:,} rows in {parts} partition(s), {size / 2**20:.1f} MiB with indexes: "
        f"{per:.0f} B/row; minute roll-ups {mins:,} keyed rows ({min_size / max(mins, 1):.0f} "
        f"B/row), {rmins:,} per-route rows ({rmin_size / max(rmins, 1):.0f} B/row)"
    )
    return per


def backend_ticks(pids: Iterable[int]) -> int | None:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])
    return total


def log_rows(batches: int, keys: int, seed: int) -> list[list[tuple[Any, ...]]]:
    """Batches of 2,000 rows shaped like the gateway's (a 32-hex request id, a 30-odd byte path,
    a browser-length user agent, a cache status on most), 12 routes, `keys` API keys drawn at
    random, timestamps 0.1 ms apart (10,000 rows/s) from now."""
    from heliox.db.logwriter import BATCH_SIZE, COLUMNS

    rng = random.Random(seed)
    routes = [f"route-{i}" for i in range(12)]
    pad = (None,) * (len(COLUMNS) - 16)
    now = time.time()
    made = []
    for b in range(batches):
        batch = []
        for i in range(BATCH_SIZE):
            k = rng.randrange(1, keys + 1)
            r = rng.randrange(12)
            batch.append(
                (
                    now + (b * BATCH_SIZE + i) * 1e-4,
                    uuid.uuid4().hex,
                    k % 50 + 1,
                    k,
                    r + 1,
                    routes[r],
                    "GET",
                    f"/v1/items/{rng.randrange(10**6)}?page={rng.randrange(20)}",
                    rng.choice((200, 200, 200, 200, 304, 404, 429, 500)),
                    rng.choice(("HIT", "HIT", "MISS", "")),
                    rng.lognormvariate(1, 1),
                    rng.lognormvariate(2, 1),
                    0,
                    rng.randrange(200, 4000),
                    f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                    *pad,
                )
            )
        made.append(batch)
    return made


async def copy_rate(
    dsn: str, made: list[list[tuple[Any, ...]]], writers: int
) -> tuple[int, float, float]:
    """Write the batches through `writers` LogWriters at once (each its own engine, as each
    gateway process has): (rows, wall s, the backends' CPU s or -1 when not readable)."""
    from heliox.db.engine import make_engine
    from heliox.db.logwriter import LogWriter
    from heliox.metrics import Metrics

    engines = [make_engine(dsn) for _ in range(writers)]
    try:
        pids = []
        for engine in engines:
            async with engine.connect() as conn:  # the pool's one connection, its backend's pid
                raw = await conn.get_raw_connection()
                pids.append(await raw.driver_connection.fetchval("SELECT pg_backend_pid()"))  # type: ignore[union-attr]
        logs = [
            LogWriter(
                engine,
                is_postgres=True,
                metrics=Metrics(),
                queue_size=10,
                spill_path=Path(tempfile.mkdtemp()) / "spill.jsonl",
            )
            for engine in engines
        ]

        async def write(w: int) -> None:
            for batch in made[w::writers]:
                await logs[w]._write(batch)

        t0, wall = backend_ticks(pids), time.perf_counter()
        await asyncio.gather(*(write(w) for w in range(writers)))
        wall = time.perf_counter() - wall
        t1 = backend_ticks(pids)
        after = []
        for engine in engines:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                after.append(await raw.driver_connection.fetchval("SELECT pg_backend_pid()"))  # type: ignore[union-attr]
        readable = t0 is not None and t1 is not None and after == pids
        cpu = (t1 - t0) / TICK if readable else -1.0  # type: ignore[operator]
        return sum(len(b) for b in made), wall, cpu
    finally:
        for engine in engines:
            await engine.dispose()


def postgres_part(admin_dsn: str, batches: int) -> tuple[float, float]:
    """(bytes per row, backend CPU s per row) of the COPY runs; prints the figures."""
    from heliox.db.migrate import upgrade_database

    out(
        f"PostgreSQL: LogWriter batches of 2,000 rows (COPY + roll-up upserts, one transaction "
        f"each; {batches} batches per run)"
    )
    base = admin_dsn.rpartition("/")[0]
    cpu_per_row, size = 0.0, 0.0
    for keys, writers in ((200, 1), (1_000_000, 1), (200, 4)):
        name = "heliox_scaling_" + uuid.uuid4().hex[:10]
        asyncio.run(_pg_exec(admin_dsn, f'CREATE DATABASE "{name}"'))
        try:
            url = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
            asyncio.run(upgrade_database(url))
            made = log_rows(batches, keys, seed=keys)
            rows, wall, cpu = asyncio.run(copy_rate(url, made, writers))
            cpu_note = (
                f"backend CPU {cpu:.2f} s = {cpu / rows * 1e6:.1f} µs/row -> "
                f"{rows / cpu:,.0f} rows/s per core"
                if cpu > 0
                else "backend CPU not readable"
            )
            out(
                f"  {keys:>9,} keys x 12 routes, {writers} writer(s) at once: {rows:,} rows in "
                f"{wall:.2f} s wall ({rows / wall:,.0f} rows/s); {cpu_note}"
            )
            if writers == 1:
                size = log_sizes(f"{base}/{name}", f"  sizes after it ({keys:,} keys)")
            if keys == 1_000_000 and cpu > 0:
                cpu_per_row = cpu / rows
        finally:
            asyncio.run(_pg_exec(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return size, cpu_per_row


async def _pg_exec(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- Redis Cluster -----------------------------------------------------------------------------


def cluster_part(
    procs: Processes,
    up: gw_kit.Upstream,
    backends: services.ProductionBackends,
    n: int,
    seconds: float,
    cluster: Any,
    extra: dict[str, str],
) -> dict[str, tuple[float, float, float]]:
    """case -> (gateway CPU, Redis CPU on all masters, on the busiest master) per request."""
    costs = {}
    prefix = f"heliox-scaling:{uuid.uuid4().hex[:8]}:"
    env = {
        **backends.env(),
        "REDIS_URL": cluster.url,
        "REDIS_CLUSTER": "true",
        "REDIS_KEY_PREFIX": prefix,
        **extra,
    }
    gw = gw_kit.start_gateway(procs, "cluster", up, env, None)
    # The benchmark key and route exist in the database already (the first gateway made them).
    gw.api_key = API_KEY[0]
    hit = f"/g/{gw_kit.CACHED_ROUTE}{gw_kit.ITEMS}"
    wait_until(lambda: api(gw, hit, gw.api_key).status == 200, "cluster gateway", timeout=60)
    masters = sorted(cluster.masters())
    nodes = sorted(cluster.procs)
    clients = {port: cluster.node(port) for port in nodes}

    def snap() -> list[Counter[str]]:
        return [
            Counter(
                {
                    k.removeprefix("cmdstat_"): int(v["calls"])
                    for k, v in clients[port].info("commandstats").items()
                }
            )
            for port in masters
        ]

    def cpu() -> dict[int, float]:
        return {
            port: float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            for port in nodes
            for info in [clients[port].info("cpu")]
        }

    for _ in range(50):
        api(gw, hit, gw.api_key)
    a, idle0 = snap(), cpu()
    time.sleep(5)
    b, idle1 = snap(), cpu()
    idle_cpu = {port: (idle1[port] - idle0[port]) / 5 for port in nodes}
    idle = [sum((y - x).values()) / 5 for x, y in zip(a, b, strict=True)]
    tag = uuid.uuid4().hex[:6]
    out(
        f"Redis Cluster {extra or '(defaults)'} (3 masters, 3 replicas; n={n} one at a time; "
        "commandstats per master, "
        f"scripts' inner commands included; idle {', '.join(f'{v:.1f}' for v in idle)} /s "
        "subtracted):"
    )
    cases: tuple[tuple[str, Callable[[int], str]], ...] = (
        ("cache HIT", lambda i: hit),
        ("cache MISS (stored)", lambda i: f"{hit}?s={tag}-{i}"),
    )
    for label, path in cases:
        before, t0 = snap(), time.perf_counter()
        for i in range(n):
            api(gw, path(i), gw.api_key)
        time.sleep(0.5)
        after, dt = snap(), time.perf_counter() - t0
        per = [
            (sum((y - x).values()) - rate * dt) / n
            for x, y, rate in zip(before, after, idle, strict=True)
        ]
        top = sum((y - x for x, y in zip(before, after, strict=True)), Counter())
        if label == "cache HIT":
            round_trips = {
                port: (y["evalsha"] - x["evalsha"]) / n
                for port, x, y in zip(masters, before, after, strict=True)
            }
        out(
            f"  {label:20} per master {' / '.join(f'{v:.2f}' for v in per)} (total "
            f"{sum(per):.2f}; {', '.join(f'{k} {v / n:.2f}' for k, v in top.most_common(6))})"
        )
    gen_port = 0
    for port in masters:
        for key in clients[port].scan_iter(match=f"{prefix}*gen", count=1000):
            if b"{" not in key:
                gen_port = port
    # When the benchmark key's admission lands on the generation's master, that master's cost
    # is shared out by round trips (one of them is the generation read).
    share = 1.0 / max(1.0, round(round_trips.get(gen_port, 1.0)))
    out(
        f"  the cache's removal generation ({prefix}...gen) is on master {gen_port or 'none'}"
        + (
            f", with the benchmark key's admission: its share taken as 1/{1 / share:.0f}"
            if share < 1
            else ""
        )
    )
    script = procs.workdir / "cluster-unique.lua"
    script.write_text(_UNIQUE_URLS % (uuid.uuid4().hex[:8], hit))
    out(
        f"  under wrk (50 connections, {seconds:.0f} s): Redis CPU per request, all nodes "
        f"(idle CPU subtracted: {sum(idle_cpu.values()) * 1e3:.1f} ms/s over the 6 nodes); "
        "the gateway's CPU"
    )
    for label, lua in (("cache HIT", None), ("cache MISS", script)):
        lua_args = ["-s", str(lua)] if lua else []
        cmd = wrk.command(
            gw.url + hit, connections=50, duration=seconds, headers={"X-API-Key": gw.api_key}
        )
        c0, g0, w0 = cpu(), process_ticks([gw.proc.pid]), time.perf_counter()
        run = subprocess.Popen(cmd[:-1] + lua_args + cmd[-1:], stdout=subprocess.PIPE, text=True)
        peak: Counter[int] = Counter()
        while run.poll() is None:
            for port in masters:
                # Less our own connection and the replica's (flag S).
                found = [c for c in clients[port].client_list() if "S" not in c["flags"]]
                peak[port] = max(peak[port], len(found) - 1)
            time.sleep(0.5)
        res = wrk.parse(run.stdout.read() if run.stdout else "")
        c1, g1, dt = cpu(), process_ticks([gw.proc.pid]), time.perf_counter() - w0
        per_node = {
            port: (c1[port] - c0[port] - idle_cpu[port] * dt) / res.requests for port in nodes
        }
        on_masters = sum(per_node[p] for p in masters)
        on_replicas = sum(v for p, v in per_node.items() if p not in masters)
        gw_cpu = (g1 - g0) / TICK / res.requests
        # The one benchmark key and URL put their admission and entry on one master each; in a
        # fleet many keys and URLs spread. What does not spread is the cache's removal generation
        # (one key outside every shard), read with every admitted request when the in-process
        # copies are on: its master's cost per request bounds the whole fleet.
        l1_on = extra.get("CACHE_L1_MAX_BYTES") != "0"
        hot = per_node[gen_port] * share if gen_port and l1_on else 0.0
        costs[label] = (gw_cpu, on_masters, hot)
        out(
            f"    {label:11} {res.rps:7,.0f} req/s; masters ({' / '.join(map(str, masters))}) "
            f"{' / '.join(f'{per_node[p] * 1e6:.1f}' for p in masters)} µs/req "
            f"(sum {on_masters * 1e6:.1f}), replicas sum {on_replicas * 1e6:.1f} µs/req; "
            f"gateway {gw_cpu * 1e6:.0f} µs/req; "
            f"the gateway's connections per master at most: "
            f"{' / '.join(str(peak[p]) for p in masters)}"
        )
    procs.stop(gw.proc)
    cluster.delete_prefix(prefix)
    # A MISS reads the generation once too; the rest of its cost there is the entry's shard,
    # which spreads with many URLs.
    miss = costs["cache MISS"]
    costs["cache MISS"] = (miss[0], miss[1], costs["cache HIT"][2])
    return costs


API_KEY: list[str] = []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=500, help="requests per counted case (500)")
    p.add_argument("--seconds", type=float, default=8.0, help="wrk seconds per CPU case (8)")
    p.add_argument("--copy-batches", type=int, default=50, help="COPY batches per run (50)")
    p.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster part")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG)
    args = p.parse_args()
    for tool in ("redis-server", "redis-cli", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed on the PATH")
    load = os.getloadavg()
    out(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"at the start; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    procs = Processes(Path(tempfile.mkdtemp(prefix="heliox-scaling-")))
    backends = None
    try:
        r = PrivateRedis(procs)
        backends = services.create(args.pg_admin_dsn, r.url)
        up = gw_kit.start_upstream(procs, None)
        gw = gw_kit.start_gateway(procs, "redis", up, backends.env(), None)
        gw_kit.prepare(gw, up)
        API_KEY.append(gw.api_key)
        limited = count_commands(r, gw, args.requests)
        costs = cpu_runs(r, gw, args.seconds, limited, backends.db_name, args.pg_admin_dsn)
        connection_counts(r, gw, backends.db_name, args.pg_admin_dsn)
        out("PostgreSQL: request-log rows the gateway wrote in this run")
        time.sleep(1)  # the writer flushes every 0.25 s
        gw_rows = log_sizes(backends.database_url.replace("+asyncpg", ""), "  gateway rows")
        size, pg_cpu = postgres_part(args.pg_admin_dsn, args.copy_batches)
        layouts = {
            "one Redis": fleet.Costs(
                costs["cache HIT"][2],
                costs["cache MISS"][2],
                costs["cache HIT"][1],
                costs["cache MISS"][1],
                max(size, gw_rows),
                pg_cpu,
            )
        }
        if not args.no_cluster:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from cluster_support import LocalCluster  # type: ignore[import-not-found]

            (procs.workdir / "cluster").mkdir()
            cluster = LocalCluster(procs.workdir / "cluster")
            cluster.start()
            try:
                for name, extra in (
                    ("Redis Cluster", {}),
                    ("Redis Cluster, CACHE_L1_MAX_BYTES=0", {"CACHE_L1_MAX_BYTES": "0"}),
                ):
                    k = cluster_part(
                        procs, up, backends, min(args.requests, 300), args.seconds, cluster, extra
                    )
                    layouts[name] = fleet.Costs(
                        k["cache HIT"][0],
                        k["cache MISS"][0],
                        k["cache HIT"][1],
                        k["cache MISS"][1],
                        max(size, gw_rows),
                        pg_cpu,
                        k["cache HIT"][2],
                        k["cache MISS"][2],
                    )
            finally:
                cluster.stop()
        out(
            "Fleet (this run's measured costs; gateway workers at 70 % and Redis masters at 80 % "
            "of a core; the gateway MISS cost here excludes the upstream; 'busiest master' is "
            "the load on the master every request reaches (one Redis: the only one; a cluster with "
            "in-process copies: the generation's), which more masters do not spread):"
        )
        for name, c in layouts.items():
            out(f"  {name}:")
            for rate in (10_000, 100_000, 1_000_000):
                for ratio in (0.9, 0.2):
                    f = fleet.fleet(rate, ratio, c)
                    out(
                        f"    {rate:>9,} req/s, {ratio:.0%} HIT: gateway {f.gateway_cores:6.1f} "
                        f"cores -> {f.gateway_workers:4} workers; Redis {f.redis_cores:5.2f} cores "
                        f"-> {f.redis_masters:2} masters, busiest master {f.redis_hot_cores:5.2f} "
                        f"cores ({'ok' if f.redis_feasible else 'over one core: not reachable'}); "
                        f"PostgreSQL {f.log_rows_per_s:,.0f} rows/s = {f.pg_cores:.1f} backend "
                        f"cores, {f.log_bytes_per_day / 1e9:,.0f} GB/day"
                    )
    finally:
        services.drop(backends, say)  # before the private Redis stops: its keys go too
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
