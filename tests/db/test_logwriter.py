"""The request-log writer on both databases: rows arrive intact, a full queue is counted, and
rows that could not be written are spilled and replayed, never lost."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from heliox.db import logwriter, rollups
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.logwriter import (
    BATCH_SIZE,
    COPY_ROWS,
    SHARE_CORE_EVERY,
    SPILL_COPY_BLOCK,
    LogWriter,
)
from heliox.db.migrate import upgrade_database
from heliox.db.models import RequestLog
from heliox.metrics import Metrics

# cache_key, upstream_status, refused_by, refusal (0010), all null.
NEW_IN_0010 = (None, None, None, None)


def _row(i: int, ts: float) -> tuple[object, ...]:
    return (ts, f"r-{i}", 1, 2, 3, "demo", "GET", f"/items/{i}", 200, "HIT", 1.5, None, 0, 10,
            "127.0.0.1", "ua <script>", None, None, None, None, None)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/logs.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    url = db_url
    await upgrade_database(url)
    eng = make_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


def _writer(engine: AsyncEngine, tmp_path: Path, queue_size: int = 1000) -> LogWriter:
    return LogWriter(
        engine,
        is_postgres=engine.dialect.name == "postgresql",
        metrics=Metrics(),
        queue_size=queue_size,
        spill_path=tmp_path / "spill.jsonl",
    )


async def test_rows_arrive_intact(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = _writer(engine, tmp_path)
    ts = 1_795_000_000.123456
    n = 2 * COPY_ROWS + 88  # three COPYs on PostgreSQL, the last one partial
    for i in range(n):
        writer.enqueue(_row(i, ts + i))
    await writer.flush()
    async with make_session_factory(engine)() as session:
        rows = (await session.scalars(select(RequestLog).order_by(RequestLog.id))).all()
        in_window = await session.scalar(
            select(func.count())
            .select_from(RequestLog)
            .where(RequestLog.ts >= datetime.fromtimestamp(ts + 100, UTC))
        )
    assert [r.request_id for r in rows] == [f"r-{i}" for i in range(n)]
    first = rows[0]
    assert first.ts == datetime.fromtimestamp(ts, UTC)
    assert (first.request_id, first.path, first.cache_status) == ("r-0", "/items/0", "HIT")
    assert first.upstream_latency_ms is None and first.user_agent == "ua <script>"
    assert in_window == n - 100  # timestamps compare correctly in SQL too


async def test_a_batch_is_written_whole_or_not_at_all(engine: AsyncEngine, tmp_path: Path) -> None:
    """A row the database refuses, past the first COPY of the batch: none of the batch's rows
    stay, and all of them go to the spill file (nothing half-written, nothing lost)."""
    writer = _writer(engine, tmp_path)
    n = 2 * COPY_ROWS
    for i in range(n):
        row = _row(i, time.time())
        writer.enqueue((*row[:8], None, *row[9:]) if i == n - 1 else row)  # status NOT NULL
    await writer.flush()
    async with make_session_factory(engine)() as session:
        assert await session.scalar(select(func.count()).select_from(RequestLog)) == 0
        for g in rollups.GRAINS:
            assert await session.scalar(text(f"SELECT count(*) FROM {g.table}")) == 0
    spilled = (tmp_path / "spill.jsonl").read_text().splitlines()
    assert len(spilled) == n
    assert writer._metrics.events["log_write_errors"] == 1


def test_the_writers_threads_give_the_cpu_away_every_few_rows_until_their_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    calls: list[int] = []
    seen: list[int] = []

    def yield_core(wait: float) -> None:
        calls.append(len(seen))
        now[0] += wait  # how long the others kept the CPU

    rows = range(5 * SHARE_CORE_EVERY + 5)
    monkeypatch.setattr(logwriter, "_yield_core", lambda: yield_core(0.0))
    seen.extend(logwriter.CoreShare(0.01, clock=lambda: now[0]).rows(rows))
    assert seen == list(rows)  # an idle core: every give-away free, all of them made
    assert calls == [n * SHARE_CORE_EVERY for n in range(1, 6)]

    seen.clear()
    calls.clear()
    monkeypatch.setattr(logwriter, "_yield_core", lambda: yield_core(0.0004))
    share = logwriter.CoreShare(0.001, clock=lambda: now[0])
    seen.extend(share.rows(rows))
    # A busy core: three give-aways of 0.4 ms spend the 1 ms; the rest runs at the fair share.
    assert seen == list(rows)
    assert calls == [n * SHARE_CORE_EVERY for n in range(1, 4)]
    assert list(share.rows(range(2 * SHARE_CORE_EVERY))) == list(range(2 * SHARE_CORE_EVERY))
    assert len(calls) == 3  # the budget is the write's: a later part of it gives nothing away

    seen.clear()
    calls.clear()
    monkeypatch.setattr(logwriter, "_yield_core", lambda: yield_core(logwriter.SATURATED_WAIT))
    seen.extend(logwriter.CoreShare(1.0, clock=lambda: now[0]).rows(rows))
    # A saturated core: one give-away that waits a whole time slice ends them, budget or not.
    assert seen == list(rows) and calls == [SHARE_CORE_EVERY]


async def test_a_full_batch_on_an_idle_core_gives_the_cpu_away_all_through(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of BATCH_SIZE is not a writer behind its load (at 8,000 requests a second the
    queue reaches it every quarter second): what stops the giving away is its cost."""
    yields: list[None] = []
    monkeypatch.setattr(logwriter, "_yield_core", lambda: yields.append(None))
    # Whatever the test machine's pauses: a give-away here is never slow enough to stop them.
    monkeypatch.setattr(logwriter, "SATURATED_WAIT", 60.0)
    monkeypatch.setattr(logwriter, "YIELD_BUDGET", 60.0)
    writer = _writer(engine, tmp_path, queue_size=BATCH_SIZE * 2)
    for i in range(BATCH_SIZE):
        writer.enqueue(_row(i, time.time()))
    await writer.flush()
    assert writer.written == BATCH_SIZE
    assert len(yields) >= (BATCH_SIZE - 1) // SHARE_CORE_EVERY


