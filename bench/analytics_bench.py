"""Time the /admin/analytics endpoints against a large request_logs table in PostgreSQL.

Creates a fresh database, migrates it, loads N synthetic log rows spread over the last D days
(generated server-side with generate_series, in time order as the log writer appends them; about
a minute per 10^6 rows), builds the roll-ups the log writer would have kept, then calls every
endpoint through the real ASGI app (httpx ASGITransport, no network) several times and prints
median/max per endpoint against a budget. The database is dropped at the end unless --keep is given.

    .venv/bin/python bench/analytics_bench.py                    # 10^6 rows, 7 days
    .venv/bin/python bench/analytics_bench.py --rows 10000000 --days 30   # the budget's scale
    .venv/bin/python bench/analytics_bench.py --rows 200000 --repeat 3 --match 30d
    .venv/bin/python bench/analytics_bench.py --sql "CREATE INDEX ..."   # try an index
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from heliox.config import load_settings
from heliox.db.migrate import upgrade_database
from heliox.main import create_app

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
SQL_CHUNK = 1_000_000
TENANTS = 20
KEYS = 200
# name, share of traffic, cacheable (GET mostly through the cache)
ROUTES: list[tuple[str, float, bool]] = [
    ("catalog", 0.30, True),
    ("search", 0.18, True),
    ("users", 0.14, True),
    ("orders", 0.10, False),
    ("inventory", 0.08, True),
    ("pricing", 0.06, True),
    ("reports", 0.05, True),
    ("auth", 0.04, False),
    ("media", 0.03, True),
    ("webhooks", 0.015, False),
    ("legacy", 0.005, True),
]
UNROUTED_SHARE = 0.005
STATUSES = [(200, 0.90), (404, 0.03), (429, 0.025), (401, 0.01), (500, 0.01), (502, 0.01)]
CACHE_OUTCOMES = [
    ("HIT", 0.62),
    ("MISS", 0.22),
    ("STALE", 0.06),
    ("REVALIDATED", 0.03),
    ("NEGATIVE", 0.02),
    ("EXPIRED", 0.02),
    ("BYPASS", 0.03),
]
SERVED = {"HIT", "STALE", "NEGATIVE", "UPDATING"}


def synthetic_rows(n: int, days: float, now: datetime, seed: int) -> Iterator[tuple[Any, ...]]:
    """Log rows in COLUMNS order, oldest first, evenly spread over `days` ending at `now`."""
    rng = random.Random(seed)
    start = now - timedelta(days=days)
    step = days * 86400 / n
    route_names = [r[0] for r in ROUTES] + [""]
    route_weights = [r[1] for r in ROUTES] + [UNROUTED_SHARE]
    cacheable = {r[0]: r[2] for r in ROUTES}
    route_ids = {name: i + 1 for i, name in enumerate(route_names)}
    # Zipf-like: a few keys carry most of the traffic.
    key_weights = [1 / (k + 1) for k in range(KEYS)]
    statuses = [s for s, _ in STATUSES]
    status_weights = [w for _, w in STATUSES]
    outcomes = [c for c, _ in CACHE_OUTCOMES]
    outcome_weights = [w for _, w in CACHE_OUTCOMES]
    batch = 4096
    i = 0
    while i < n:
        size = min(batch, n - i)
        routes = rng.choices(route_names, route_weights, k=size)
        keys = rng.choices(range(1, KEYS + 1), key_weights, k=size)
        codes = rng.choices(statuses, status_weights, k=size)
        caches = rng.choices(outcomes, outcome_weights, k=size)
        for j in range(size):
            ts = start + timedelta(seconds=(i + j + rng.random()) * step)
            route, key_id, status = routes[j], keys[j], codes[j]
            if route == "":
                status, key_id_or_none, cache = 404, None, ""
            elif status in (401, 429):
                key_id_or_none = key_id if status == 429 else None
                cache = ""
            else:
                key_id_or_none = key_id
                cache = caches[j] if cacheable[route] else "BYPASS"
            if status in (500, 502) and cache in SERVED:
                cache = "MISS"
            upstream: float | None = None
            if cache in ("MISS", "EXPIRED", "BYPASS", "REVALIDATED"):
                upstream = round(rng.lognormvariate(math.log(40), 0.6), 3)
                latency = upstream + round(rng.uniform(0.2, 2.0), 3)
            elif cache:
                latency = round(rng.lognormvariate(math.log(0.8), 0.5), 3)
            else:
                latency = round(rng.uniform(0.05, 0.5), 3)
            yield (
                ts,
                uuid.UUID(int=rng.getrandbits(128)).hex[:32],
                (key_id - 1) % TENANTS + 1 if key_id_or_none is not None else None,
                key_id_or_none,
                route_ids[route] if route else None,
                route,
                "GET" if cacheable.get(route, True) else rng.choice(("GET", "POST")),
                f"/g/{route or 'unknown'}/items/{rng.randrange(5000)}",
                status,
                cache,
                latency,
                upstream,
                rng.randrange(0, 400),
                rng.randrange(0, 20_000) if status == 200 else 120,
                f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                "bench-client/1.0",
                None,
            )
        i += size


def _db_dsn(admin_dsn: str, name: str) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_dsn: str) -> str:
    name = "heliox_bench_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _progress(done: int, total: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed else 0.0
    bar = "#" * int(30 * done / total)
    sys.stdout.write(
        f"\r  loading [{bar:<30}] {done:>9,}/{total:,} rows  {rate / 1000:6.1f}k rows/s"
    )
    sys.stdout.flush()


def _cases(column: str, choices: list[tuple[Any, float]], *, quoted: bool) -> str:
    """A CASE picking one of `choices` (value, weight) by the uniform random `column`."""
    total = sum(w for _, w in choices)
    parts, acc = [], 0.0
    for value, weight in choices[:-1]:
        acc += weight / total
        parts.append(f"WHEN {column} < {acc!r} THEN " + (f"'{value}'" if quoted else str(value)))
    last = f"'{choices[-1][0]}'" if quoted else str(choices[-1][0])
    return f"CASE {' '.join(parts)} ELSE {last} END"


def generate_sql(start: datetime, step: float, lo: int, hi: int) -> str:
    """One INSERT … SELECT making rows lo..hi-1 server-side (generate_series, random()), with
    the distributions of `synthetic_rows`: far faster than sending 10^7 rows from Python."""
    routes = [(name, share) for name, share, _ in ROUTES] + [("", UNROUTED_SHARE)]
    route_ids = {name: i + 1 for i, (name, _) in enumerate(routes)}
    cacheable = [name for name, _, c in ROUTES if c]
    route_id_case = " ".join(f"WHEN '{n}' THEN {i}" for n, i in route_ids.items() if n)
    served = ", ".join(f"'{c}'" for c in sorted(SERVED))
    upstream_outcomes = "'MISS', 'EXPIRED', 'BYPASS', 'REVALIDATED'"
    # Zipf-like keys: P(k) ~ log((k+1)/k) ~ 1/k for k = floor((KEYS+1)^u).
    return f"""
