"""Feed the request-log writer a steady rate of rows and see whether it keeps up.

Rows like a busy gateway's (12 routes, 200 keys, timestamps now) are enqueued at RATE rows/s for
SECONDS into a LogWriter on a fresh PostgreSQL database and a SQLite file, once with the
analytics roll-ups and once without, and the queue left at the end, the time to drain it and the
process CPU are printed: the roll-ups' share of the writer's cost.

    .venv/bin/python bench/log_writer_bench.py --rate 4000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

import heliox.db.logwriter as lw
from heliox.db.engine import make_engine
from heliox.db.logwriter import COLUMNS, LogWriter
from heliox.db.migrate import upgrade_database
from heliox.db.rollups import Grain
from heliox.metrics import Metrics

ROUTES = "catalog search users orders inventory pricing reports auth media webhooks legacy misc"


def _no_rollups(
    batch: list[lw.LogRow], compacted: float, share: lw.CoreShare
) -> list[tuple[Grain, list[tuple[Any, ...]]]]:
    return []  # rows only: the writer with its roll-ups switched off


async def feed(url: str, rate: int, seconds: float, rollups: bool) -> tuple[int, int, float, float]:
    await upgrade_database(url)
    engine = make_engine(url)
    saved = lw._rollup_params
    if not rollups:
        lw._rollup_params = _no_rollups
    writer = LogWriter(
        engine,
        is_postgres=url.startswith("postgresql"),
        metrics=Metrics(),
        queue_size=500_000,
        spill_path=Path(tempfile.mkdtemp()) / "spill.jsonl",
    )
    writer.start()
    rng = random.Random(1)
    routes = ROUTES.split()
    pad = (None,) * (len(COLUMNS) - 16)
    sent = 0
    started, cpu = time.perf_counter(), time.process_time()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            for i in range(sent, int(elapsed * rate)):
                key = rng.randrange(1, 201)
                row: tuple[Any, ...] = (time.time(), f"r{i}", key % 20 + 1, key, 1,
                    rng.choice(routes), "GET", "/x", rng.choice((200, 200, 200, 404, 500)),
                    rng.choice(("HIT", "MISS", "")), rng.lognormvariate(1, 1), None, 10, 100,
                    "10.0.0.1", "bench")  # fmt: skip
                writer.enqueue(row + pad)
                sent += 1
            await asyncio.sleep(0.01)
        behind = writer.pending
        await writer.stop()
        drained = time.perf_counter() - started - seconds
        return sent, behind, drained, time.process_time() - cpu
    finally:
        lw._rollup_params = saved
        await engine.dispose()


async def main(args: argparse.Namespace) -> int:
    for rollups in (False, True):
        name = "heliox_writer_" + uuid.uuid4().hex[:10]
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        base = args.dsn.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        try:
            pg = await feed(f"{base}/{name}", args.rate, args.seconds, rollups)
        finally:
            admin = await asyncpg.connect(args.dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        with tempfile.TemporaryDirectory() as folder:
            lite = await feed(
                f"sqlite+aiosqlite:///{folder}/logs.db", args.rate, args.seconds, rollups
            )
        for label, (sent, behind, drained, cpu) in (("postgresql", pg), ("sqlite", lite)):
            print(
                f"roll-ups {'on ' if rollups else 'off'} {label:<10} {sent:>8,} rows at "
                f"{args.rate:,}/s: {behind:>7,} queued at the end, drained in {drained:4.1f} s, "
                f"{cpu:5.1f} s CPU"
            )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rate", type=int, default=4000, help="rows per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