async def test_full_queue_is_counted_not_silent(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = _writer(engine, tmp_path, queue_size=100)
    for i in range(130):
        writer.enqueue(_row(i, time.time()))
    assert writer.pending == 100
    assert writer._metrics.events["log_queue_dropped"] == 30


async def test_a_small_queue_wakes_the_writer_before_it_fills(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOG_QUEUE_SIZE below a full batch: the writer wakes at a quarter of the queue, not at
    BATCH_SIZE rows or the interval, so a healthy database loses nothing between intervals."""
    monkeypatch.setattr(logwriter, "FLUSH_INTERVAL", 60.0)  # only the early wake can write
    writer = _writer(engine, tmp_path, queue_size=100)
    writer.start()
    try:
        for burst in range(1, 9):  # 200 rows in all, twice the queue's bound
            for i in range(25):
                writer.enqueue(_row(burst * 100 + i, time.time()))

            def written(n: int = burst * 25) -> bool:
                return writer.written >= n

            await _until(written)
    finally:
        await writer.stop()
    assert (writer.written, writer.lost) == (200, 0)
    assert await _count(engine) == 200


async def test_a_slow_write_spills_the_queue_as_soon_as_it_is_half_full(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a write is outstanding the queue is spilled when it reaches half its bound, not at
    the next watch FLUSH_INTERVAL later: a LOG_QUEUE_SIZE of 400 lost 21,780 of ~61,000 rows in
    5 s of load through the served gateway, the database healthy, before."""
    monkeypatch.setattr(logwriter, "FLUSH_INTERVAL", 60.0)  # only the queue's own signal counts
    writer = _writer(engine, tmp_path, queue_size=100)  # wakes at 25, spills at 50
    release = asyncio.Event()
    write = writer._write

    async def slow_write(batch: list[tuple[object, ...]]) -> None:
        await release.wait()
        await write(batch)

    writer._write = slow_write  # type: ignore[method-assign]
    writer.start()
    try:
        for i in range(25):
            writer.enqueue(_row(i, time.time()))
        await _until(lambda: writer.pending == 0)  # the first write took them, and waits
        for i in range(25, 175):  # one and a half times the bound, during that write
            writer.enqueue(_row(i, time.time()))
            if writer.pending >= 50:
                await _until(lambda: writer.pending < 50)  # spilled, not left to fill
        assert writer._metrics.events["log_queue_dropped"] == 0
        assert writer._metrics.events["log_rows_spilled"] >= 100
        release.set()
        await _until(lambda: writer.written == 175 and not (tmp_path / "spill.jsonl").exists())
    finally:
        release.set()
        await writer.stop()
    assert writer.lost == 0
    assert await _count(engine) == 175


async def test_unwritable_rows_are_spilled_then_replayed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    broken = make_engine(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none/x.db")
    writer = _writer(broken, tmp_path)
    writer._engine = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    writer._is_postgres = True
    for i in range(40):
        writer.enqueue(_row(i, time.time()))
    await writer.flush()
    spill = tmp_path / "spill.jsonl"
    assert spill.exists() and len(spill.read_text().splitlines()) == 40
    await broken.dispose()
    await writer._engine.dispose()

    healthy = _writer(engine, tmp_path)  # same spill file: replays it first
    healthy.enqueue(_row(99, time.time()))
    await healthy.flush()
    assert not spill.exists()
    async with make_session_factory(engine)() as session:
        assert await session.scalar(select(func.count()).select_from(RequestLog)) == 41


async def test_while_the_database_fails_a_retry_reads_one_chunk_of_the_spill_off_the_loop(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The spill file grows with an outage: a retry that read and parsed all of it on the event
    loop stalled every request for longer each time."""
    writer = _writer(engine, tmp_path)
    n = 2 * BATCH_SIZE + 7
    await writer._spill([_row(i, time.time()) for i in range(n)])
    reads: list[tuple[int, bool]] = []
    read_spill = writer._read_spill

    def spy(offset: int) -> logwriter.SpillChunk:
        reads.append((offset, threading.current_thread() is threading.main_thread()))
        return read_spill(offset)

    writer._read_spill = spy  # type: ignore[method-assign]
    await _retry_with_the_database_down(writer, 3)
    assert reads == [(0, False)] * 3  # one chunk per retry, each in a thread
    assert await _count(engine) == 0

    reads.clear()
    writer._retry_at = 0.0
    await writer.flush()
    assert [offset > 0 for offset, _ in reads] == [False, True, True]  # three chunks in order
    assert not any(on_loop for _, on_loop in reads)
    assert not (tmp_path / "spill.jsonl").exists()
    assert await _count(engine) == n
    assert writer._metrics.events["log_rows_replayed"] == n


async def test_requests_logged_during_a_long_replay_are_spilled_not_dropped(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A database back after an outage, under load: the replay of many chunks takes seconds,
    and the queue, never seen by the write timeout's watch (each call is short), filled up and
    dropped rows."""
    writer = _writer(engine, tmp_path, queue_size=100)  # spilled at 50
    n = 2 * BATCH_SIZE + 7
    await writer._spill([_row(i, time.time()) for i in range(n)])
    read_spill = writer._read_spill
    arrived = 0

    def with_traffic(offset: int) -> logwriter.SpillChunk:
        nonlocal arrived
        if arrived < 180:  # each of three chunks' time brings more than half the queue's bound
            for _ in range(60):
                writer.enqueue(_row(n + arrived, time.time()))
                arrived += 1
        return read_spill(offset)

    writer._read_spill = with_traffic  # type: ignore[method-assign]
    for _ in range(5):
        writer._retry_at = 0.0
        await writer.flush()
        if not (tmp_path / "spill.jsonl").exists() and not writer.pending:
            break
    assert writer.lost == 0 and writer._metrics.events["log_queue_dropped"] == 0
    assert arrived == 180
    assert await _count(engine) == n + arrived  # every row: the spilled and the arrived


async def test_a_replay_cut_off_after_its_first_chunk_resumes_after_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The file is left as it is (rewriting it without the chunks written copied what was left
    of it, an outage's worth, at every failure); the next replay starts after them."""
    writer = _writer(engine, tmp_path)
    spill = tmp_path / "spill.jsonl"
    n = BATCH_SIZE + 5
    await writer._spill([_row(i, time.time()) for i in range(n)])
    size = spill.stat().st_size
    calls = 0
    real = writer._not_yet_written

    async def second_refused(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("the database went down")
        return await real(rows)

    writer._not_yet_written = second_refused  # type: ignore[method-assign]
    await writer.flush()
    assert spill.stat().st_size == size  # not rewritten
    assert await _count(engine) == BATCH_SIZE
    assert writer._metrics.events["log_rows_replayed"] == BATCH_SIZE
    writer._retry_at = 0.0
    await writer.flush()
    assert calls == 3  # the second replay read only the chunk after the one written
    assert await _count(engine) == n and not spill.exists()
    assert writer._metrics.events["log_rows_replayed"] == n


async def test_replaying_a_batch_that_did_commit_writes_it_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A connection cut just after a commit fails the write though the rows are in: the batch is
    spilled, and its replay must not write them twice."""
    writer = _writer(engine, tmp_path)
    now = time.time()
    committed = [_row(i, now + i / 1000) for i in range(10)]
    for row in committed:
        writer.enqueue(row)
    await writer.flush()
    await writer._spill(committed + [_row(i, now + i / 1000) for i in range(10, 15)])
    await writer.flush()
    assert not (tmp_path / "spill.jsonl").exists()
    async with make_session_factory(engine)() as session:
        ids = (await session.scalars(select(RequestLog.request_id))).all()
    assert sorted(ids) == sorted(f"r-{i}" for i in range(15))


async def test_replay_tells_apart_rows_that_share_a_client_request_id(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Clients choose their X-Request-Id and some send the same one every time: a spilled row
    is known by its id and its time, so one never written is not taken for one that was."""
    writer = _writer(engine, tmp_path)
    now = time.time()
    rows = [(now + i / 1000, "same-id", *_row(i, 0)[2:]) for i in range(10)]
    for row in rows[:4]:
        writer.enqueue(row)
    await writer.flush()
    await writer._spill(rows)  # the first four did commit, the other six did not
    await writer.flush()
    assert not (tmp_path / "spill.jsonl").exists()
    async with make_session_factory(engine)() as session:
        paths = (await session.scalars(select(RequestLog.path))).all()
    assert sorted(paths) == sorted(f"/items/{i}" for i in range(10))


async def test_rows_spilled_before_the_error_column_are_replayed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = _writer(engine, tmp_path)
    await writer._spill([_row(1, time.time())[:16]])  # as written by a version without `error`
    writer.enqueue((*_row(2, time.time())[:16], "upstream 10.0.0.1:80 timed out", *NEW_IN_0010))
    await writer.flush()
    async with make_session_factory(engine)() as session:
        rows = (await session.execute(select(RequestLog.request_id, RequestLog.error))).all()
    assert sorted(rows) == [("r-1", None), ("r-2", "upstream 10.0.0.1:80 timed out")]


async def test_request_detail_fields_arrive_and_older_spilled_rows_get_them_null(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """0010's fields (cache key, upstream status, refusing limit with its numbers, as JSON) are
    written by the COPY / executemany; a spill file of the previous version (17 fields a row),
    replayed by this one (as after an upgrade, or adopted from an exited process), gets them
    null."""
    writer = _writer(engine, tmp_path)
    now = time.time()
    await writer._spill([_row(1, now)[:17]])
    refusal = json.dumps({"quota": 1, "window_seconds": 86400, "retry_after": 3600})
    hit = (*_row(2, now)[:17], "c:" + "ab" * 16, None, None, None)
    miss = (*_row(3, now)[:17], "c:" + "cd" * 16, 304, None, None)
    refused = (*_row(4, now)[:8], 429, "", *_row(4, now)[10:17], None, None, "daily_quota", refusal)
    for row in (hit, miss, refused):
        writer.enqueue(row)
    await writer.flush()
    assert not (tmp_path / "spill.jsonl").exists()
    async with make_session_factory(engine)() as session:
        rows = (
            await session.execute(
                select(
                    RequestLog.request_id,
                    RequestLog.cache_key,
                    RequestLog.upstream_status,
                    RequestLog.refused_by,
                    RequestLog.refusal,
                ).order_by(RequestLog.request_id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("r-1", None, None, None, None),
        ("r-2", "c:" + "ab" * 16, None, None, None),
        ("r-3", "c:" + "cd" * 16, 304, None, None),
        ("r-4", None, None, "daily_quota", json.loads(refusal)),
    ]


async def test_a_line_cut_short_is_counted_lost_once(engine: AsyncEngine, tmp_path: Path) -> None:
    """A crash mid-append leaves a partial line: one row lost, however often the replay of the
    file around it has to wait for the database."""
    writer = _writer(engine, tmp_path)
    await writer._spill([_row(i, time.time()) for i in range(3)])
    spill = tmp_path / "spill.jsonl"
    with spill.open("a") as fh:
        fh.write('[1795000000.5,"r-cut",1,')
    await _retry_with_the_database_down(writer, 3)
    assert writer.lost == 1
    writer._retry_at = 0.0
    await writer.flush()
    assert not spill.exists()
    assert (writer.lost, await _count(engine)) == (1, 3)
    assert writer._metrics.events["log_rows_lost"] == 1


async def test_a_chunk_of_nothing_but_cut_lines_does_not_end_the_replay(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = _writer(engine, tmp_path)
    spill = tmp_path / "spill.jsonl"
    spill.write_text('[1795000000.5,"r-cut",1,\n' * BATCH_SIZE)
    await writer._spill([_row(i, time.time()) for i in range(3)])
    await writer.flush()
    assert not spill.exists()
    assert (writer.lost, await _count(engine)) == (BATCH_SIZE, 3)


async def test_rewriting_a_large_spill_file_takes_a_block_of_memory_not_the_file(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A spill file holds an outage's worth of rows (gigabytes at a high rate). Dropping its
    replayed head, or taking a cut line out of it, read the whole file into memory."""
    writer = _writer(engine, tmp_path)
    spill = tmp_path / "spill.jsonl"
    line = json.dumps(list(_row(0, 1_795_000_000.5))).encode() + b"\n"
    per_block = -(-SPILL_COPY_BLOCK // len(line))
    with spill.open("wb") as fh:
        fh.write(b'[1795000000.5,"r-cut",1,\n')  # cut short by a crash mid-append
        for _ in range(48):
            fh.write(line * per_block)  # 48 blocks of whole lines
    size = spill.stat().st_size
    tracemalloc.start()
    try:
        chunk = writer._read_spill(0)  # takes the cut line out of the file
        _, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held, _ = tracemalloc.get_traced_memory()  # the chunk's rows, still referenced
        writer._drop_spill_head(chunk.end)
        _, drop_peak = tracemalloc.get_traced_memory()
        drop_peak -= held
    finally:
        tracemalloc.stop()
    assert (chunk.unreadable, len(chunk.rows)) == (1, BATCH_SIZE - 1)
    assert spill.stat().st_size == size - chunk.removed - (BATCH_SIZE - 1) * len(line)
    with spill.open("rb") as fh:
        assert fh.readline() == line
    # The file is 48 blocks; reading a chunk holds its rows parsed (about 4 blocks' worth).
    assert read_peak < 8 * SPILL_COPY_BLOCK, read_peak
    assert drop_peak < 4 * SPILL_COPY_BLOCK, drop_peak  # a block being read, the last written


def test_sqlite_timestamps_match_the_datetime_format() -> None:
    # The per-second memo must spell every instant exactly as datetime + strftime would,
    # including microsecond rounding up into the next second.
    import random

    from heliox.db.logwriter import _sqlite_ts

    rng = random.Random(7)
    instants = [rng.uniform(1.7e9, 1.8e9) for _ in range(20000)]
    instants += [1_780_000_000.9999996, 1_780_000_000.0000004, 1_780_000_001.0]
    for t in sorted(instants) + instants:
        assert _sqlite_ts(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def _retry_with_the_database_down(writer: LogWriter, times: int) -> None:
    """`times` flushes, each retrying the spill file, while the database refuses every call."""

    async def refused(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        raise ConnectionRefusedError("the database is down")

    real = writer._not_yet_written
    writer._not_yet_written = refused  # type: ignore[method-assign]
    try:
        for _ in range(times):
            writer._retry_at = 0.0
            await writer.flush()
    finally:
        writer._not_yet_written = real  # type: ignore[method-assign]


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _count(engine: AsyncEngine) -> int:
    async with make_session_factory(engine)() as session:
        return int(await session.scalar(select(func.count()).select_from(RequestLog)) or 0)


async def test_a_write_that_hangs_is_spilled_after_the_write_timeout(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    import asyncio

    writer = LogWriter(
        engine,
        is_postgres=engine.dialect.name == "postgresql",
        metrics=Metrics(),
        queue_size=1000,
        spill_path=tmp_path / "spill.jsonl",
        write_timeout=0.2,
    )
    real_write = writer._write
    hung = asyncio.Event()

    async def hanging(batch: list[tuple[object, ...]]) -> None:
        hung.set()
        await asyncio.Event().wait()  # a server that never answers

    writer._write = hanging  # type: ignore[method-assign]
    for i in range(30):
        writer.enqueue(_row(i, time.time()))
    await writer.flush()  # returns: the timeout, not the database, ends the call
    assert hung.is_set()
    assert len((tmp_path / "spill.jsonl").read_text().splitlines()) == 30
    assert writer._metrics.events["log_write_errors"] == 1
    writer._write = real_write  # type: ignore[method-assign]
    writer._retry_at = 0.0  # the database answers again
    await writer.flush()
    assert not (tmp_path / "spill.jsonl").exists()
    assert await _count(engine) == 30


async def test_an_unwritable_spill_is_counted_as_lost(engine: AsyncEngine, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    writer = LogWriter(
        engine,
        is_postgres=engine.dialect.name == "postgresql",
        metrics=Metrics(),
        queue_size=1000,
        spill_path=blocker / "spill.jsonl",  # its folder cannot exist: as a full disk
    )
    await writer._spill([_row(i, time.time()) for i in range(7)])
    assert writer.lost == 7
    assert writer._metrics.events["log_rows_lost"] == 7


def _no_such_pid() -> int:
    # Process ids stay below pid_max: no process has this one.
    return int(Path("/proc/sys/kernel/pid_max").read_text())


async def test_spill_files_of_exited_processes_are_adopted_and_replayed(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    import os

    dead_pid = _no_such_pid()
    folder = tmp_path / "spill"
    orphan = LogWriter(
        engine, is_postgres=engine.dialect.name == "postgresql", metrics=Metrics(),
        queue_size=1000, spill_path=folder / f"logs-spill-{dead_pid}.jsonl",
    )  # fmt: skip
    await orphan._spill([_row(i, time.time()) for i in range(12)])
    alive = folder / f"logs-spill-{os.getppid()}.jsonl"  # a live process's file stays its own
    alive.write_text("")
    writer = LogWriter(
        engine, is_postgres=engine.dialect.name == "postgresql", metrics=Metrics(),
        queue_size=1000, spill_path=folder / f"logs-spill-{os.getpid()}.jsonl",
    )  # fmt: skip
    writer._adopt_orphans()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [alive.name, f"logs-spill-{os.getpid()}.jsonl"]
    )
    await writer.flush()
    assert await _count(engine) == 12
    assert sorted(p.name for p in folder.iterdir()) == [alive.name]
