"""Request logs: a bounded in-process queue drained by one background writer.

The request path only appends a tuple (never awaits). The writer flushes in batches: COPY on
PostgreSQL, executemany inserts on SQLite. When the database is unreachable a batch is appended to
a local spill file (JSON lines) and replayed, oldest first, once the database answers again, so a
database outage loses nothing. A full queue drops the record and counts it (`log_queue_dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db.models import RequestLog
from heliox.metrics import Metrics

log = logging.getLogger("heliox.logs")

COLUMNS: tuple[str, ...] = (
    "ts",
    "request_id",
    "tenant_id",
    "key_id",
    "route_id",
    "route_name",
    "method",
    "path",
    "status",
    "cache_status",
    "latency_ms",
    "upstream_latency_ms",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "user_agent",
    "error",
)
# One row, in COLUMNS order; `ts` is a UTC epoch float until written.
LogRow = tuple[Any, ...]

BATCH_SIZE = 2000
FLUSH_INTERVAL = 0.25


class LogWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        is_postgres: bool,
        metrics: Metrics,
        queue_size: int,
        spill_path: Path,
    ) -> None:
        self._engine = engine
        self._is_postgres = is_postgres
        self._metrics = metrics
        self._queue: deque[LogRow] = deque()
        self._queue_size = queue_size
        self._spill_path = spill_path
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0

    # --- request path ----------------------------------------------------------------------
    def enqueue(self, row: LogRow) -> None:
        if len(self._queue) >= self._queue_size:
            self._metrics.count("log_queue_dropped")
            return
        self._queue.append(row)
        if len(self._queue) >= BATCH_SIZE:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heliox-log-writer")

    async def stop(self) -> None:
        """Flush everything queued (spilling what the database won't take), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            await self.flush()
            if self._stopping:
                if self._queue:
                    self._spill(self._take_all())
                return

    def _take_all(self) -> list[LogRow]:
        rows = list(self._queue)
        self._queue.clear()
        return rows

    async def flush(self) -> None:
        if self._spill_path.exists() and not await self._replay_spill():
            # Database still down: keep spilling so the queue never fills during an outage.
            if self._queue:
                self._spill(self._take_all())
            return
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH_SIZE, len(self._queue)))]
            try:
                await self._write(batch)
            except Exception as exc:
                self._metrics.count("log_write_errors")
                log.warning("request log write failed (%s); spilling %d rows", exc, len(batch))
                self._spill(batch + self._take_all())
                return
        self._metrics.gauges["log_queue_length"] = len(self._queue)

    # --- storage -----------------------------------------------------------------------------
    async def _write(self, batch: list[LogRow]) -> None:
        if not batch:
            return
        if self._is_postgres:
            records = [_as_record(row) for row in batch]
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.copy_records_to_table(
                    "request_logs", records=records, columns=list(COLUMNS)
                )
        else:
            # The driver's executemany on plain tuples: SQLAlchemy's per-row parameter processing
            # cost more than the rest of a cache hit. Timestamps in SQLAlchemy's SQLite format.
            rows = [(_sqlite_ts(row[0]), *row[1:]) for row in batch]
            async with self._engine.begin() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.executemany(SQLITE_INSERT, rows)
        self.written += len(batch)
        self._metrics.count("log_rows_written", len(batch))

    async def _not_yet_written(self, rows: list[LogRow]) -> list[LogRow]:
        """Rows of a spilled batch the database does not hold yet.

        A batch is spilled when its write fails, but a connection cut just after the commit
        fails it too: replaying that blindly would write it twice. A row is known by its request
        id and its timestamp (to the microsecond): a client may send the same X-Request-Id with
        every request, so the id alone could take a row never written for one that was. The
        time range bounds the lookup to the `ts` index.
        """
        ids = list({row[1] for row in rows})
        times = [_as_record(row)[0] for row in rows]
        query = select(RequestLog.request_id, RequestLog.ts).where(
            RequestLog.ts >= min(times),
            RequestLog.ts <= max(times),
            RequestLog.request_id.in_(ids),
        )
        async with self._engine.connect() as conn:
            present = {(rid, ts) for rid, ts in await conn.execute(query)}
        if not present:
            return rows
        return [row for row, ts in zip(rows, times, strict=True) if (row[1], ts) not in present]

    def _spill(self, rows: list[LogRow]) -> None:
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._metrics.count("log_rows_spilled", len(rows))

    async def _replay_spill(self) -> bool:
        """Write the spill file back; True when it is gone (written, or nothing to do)."""
        try:
            lines = self._spill_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return True
        # Rows spilled by an earlier version lack the columns added since (all nullable).
        width = len(COLUMNS)
        rows = [_widen(tuple(json.loads(line)), width) for line in lines if line.strip()]
        try:
            for i in range(0, len(rows), BATCH_SIZE):
                await self._write(await self._not_yet_written(rows[i : i + BATCH_SIZE]))
        except Exception as exc:
            # Earlier batches of this file are in; keep only the rest so none is written twice.
            written = i
            self._spill_path.write_text(
                "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows[written:]),
                encoding="utf-8",
            )
            log.debug("spill replay deferred: %s", exc)
            return False
        self._spill_path.unlink(missing_ok=True)
        self._metrics.count("log_rows_replayed", len(rows))
        return True


SQLITE_INSERT = (
    f"INSERT INTO request_logs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


def _sqlite_ts(ts: Any) -> str:
    if isinstance(ts, datetime):
        return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    # A batch's rows mostly share their second: format it once, then only the microseconds
    # (a datetime and strftime per row were a visible share of a cache hit's cost).
    t = float(ts)
    second = int(t)
    micros = round((t - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, 0
    global _ts_memo
    if _ts_memo[0] != second:
        _ts_memo = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))
    return f"{_ts_memo[1]}.{micros:06d}"


_ts_memo: tuple[int, str] = (-1, "")


def _widen(row: LogRow, width: int) -> LogRow:
    return row + (None,) * (width - len(row)) if len(row) < width else row


def _as_record(row: LogRow) -> tuple[Any, ...]:
    ts = row[0]
    if not isinstance(ts, datetime):
        ts = datetime.fromtimestamp(float(ts), UTC)
    return (ts, *row[1:])
