"""Request logs: a bounded in-process queue drained by one background writer.

The request path only appends a tuple (never awaits). The writer flushes in batches: COPY on
PostgreSQL, executemany inserts on SQLite. When the database is unreachable, or does not answer a
call within the write timeout (a hung database is treated exactly like one that refuses), a batch
is appended to a local spill file (JSON lines) and replayed, oldest first, once the database
answers again, so a database outage loses nothing. While a write is outstanding the queue is
spilled whenever it reaches half its bound, so a slow database never fills it. Spill files left
by processes that have exited are adopted and replayed by a live one. A full queue drops the
record, and a spill that cannot be written (disk full) loses its rows: both are counted
(`log_queue_dropped`, `log_rows_lost`) and `lost` is shown on /health.

Each batch also adds to the per-minute/hour/day roll-ups (heliox.db.rollups) in the same
transaction, so the analytics read from them never disagree with the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db import rollups
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
    # 0010: new columns go last (rows are tuples in this order; spilled rows of an earlier
    # version, shorter, are padded with None on replay).
    "cache_key",
    "upstream_status",
    "refused_by",
    "refusal",
)
# One row, in COLUMNS order; `ts` is a UTC epoch float until written.
LogRow = tuple[Any, ...]

BATCH_SIZE = 2000
# The most rows one write takes from the queue (one COPY and one set of roll-up upserts).
MAX_WRITE = 20_000
FLUSH_INTERVAL = 0.25
# Default bound on one database call of the writer (LOG_WRITE_TIMEOUT); a COPY of a full batch
# takes milliseconds on a healthy server.
WRITE_TIMEOUT = 5.0
# After a failed write or replay, rows go straight to the spill file for this long before the
# database is asked again (a hung database would otherwise cost a whole timeout per flush).
RETRY_INTERVAL = 1.0
# The writes run in threads beside the event loop (the SQLite driver's, and the roll-ups'
# arithmetic). On a core they share with the loop, the kernel lets a running thread use up its
# time slice (milliseconds) before the woken loop gets the CPU back, and the request that woke it
# waits that long: a cache hit's p99 at concurrency 1 was 3 ms against a p50 of 0.2 ms. Every
# this many rows those threads give the CPU away (docs/performance.md, "The request log's writer
# was the tail at concurrency 1"), as long as that costs the write little: a give-away lasts as
# long as the others keep the CPU. An idle core costs it nothing (it returns at once); at one
# connection a write gives the CPU away ~110 times and waits 10-17 ms in all. Once a write has
# waited YIELD_BUDGET, or one give-away finds the core saturated, it runs the rest at the
# kernel's fair share: giving way always, the writer fell seconds behind on a saturated core and
# a write timed out. (Whether the writer is behind is no signal: at 8,000 requests a second the
# queue reaches BATCH_SIZE every quarter second with the writer idle 95 % of the time.)
SHARE_CORE_EVERY = 32
YIELD_BUDGET = 0.05  # seconds per write
# A give-away this long means the others used a whole time slice: the core is saturated, and
# the rest of the write runs at the fair share (its requests wait in line anyway).
SATURATED_WAIT = 0.001
# Rows per COPY on PostgreSQL (see _write).
COPY_ROWS = 256
# The block a rewrite of the spill file copies at a time (see LogWriter._splice_spill).
SPILL_COPY_BLOCK = 1 << 20
# How often the spill folder is searched for files of processes that have exited.
ADOPT_INTERVAL = 30.0
# How often the writer looks for a finished hour of keyed roll-ups to compact.
COMPACT_INTERVAL = 60.0
# Advisory lock of the compaction on PostgreSQL ("heliox" + 1, beside the migrations' lock).
COMPACT_LOCK_KEY = 0x68656C696F78 + 1
# How long a compaction waits for the batches in flight before it gives up until the next interval.
COMPACT_LOCK_TIMEOUT = "5s"
_SPILL_NAME = re.compile(r"^logs-spill-(\d+)(?:-adopting-\d+)?\.jsonl$")
T = TypeVar("T")


class LogWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        is_postgres: bool,
        metrics: Metrics,
        queue_size: int,
        spill_path: Path,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._is_postgres = is_postgres
        self._metrics = metrics
        self._queue: deque[LogRow] = deque()
        self._queue_size = queue_size
        self._spill_path = spill_path
        self._wake = asyncio.Event()
        # Set when the queue reaches its high water: a write in progress spills it at once (a
        # watch every FLUSH_INTERVAL let a small LOG_QUEUE_SIZE fill and drop rows meanwhile).
        self._brim = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._write_timeout = write_timeout
        # While a write is outstanding the queue is spilled once it holds this many rows.
        self._high_water = max(1, queue_size // 2)
        # The writer wakes before its interval once this many rows are queued: a full batch, or
        # a quarter of a small queue (LOG_QUEUE_SIZE below a quarter second of traffic filled
        # and dropped rows between two intervals with the database healthy and the writer idle).
        self._wake_at = max(1, min(BATCH_SIZE, queue_size // 4))
        # The driver connection of the call in progress: closed at once when the call times out.
        self._driver: Any = None
        self._retry_at = 0.0  # monotonic time before which the database is not asked again
        # Bytes at the head of the spill file already in the database: a replay the database
        # cut short resumes there. (Rewriting the file without them at every failure copied
        # what was left of it, an outage's worth of rows, each time the database flapped.)
        self._replayed_to = 0
        self._adopt_at = 0.0
        self._compact_at = time.monotonic() + COMPACT_INTERVAL
        self._abandoned: set[asyncio.Task[Any]] = set()
        self.written = 0
        # Rows given up: dropped from a full queue, or a spill that could not be written.
        self.lost = 0

    # --- request path ----------------------------------------------------------------------
    def enqueue(self, row: LogRow) -> None:
        if len(self._queue) >= self._queue_size:
            self._metrics.count("log_queue_dropped")
            self.lost += 1
            return
        self._queue.append(row)
        queued = len(self._queue)
        if queued >= self._wake_at:
            self._wake.set()
            if queued >= self._high_water:
                self._brim.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._adopt_orphans()
        self._task = asyncio.create_task(self._run(), name="heliox-log-writer")

    async def stop(self) -> None:
        """Flush everything queued (spilling what the database won't take), then stop.

        Bounded: at most one write timeout for the write in progress and one for the last batch;
        with a spill file pending (the database was failing) the queue is spilled at once.
        """
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
                    await self._spill(self._take_all())
                return
            if time.monotonic() >= self._adopt_at:
                await asyncio.to_thread(self._adopt_orphans)
            if time.monotonic() >= self._compact_at and not self._spill_path.exists():
                await self._compact_rollups()

    def _take_all(self) -> list[LogRow]:
        rows = list(self._queue)
        self._queue.clear()
        return rows

    async def flush(self) -> None:
        try:
            await self._flush()
        finally:
            self._metrics.gauges["log_queue_length"] = len(self._queue)

    async def _flush(self) -> None:
        if self._spill_path.exists() and (
            self._stopping or time.monotonic() < self._retry_at or not await self._replay_spill()
        ):
            # Database still failing (or shutting down): keep spilling so the queue never fills.
            if self._queue:
                await self._spill(self._take_all())
            return
        while self._queue:
            # Everything queued, up to MAX_WRITE: the roll-up upserts cost per group (route,
            # key, minute) rather than per row, so a database that falls behind catches up
            # with larger, cheaper-per-row writes.
            if len(self._queue) <= MAX_WRITE:
                batch = self._take_all()  # in C; popping 2,000 rows one by one held the loop
            else:
                batch = [self._queue.popleft() for _ in range(MAX_WRITE)]
            try:
                await self._bounded(self._write(batch))
            except Exception as exc:
                self._metrics.count("log_write_errors")
                self._retry_at = time.monotonic() + RETRY_INTERVAL
                log.warning(
                    "request log write failed (%s); spilling %d rows",
                    str(exc) or type(exc).__name__,
                    len(batch) + len(self._queue),
                )
                await self._spill(batch + self._take_all())
                return
            if len(self._queue) < self._wake_at and not self._stopping:
                # What arrived during this write waits for the next interval: draining it at
                # once would turn a steady load into one tiny write per few requests.
                return

    async def _bounded(self, call: Coroutine[Any, Any, T]) -> T:
        """`call`, given at most the write timeout; the queue is spilled meanwhile if it grows.

        On timeout the connection in use is closed (a hung server never answers a cancel) and
        the call is abandoned, then TimeoutError is raised.
        """
        loop = asyncio.get_running_loop()
        # A call that failed leaves its connection here, back in the pool by now: never the one
        # to terminate when this call times out (before it has a connection of its own).
        self._driver = None
        task = asyncio.ensure_future(call)
        deadline = loop.time() + self._write_timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                brim = asyncio.ensure_future(self._brim.wait())
                try:
                    await asyncio.wait(
                        {task, brim},
                        timeout=min(remaining, FLUSH_INTERVAL),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    brim.cancel()
                if task.done():
                    return task.result()
                await self._relieve_queue()
        except asyncio.CancelledError:
            task.cancel()
            raise
        self._abandon(task)
        raise TimeoutError(f"no answer from the database within {self._write_timeout:g} s")

    async def _relieve_queue(self) -> None:
        """Spill the queue once it holds half its bound: the write or replay in progress may
        take long, and a full queue drops rows. Called when the queue reaches that (`_brim`),
        after each chunk of a replay, and every FLUSH_INTERVAL of a write."""
        self._brim.clear()  # before the spill: rows that reach it again meanwhile set it again
        self._metrics.gauges["log_queue_length"] = len(self._queue)
        if len(self._queue) >= self._high_water:
            await self._spill(self._take_all())

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        driver, self._driver = self._driver, None
        terminate = getattr(driver, "terminate", None)  # asyncpg: closes the socket, no wait
        if callable(terminate):
            with contextlib.suppress(Exception):
                terminate()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the failure was already reported as a timeout

    # --- storage -----------------------------------------------------------------------------
    async def _write(self, batch: list[LogRow]) -> None:
        if not batch:
            return
        share = CoreShare(YIELD_BUDGET)
        if self._is_postgres:
            records = await asyncio.to_thread(_as_records, batch)
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                self._driver = driver
                # The rows and their roll-ups commit together or not at all (a failed batch is
                # spilled and replayed whole).
                async with driver.transaction():
                    # The driver encodes a COPY's rows on the event loop, all at once: a few
                    # hundred at a time keeps each stretch short (~0.4 ms; a 600-row COPY held
                    # the loop for 1 ms); the round trips between them leave it free.
                    for start in range(0, len(records), COPY_ROWS):
                        await driver.copy_records_to_table(
                            "request_logs",
                            records=records[start : start + COPY_ROWS],
                            columns=COLUMNS,
                        )
                    compacted = await driver.fetchval(_PG_MARK, rollups.COMPACTED_MARK)
                    grains = await asyncio.to_thread(_rollup_params, batch, compacted or 0, share)
                    for grain, params in grains:
                        if params:
                            await driver.execute(_PG_UPSERTS[grain], *rollups.as_arrays(params))
                self._driver = None
        else:
            # The driver's executemany on plain tuples: SQLAlchemy's per-row parameter processing
            # cost more than the rest of a cache hit. Timestamps in SQLAlchemy's SQLite format,
            # converted as the driver's thread consumes them, off the event loop.
            rows = share.rows((_sqlite_ts(row[0]), *row[1:]) for row in batch)
            async with self._engine.begin() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                self._driver = driver
                await driver.executemany(SQLITE_INSERT, rows)
                cursor = await driver.execute(_SQLITE_MARK, (rollups.COMPACTED_MARK,))
                mark = await cursor.fetchone()
                compacted = mark[0] if mark else 0
                grains = await asyncio.to_thread(_rollup_params, batch, compacted, share)
                for grain, params in grains:
                    await driver.executemany(_SQLITE_UPSERTS[grain], share.rows(params))
                self._driver = None
        self.written += len(batch)
        self._metrics.count("log_rows_written", len(batch))

    async def _compact_rollups(self) -> None:
        """Move the keyed roll-ups' compaction mark on by the hours that are finished, if no
        other instance is doing it (heliox.db.rollups). Failures wait for the next interval."""
        self._compact_at = time.monotonic() + COMPACT_INTERVAL
        try:
            moved = await self._bounded(compact_rollups(self._engine, time.time()))
        except Exception as exc:
            log.warning("request log roll-up compaction failed: %s", str(exc) or type(exc).__name__)
            return
        if moved:
            log.info("compacted request log roll-ups up to %s", moved.isoformat())

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
            self._driver = (await conn.get_raw_connection()).driver_connection
            present = {(rid, ts) for rid, ts in await conn.execute(query)}
            self._driver = None
        if not present:
            return rows
        return [row for row, ts in zip(rows, times, strict=True) if (row[1], ts) not in present]

    async def _spill(self, rows: list[LogRow]) -> None:
        """Append `rows` to the spill file, in a thread: encoding them and the fsync take about
        12 ms per 1,000 rows, which every request of the process would wait for on the loop."""
        error = await asyncio.to_thread(self._append_to_spill, rows)
        if error is not None:
            # Disk full or the folder unwritable: nowhere left to keep them. Counted and shown on
            # /health; the writer goes on (the database may take the next batches).
            self.lost += len(rows)
            self._metrics.count("log_rows_lost", len(rows))
            log.error("request log rows lost: cannot write %s (%s)", self._spill_path, error)
            return
        self._metrics.count("log_rows_spilled", len(rows))

    def _append_to_spill(self, rows: list[LogRow]) -> OSError | None:
        try:
            self._spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self._spill_path.open("a", encoding="utf-8") as fh:
                lines = CoreShare(YIELD_BUDGET).rows(rows)
                fh.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in lines)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            return exc
        return None

    def _adopt_orphans(self) -> None:
        """Append the spill files of exited processes to this one's, to be replayed from here.

        A file is claimed by renaming it (atomic: of two processes, one wins); a claim whose
        owner dies before it is appended is adopted like any other. A row adopted twice is
        written once: the replay skips rows the database already holds.
        """
        self._adopt_at = time.monotonic() + ADOPT_INTERVAL
        folder = self._spill_path.parent
        me = os.getpid()
        try:
            names = [entry.name for entry in os.scandir(folder)]
        except OSError:
            return
        for name in names:
            match = _SPILL_NAME.match(name)
            if match is None or name == self._spill_path.name or _alive(int(match[1]), me):
                continue
            claim = folder / f"logs-spill-{me}-adopting-{match[1]}.jsonl"
            try:
                os.rename(folder / name, claim)
                data = claim.read_bytes()
            except OSError:
                continue  # another process took it
            try:
                with self._spill_path.open("ab") as fh:
                    fh.write(data if not data or data.endswith(b"\n") else data + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                log.error("cannot adopt the request log spill file %s: %s", claim, exc)
                continue
            claim.unlink(missing_ok=True)
            log.info("adopted %d spilled request log rows from %s", data.count(b"\n"), name)

    async def _replay_spill(self) -> bool:
        """Write the spill file back; True when it is gone (written, or nothing to do).

        BATCH_SIZE rows at a time, each read and parsed in a thread: while the database is still
        failing a retry costs one such chunk, not the whole file. (Read whole on the event loop,
        every retry stalled every request for as long as the file had grown: after 30 s of
        outage at 14,000 requests a second, 0.9 s at the p99.) The queue may be spilled
        (appended to the file) while a replay is under way: lines past the size the file had
        when it began are left for the next replay.
        """
        try:
            size = self._spill_path.stat().st_size  # as cheap as the exists() that led here
        except FileNotFoundError:
            self._replayed_to = 0
            return True
        except OSError as exc:
            log.warning("cannot read the request log spill file: %s", exc)
            return False
        offset = self._replayed_to if self._replayed_to <= size else 0
        replayed = 0
        try:
            while offset < size:
                try:
                    chunk = await asyncio.to_thread(self._read_spill, offset)
                except OSError as exc:
                    log.warning("cannot read the request log spill file: %s", exc)
                    raise
                if chunk.unreadable:
                    # Counted once: _read_spill has taken them out of the file.
                    self.lost += chunk.unreadable
                    self._metrics.count("log_rows_lost", chunk.unreadable)
                    size -= chunk.removed
                    if not chunk.rows:
                        continue  # a chunk of nothing else: what followed it is at offset now
                if chunk.end == offset:
                    break  # nothing past offset: the file is shorter than it was
                if chunk.rows:
                    missing = await self._bounded(self._not_yet_written(chunk.rows))
                    await self._bounded(self._write(missing))
                replayed += len(chunk.rows)
                offset = chunk.end
                # A replay of many chunks, each call short of a flush interval, would never let
                # _bounded see the queue: under load it filled and dropped rows.
                await self._relieve_queue()
        except Exception as exc:
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            # The next replay starts after the chunks already written, so none is written twice
            # (a process that adopts the file replays it whole and skips the rows already in).
            self._replayed_to = offset
            log.debug("spill replay deferred: %s", str(exc) or type(exc).__name__)
            return False
        finally:
            self._metrics.count("log_rows_replayed", replayed)
        await asyncio.to_thread(self._drop_spill_head, offset)
        self._replayed_to = 0
        return True

    def _read_spill(self, offset: int) -> SpillChunk:
        """Up to BATCH_SIZE rows of the spill file from byte `offset` (run in a thread). Lines
        that cannot be read (one cut short by a crash mid-append) are taken out of the file."""
        with self._spill_path.open("rb") as fh:
            fh.seek(offset)
            lines = list(itertools.islice(fh, BATCH_SIZE))
        end = offset + sum(map(len, lines))
        # Rows spilled by an earlier version lack the columns added since (all nullable).
        width = len(COLUMNS)
        rows: list[LogRow] = []
        kept: list[bytes] = []
        unreadable = 0
        for line in CoreShare(YIELD_BUDGET).rows(lines):
            try:
                rows.append(_widen(tuple(json.loads(line)), width))
            except ValueError:
                unreadable += bool(line.strip())
                continue
            kept.append(line if line.endswith(b"\n") else line + b"\n")
        if not unreadable:
            return SpillChunk(rows, end, 0, 0)
        good = b"".join(kept)
        self._splice_spill(offset, good, end)
        return SpillChunk(rows, offset + len(good), unreadable, end - offset - len(good))

    def _drop_spill_head(self, offset: int) -> None:
        """The spill file loses its first `offset` bytes (and is gone when nothing is left).
        When it cannot be rewritten it is replayed again whole; rows already in are skipped."""
        self._splice_spill(0, b"", offset)

    def _splice_spill(self, head: int, middle: bytes, rest: int) -> None:
        """The spill file becomes its first `head` bytes, then `middle`, then its bytes from
        `rest` on (and is gone when that is nothing), copied SPILL_COPY_BLOCK bytes at a time:
        the file holds an outage's worth of rows, and read whole (as it was) a rewrite took as
        much memory as the file was large."""
        staged = self._spill_path.with_name(self._spill_path.name + ".tmp")
        try:
            with self._spill_path.open("rb") as src, staged.open("wb") as dst:
                while head > 0 and (block := src.read(min(SPILL_COPY_BLOCK, head))):
                    dst.write(block)
                    head -= len(block)
                dst.write(middle)
                src.seek(rest)
                shutil.copyfileobj(src, dst, SPILL_COPY_BLOCK)
                empty = dst.tell() == 0
                dst.flush()
                os.fsync(dst.fileno())
            if empty:
                staged.unlink()
                self._spill_path.unlink()
            else:
                os.replace(staged, self._spill_path)
        except FileNotFoundError:
            staged.unlink(missing_ok=True)  # gone already: nothing to rewrite
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
            log.warning("cannot rewrite the request log spill file: %s", exc)


class SpillChunk(NamedTuple):
    rows: list[LogRow]
    end: int  # the file offset after them
    unreadable: int  # lines that could not be read, now out of the file
    removed: int  # the bytes that went with them


# Roll-ups (heliox.db.rollups) are added to in the batch's own transaction, so analytics read
# from them always agree with the rows: one upsert per group of the batch and grain.
_PG_UPSERTS = {g: rollups.upsert_sql(g, postgres=True) for g in rollups.GRAINS}
_SQLITE_UPSERTS = {g: rollups.upsert_sql(g, postgres=False) for g in rollups.GRAINS}
_TS, _TENANT, _KEY, _ROUTE, _STATUS, _CACHE, _LATENCY, _UPSTREAM, _BYTES_IN, _BYTES_OUT = (
    COLUMNS.index(name)
    for name in (
        "ts",
        "tenant_id",
        "key_id",
        "route_name",
        "status",
        "cache_status",
        "latency_ms",
        "upstream_latency_ms",
        "bytes_in",
        "bytes_out",
    )
)


# Read in the batch's transaction after its rows are in (on SQLite: with the write lock held),
# FOR SHARE on PostgreSQL: a compaction waits for this batch to commit (heliox.db.rollups).
_PG_MARK = f"SELECT upto FROM {rollups.MARKS_TABLE} WHERE name = $1 FOR SHARE"
_SQLITE_MARK = f"SELECT upto FROM {rollups.MARKS_TABLE} WHERE name = ?"


def _rollup_params(
    batch: list[LogRow], compacted: float, share: CoreShare
) -> list[tuple[rollups.Grain, list[tuple[Any, ...]]]]:
    fields = (
        (
            row[_TS].timestamp() if isinstance(row[_TS], datetime) else float(row[_TS]),
            row[_ROUTE],
            row[_TENANT],
            row[_KEY],
            row[_STATUS],
            row[_CACHE],
            row[_LATENCY],
            row[_UPSTREAM],
            row[_BYTES_IN],
            row[_BYTES_OUT],
        )
        for row in share.rows(batch)
    )
    groups = rollups.aggregate(fields, compacted)
    return [(g, rollups.upsert_params(g, groups[g])) for g in rollups.GRAINS]


async def compact_rollups(engine: AsyncEngine, now: float) -> datetime | None:
    """One compaction run: returns the new mark, or None when there was nothing to do (or
    another instance holds the mark)."""
    postgres = engine.dialect.name == "postgresql"
    lock = " FOR UPDATE" if postgres else ""
    async with engine.begin() as conn:
        if postgres:
            # One compactor at a time (the others skip); FOR UPDATE below then waits for the
            # batches in flight, which hold the mark FOR SHARE, and new batches wait for it.
            if not await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": COMPACT_LOCK_KEY}
            ):
                return None
            await conn.execute(text(f"SET LOCAL lock_timeout = '{COMPACT_LOCK_TIMEOUT}'"))
        else:
            # Take SQLite's write lock first: a read that later writes could find its snapshot
            # overtaken by another writer's commit.
            await conn.execute(
                text(f"UPDATE {rollups.MARKS_TABLE} SET upto = upto WHERE name = :name"),
                {"name": rollups.COMPACTED_MARK},
            )
        mark = await conn.scalar(
            text(f"SELECT upto FROM {rollups.MARKS_TABLE} WHERE name = :name{lock}"),
            {"name": rollups.COMPACTED_MARK},
        )
        if mark is None:
            return None
        target = rollups.compacted_target(now, float(mark))
        if target <= mark:
            return None
        for g in rollups.GRAINS:
            if g.keyed and g.seconds > rollups.MINUTE:
                await conn.execute(
                    text(rollups.compact_sql(g, postgres=postgres)),
                    {"since": int(mark), "until": int(target)},
                )
        await conn.execute(
            text(f"UPDATE {rollups.MARKS_TABLE} SET upto = :upto WHERE name = :name"),
            {"upto": int(target), "name": rollups.COMPACTED_MARK},
        )
    return datetime.fromtimestamp(target, UTC)


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
    memo = _ts_memo  # read once: the writer's thread and a replay may both be formatting
    if memo[0] != second:
        memo = _ts_memo = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))
    return f"{memo[1]}.{micros:06d}"


_ts_memo: tuple[int, str] = (-1, "")


def _alive(pid: int, me: int) -> bool:
    if pid == me:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _widen(row: LogRow, width: int) -> LogRow:
    return row + (None,) * (width - len(row)) if len(row) < width else row


class CoreShare:
    """One write's giving the CPU away: every SHARE_CORE_EVERY rows, until the time spent
    waiting for it back reaches the budget or one give-away finds the core saturated (see
    SHARE_CORE_EVERY)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.left = budget
        self._clock = clock

    def rows(self, rows: Iterable[T]) -> Iterator[T]:
        """`rows`, giving the CPU away between every SHARE_CORE_EVERY of them while budget is
        left. Consumed in the writer's threads, one iterator at a time."""
        for i, row in enumerate(rows):
            if i and i % SHARE_CORE_EVERY == 0 and self.left > 0:
                start = self._clock()
                _yield_core()
                waited = self._clock() - start
                self.left = 0.0 if waited >= SATURATED_WAIT else self.left - waited
            yield row


# sched_yield(2): returns at once when nothing else is waiting for the CPU; not on Windows.
_yield_core: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


def _as_records(batch: list[LogRow]) -> list[tuple[Any, ...]]:
    return [_as_record(row) for row in batch]


def _as_record(row: LogRow) -> tuple[Any, ...]:
    ts = row[0]
    if not isinstance(ts, datetime):
        ts = datetime.fromtimestamp(float(ts), UTC)
    return (ts, *row[1:])