INSERT INTO request_logs (ts, request_id, tenant_id, key_id, route_id, route_name, method, path,
    status, cache_status, latency_ms, upstream_latency_ms, bytes_in, bytes_out, client_ip,
    user_agent)
SELECT ts, request_id, CASE WHEN key_id IS NULL THEN NULL ELSE (key_id - 1) % {TENANTS} + 1 END,
    key_id, CASE route WHEN '' THEN NULL ELSE CASE route {route_id_case} END END, route,
    method, '/g/' || CASE route WHEN '' THEN 'unknown' ELSE route END || '/items/' || item,
    status, cache,
    round((CASE WHEN upstream IS NOT NULL THEN upstream + 0.2 + 1.8 * u5
           WHEN cache <> '' THEN exp(ln(0.8) + 0.5 * z) ELSE 0.05 + 0.45 * u5 END)::numeric, 3),
    round(upstream::numeric, 3), bytes_in,
    CASE WHEN status = 200 THEN floor(u6 * 20000)::bigint ELSE 120 END,
    '10.0.' || floor(u5 * 256)::int || '.' || floor(u6 * 256)::int, 'bench-client/1.0'
FROM (
  SELECT *, CASE WHEN cache IN ({upstream_outcomes}) THEN exp(ln(40) + 0.6 * z) END AS upstream
  FROM (
    SELECT ts, request_id, route, item, u5, u6, z, bytes_in,
      CASE WHEN route = '' THEN 404 ELSE status END AS status,
      CASE WHEN route = '' OR status = 401 THEN NULL ELSE key END AS key_id,
      CASE WHEN route = '' OR status IN (401, 429) THEN ''
           WHEN route NOT IN ({", ".join(f"'{c}'" for c in cacheable)}) THEN 'BYPASS'
           WHEN status IN (500, 502) AND cache IN ({served}) THEN 'MISS'
           ELSE cache END AS cache,
      CASE WHEN route IN ({", ".join(f"'{n}'" for n, _, c in ROUTES if not c)}) AND u6 < 0.5
           THEN 'POST' ELSE 'GET' END AS method
    FROM (
      SELECT to_timestamp({start.timestamp()!r} + (g + random()) * {step!r}) AS ts,
        md5(g::text || random()::text) AS request_id,
        {_cases("u1", routes, quoted=True)} AS route,
        {_cases("u2", STATUSES, quoted=False)} AS status,
        {_cases("u3", CACHE_OUTCOMES, quoted=True)} AS cache,
        least(floor(power({KEYS + 1}, u4))::int, {KEYS}) AS key,
        floor(u5 * 5000)::int AS item, u5, u6, floor(u6 * 400)::int AS bytes_in,
        sqrt(-2 * ln(1 - u7)) * cos(2 * pi() * u8) AS z
      FROM (
        SELECT g, random() u1, random() u2, random() u3, random() u4, random() u5,
          random() u6, random() u7, random() u8
        FROM generate_series({lo}, {hi - 1}) g
      ) draws
    ) picked
  ) shaped
) timed"""


async def load(dsn: str, rows: int, days: float, now: datetime, seed: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO tenants (id, name, description, is_active, created_at, updated_at) "
            "VALUES ($1, $2, '', true, now(), now())",
            [(t, f"tenant-{t}") for t in range(1, TENANTS + 1)],
        )
        await conn.executemany(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, key_prefix, "
            "rate_limit_algorithm, rate_limit_window_seconds, is_active, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, 'token_bucket', 1, true, now(), now())",
            [
                (k, (k - 1) % TENANTS + 1, f"key-{k}", f"{k:064x}", f"hx_{k:04d}")
                for k in range(1, KEYS + 1)
            ],
        )
        await create_partitions(dsn, now, days)
        started = time.perf_counter()
        await conn.execute("SELECT setseed($1)", (seed % 1000) / 1000)
        start = now - timedelta(days=days)
        step = days * 86400 / rows
        for lo in range(0, rows, SQL_CHUNK):
            await conn.execute(generate_sql(start, step, lo, min(lo + SQL_CHUNK, rows)))
            _progress(min(lo + SQL_CHUNK, rows), rows, started)
        print()
        await build_rollups(conn)
        # What autovacuum does to an append-only table soon after a load like this: statistics
        # for the planner and the visibility map for index-only scans.
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        print(f"  VACUUM ANALYZE in {time.perf_counter() - t0:.1f}s")
    finally:
        await conn.close()


async def create_partitions(dsn: str, now: datetime, days: float) -> None:
    """The daily partitions of the whole range, as a gateway running through it would have
    created them (without, the rows would land in the DEFAULT partition)."""
    try:
        from heliox.db.partitions import ensure_partitions
    except ImportError:
        return
    from heliox.db.engine import make_engine

    engine = make_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=1)
    try:
        async with engine.connect() as conn:
            await ensure_partitions(conn, now, behind=math.ceil(days) + 1)
    finally:
        await engine.dispose()


async def build_rollups(conn: asyncpg.Connection) -> None:
    """The roll-ups the log writer would have kept for rows loaded around it (none before
    0008), built from the raw rows one grain at a time."""
    try:
        from heliox.db.rollups import COMPACTED_MARK, GRAINS, MARKS_TABLE, MINUTE, rebuild_sql
    except ImportError:
        return
    # Keyed hours and days only below the compaction mark, as the migration builds them.
    mark = await conn.fetchval(f"SELECT upto FROM {MARKS_TABLE} WHERE name = $1", COMPACTED_MARK)
    for g in GRAINS:
        t0 = time.perf_counter()
        until = mark if g.keyed and g.seconds > MINUTE else None
        await conn.execute(rebuild_sql(g, postgres=True, until=until))
        count = await conn.fetchval(f"SELECT count(*) FROM {g.table}")
        print(f"  roll-up {g.table}: {count:,} rows in {time.perf_counter() - t0:.1f}s")


async def run_sql(dsn: str, statements: list[str]) -> None:
    if not statements:
        return
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            t0 = time.perf_counter()
            await conn.execute(sql)
            print(f"  {sql}  ({time.perf_counter() - t0:.1f}s)")
        await conn.execute("ANALYZE request_logs")
    finally:
        await conn.close()


Case = tuple[str, str, dict[str, Any], bool]
# Every window up to the longest the budget holds for (30 days).
WINDOWS = ("1h", "24h", "7d", "30d")


def cases(max_id: int) -> list[Case]:
    """(label, path, params, held to the budget) for every endpoint.

    The budget applies to every window, 1 hour to 30 days; the rest is shown for information.
    """
    out: list[Case] = []
    for window in WINDOWS:
        w = {"window": window}
        out += [
            (f"summary {window}", "summary", w, True),
            (f"summary {window} route=orders", "summary", {**w, "route": "orders"}, True),
            (f"summary {window} key_id=3", "summary", {**w, "key_id": 3}, True),
            (f"top-keys {window}", "top-keys", w, True),
            (f"top-routes {window}", "top-routes", w, True),
            (f"cache-hit-rate {window}", "cache-hit-rate", w, True),
            (
                f"cache-hit-rate {window} series=false",
                "cache-hit-rate",
                {**w, "series": "false"},
                True,
            ),
            (f"logs {window}", "logs", w, True),
            (f"logs {window} status=5xx", "logs", {**w, "status": "5xx"}, True),
            (f"logs {window} key_id=150", "logs", {**w, "key_id": 150}, True),
            # Matches nothing: the whole window is read (a generic plan would read the table).
            (f"logs {window} status=418 (no match)", "logs", {**w, "status": "418"}, True),
        ]
    out += [
        ("cache-hit-rate 1h bucket=10s", "cache-hit-rate", {"window": "1h", "bucket": "10s"}, True),
        ("logs newest, no window", "logs", {}, True),
        ("logs tail after_id", "logs", {"after_id": max(max_id - 50, 0)}, True),
        ("logs deep page before_id", "logs", {"before_id": max_id // 2}, True),
        ("logs route=legacy limit=1000", "logs", {"route": "legacy", "limit": 1000}, False),
        ("logs path_prefix", "logs", {"path_prefix": "/g/legacy/items/42"}, False),
        ("logs path_prefix no match, no window", "logs", {"path_prefix": "/nope"}, False),
        (
            "cache-hit-rate 7d series=false",
            "cache-hit-rate",
            {"window": "7d", "series": "false"},
            False,
        ),
        ("cache-hit-rate 7d (5m buckets)", "cache-hit-rate", {"window": "7d"}, False),
    ]
    return out


async def time_endpoints(url: str, repeat: int, budget_ms: float, match: str = "") -> bool:
    settings = load_settings(
        database_url=url,
        redis_url="",
        admin_api_key=ADMIN_KEY,
        secret_key="bench-secret-key-0123456789abcdef",
        deployment_mode="production",
        auto_seed=False,
    )
    gateway = create_app(settings)
    transport = httpx.ASGITransport(app=gateway)
    ok = True
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            headers={"X-Admin-Key": ADMIN_KEY},
            timeout=60,
        ) as client:
            newest = (await client.get("/admin/analytics/logs", params={"limit": 1})).json()
            max_id = newest["items"][0]["id"] if newest["items"] else 0
            load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"\n  {repeat} timed calls each after one warm-up; load average {load}")
            print(f"\n  {'endpoint':<40} {'median ms':>10} {'max ms':>9} {'rows':>6}  result")
            print("  " + "-" * 76)
            for label, path, params, budgeted in cases(max_id):
                if match and match not in label:
                    continue
                timings = []
                size = 0
                for attempt in range(repeat + 1):
                    t0 = time.perf_counter()
                    response = await client.get(f"/admin/analytics/{path}", params=params)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if response.status_code != 200:
                        # A statement timeout (503) is a result too: shown, counted as failed.
                        timings.append(elapsed)
                        size = -response.status_code
                        break
                    if attempt:  # the first call warms the pool and the caches
                        timings.append(elapsed)
                    size = _size(response.json())
                median = statistics.median(timings)
                verdict = "PASS" if median < budget_ms and size >= 0 else "FAIL"
                if size < 0:
                    verdict += f" (HTTP {-size})"
                if budgeted:
                    ok = ok and verdict == "PASS"
                else:
                    verdict = f"({verdict.lower()}, info)"
                print(f"  {label:<40} {median:>10.1f} {max(timings):>9.1f} {size:>6}  {verdict}")
    finally:
        await gateway.runtime.engine.dispose()
    return ok


def _size(body: dict[str, Any]) -> int:
    for key in ("items", "series"):
        if key in body:
            return len(body[key])
    return int(body.get("requests", 0))


async def main(args: argparse.Namespace) -> int:
    reuse = args.database is not None
    name = args.database or await create_database(args.dsn)
    dsn = _db_dsn(args.dsn, name)
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    print(f"database {name}")
    try:
        t0 = time.perf_counter()
        await upgrade_database(url)
        print(f"  migrated in {time.perf_counter() - t0:.1f}s")
        if not reuse:
            now = datetime.now(UTC)
            await load(dsn, args.rows, args.days, now, args.seed)
        await run_sql(dsn, args.sql)
        ok = await time_endpoints(url, args.repeat, args.budget_ms, args.match)
    finally:
        if args.keep or reuse:
            print(f"kept database {name}")
        else:
            await drop_database(args.dsn, name)
            print(f"dropped database {name}")
    verdict = "PASS" if ok else "FAIL"
    print(f"\n{verdict}: every budgeted endpoint's median under {args.budget_ms:.0f} ms")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database to connect to as a user allowed to CREATE DATABASE",
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=7,
        help="timed calls per endpoint (more than 5 also catches PostgreSQL's switch to generic "
        "plans for prepared statements)",
    )
    parser.add_argument("--budget-ms", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sql", action="append", default=[], help="run after loading (e.g. CREATE INDEX …)"
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--database",
        help="time a database kept by --keep instead of loading a new one (its rows age: the "
        "windows end now)",
    )
    parser.add_argument("--match", default="", help="time only the cases whose label has this")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
