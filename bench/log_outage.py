"""The request log's database fails under load: do the requests feel it, and is any row lost?

Starts the example upstream and Heliox in embedded mode (SQLite; `--mode redis`: PostgreSQL + Redis,
a throwaway database), drives a cache HIT with wrk at `--connections`, then makes every request-log
write fail for real: the `request_logs` table is renamed away, so each batch is refused and goes to
the spill file. While that lasts it measures `--runs` runs of `--duration` seconds (and one at
concurrency 1), counting the rows spilled after each; then it renames the table back, measures once
more, waits for the spill file to drain once the load stops, and compares the rows in the table with
the requests served.

The p99 during the outage should stay near the healthy one: the writer retries every second,
and a retry must not cost more as the spill file grows.

    .venv/bin/python bench/log_outage.py                  # about 2 minutes
    .venv/bin/python bench/log_outage.py --runs 8         # a longer outage
    .venv/bin/python bench/log_outage.py --mode redis     # PostgreSQL + Redis

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from benchkit import gateway, http, machine, services, wrk
from benchkit.procs import Processes, exit_on_signals, wait_until
from benchkit.services import DEFAULT_PG, DEFAULT_REDIS

TABLE = "request_logs"
AWAY = "request_logs_away"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per run (8)")
    p.add_argument("--runs", type=int, default=4, help="runs during the outage (4)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds (120)")
    p.add_argument("--mode", choices=("embedded", "redis"), default="embedded")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_PG, help="where the throwaway database goes")
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--server-cpu", type=int, default=0, help="CPU of the servers (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU of wrk (1)")
    return p.parse_args(argv)


class LogDatabase:
    """The gateway's database, as this script reaches it beside the gateway."""

    def __init__(self, sqlite_path: Path | None, pg_dsn: str | None) -> None:
        self.sqlite_path, self.pg_dsn = sqlite_path, pg_dsn

    def sql(self, statement: str) -> int:
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                row = conn.execute(statement).fetchone()
            return int(row[0]) if row else 0
        assert self.pg_dsn is not None
        return asyncio.run(_pg(self.pg_dsn, statement))

    def rename(self, old: str, new: str) -> None:
        self.sql(f"ALTER TABLE {old} RENAME TO {new}")

    def count(self) -> int:
        return self.sql(f"SELECT count(*) FROM {TABLE}")


async def _pg(dsn: str, statement: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(statement)
    finally:
        await conn.close()
    return int(value or 0)


def spilled_rows(folder: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in folder.rglob("logs-spill-*.jsonl"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    if shutil.which("wrk") is None:
        print(machine.install_hint(["wrk"]), file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="heliox-log-outage-"))
    procs = Processes(workdir)
    backends: services.ProductionBackends | None = None
    served = 0

    def run(label: str, connections: int) -> None:
        nonlocal served
        r = wrk.run(
            gw.url + f"/g/{gateway.CACHED_ROUTE}{gateway.ITEMS}",
            connections=connections,
            duration=args.duration,
            headers={"X-API-Key": gw.api_key},
            cpu=args.client_cpu,
        )
        served += r.requests
        print(
            f"{label:34} c={connections:<3} {r.rps:>9,.0f} req/s  p50 {r.p50 * 1e3:7.2f} ms  "
            f"p99 {r.p99 * 1e3:8.2f} ms  errors {r.errors}  rows spilled {spilled_rows(workdir):,}",
            flush=True,
        )

    try:
        up = gateway.start_upstream(procs, args.server_cpu)
        if args.mode == "redis":
            backends = services.create(args.pg_admin_dsn, args.redis_url)
            env = backends.env()
            base, _, _ = args.pg_admin_dsn.rpartition("/")
            db = LogDatabase(None, f"{base}/{backends.db_name}")
        else:
            env = {"DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'heliox.db'}"}
            db = LogDatabase(workdir / "heliox.db", None)
        gw = gateway.start_gateway(procs, args.mode, up, env, args.server_cpu)
        gateway.prepare(gw, up)
        run("healthy", args.connections)
        db.rename(TABLE, AWAY)
        for i in range(args.runs):
            run(f"log table gone, run {i + 1}", args.connections)
        run("log table gone", 1)
        db.rename(AWAY, TABLE)
        run("log table back", args.connections)
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):  # reported below
            wait_until(lambda: not spilled_rows(workdir), "spill drained", args.drain_timeout, 0.5)
        left = spilled_rows(workdir)
        print(
            f"spill file drained {time.monotonic() - start:.1f} s after the load stopped"
            if not left
            else f"{left:,} rows still spilled after {args.drain_timeout:g} s"
        )
        # The queue is written after the spill: wait until the table stops growing.
        rows, before = db.count(), -1
        while rows != before and time.monotonic() - start < args.drain_timeout:
            time.sleep(2.0)
            rows, before = db.count(), rows
        lost = http.get(gw.url + "/health").json().get("log_rows_lost")
        print(f"rows the gateway counts as lost (/health log_rows_lost): {lost}")
        # Admin requests and health checks are logged too: at least every request served.
        verdict = "none lost" if rows >= served else f"{served - rows:,} LOST"
        print(f"rows in the table {rows:,}, HIT requests served {served:,}: {verdict}")
        return 0 if rows >= served and not left else 1
    finally:
        procs.stop_all()
        services.drop(backends, print)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
