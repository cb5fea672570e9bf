"""The request log's database fails under load: do the requests feel it, and is any row lost?

Starts the example upstream and Heliox in embedded mode (SQLite), drives a cache HIT with wrk
at `--connections`, then makes every request-log write fail for real: the `request_logs` table
is renamed away, so each batch is refused and goes to the spill file. While that lasts it
measures `--runs` runs of `--duration` seconds (and one at concurrency 1), counting the rows
spilled after each; then it renames the table back, measures once more, waits for the spill
file to drain once the load stops, and compares the rows in the table with the requests served.

The p99 during the outage should stay near the healthy one: the writer retries every second,
and a retry must not cost more as the spill file grows.

    .venv/bin/python bench/log_outage.py                  # about 2 minutes
    .venv/bin/python bench/log_outage.py --runs 8         # a longer outage

See bench/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import gateway, http, machine, wrk
from benchkit.procs import Processes, exit_on_signals

TABLE = "request_logs"
AWAY = "request_logs_away"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per run (8)")
    p.add_argument("--runs", type=int, default=4, help="runs during the outage (4)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds (120)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU of the servers (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU of wrk (1)")
    return p.parse_args(argv)


def rename(db: Path, old: str, new: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def spilled_rows(folder: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in folder.rglob("logs-spill-*.jsonl"))


def count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        rows: int = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    if shutil.which("wrk") is None:
        print(machine.install_hint(["wrk"]), file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="heliox-log-outage-"))
    db = workdir / "heliox.db"
    procs = Processes(workdir)
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
        env = {"DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
        gw = gateway.start_gateway(procs, "embedded", up, env, args.server_cpu)
        gateway.prepare(gw, up)
        run("healthy", args.connections)
        rename(db, TABLE, AWAY)
        for i in range(args.runs):
            run(f"log table gone, run {i + 1}", args.connections)
        run("log table gone", 1)
        rename(db, AWAY, TABLE)
        run("log table back", args.connections)
        start = time.monotonic()
        while spilled_rows(workdir) and time.monotonic() - start < args.drain_timeout:
            time.sleep(0.5)
        left = spilled_rows(workdir)
        print(
            f"spill file drained {time.monotonic() - start:.1f} s after the load stopped"
            if not left
            else f"{left:,} rows still spilled after {args.drain_timeout:g} s"
        )
        # The queue is written after the spill: wait until the table stops growing.
        rows, before = count(db), -1
        while rows != before and time.monotonic() - start < args.drain_timeout:
            time.sleep(2.0)
            rows, before = count(db), rows
        lost = http.get(gw.url + "/health").json().get("log_rows_lost")
        print(f"rows the gateway counts as lost (/health log_rows_lost): {lost}")
        # Admin requests and health checks are logged too: at least every request served.
        verdict = "none lost" if rows >= served else f"{served - rows:,} LOST"
        print(f"rows in the table {rows:,}, HIT requests served {served:,}: {verdict}")
        return 0 if rows >= served and not left else 1
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
