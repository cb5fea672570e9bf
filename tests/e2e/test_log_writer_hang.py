"""A PostgreSQL that hangs (a table lock held by another session: every COPY into request_logs
waits) loses no request-log row: under load, and when the gateway is stopped during the hang.

Expected (docs/hardening.md, "Hanging is worse than refusing"): a batch not written within
LOG_WRITE_TIMEOUT goes to the spill file, the queue never fills, the shutdown spills what is
queued well before the kill, and the next process replays the file it finds.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.harness import Gateway, Upstream, gateway_env, start_gateway, wait_until

QUEUE_SIZE = 2000
SHUTDOWN_TIMEOUT = 2


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextmanager
def request_logs_locked(url: str) -> Iterator[None]:
    """ACCESS EXCLUSIVE on request_logs from another session until the block ends: inserts,
    COPY and reads of the table wait, as against a server that stopped answering."""
    locked, release, failed = threading.Event(), threading.Event(), []

    async def hold() -> None:
        conn = await asyncpg.connect(_dsn(url))
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE request_logs IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except Exception as exc:
            failed.append(exc)
            locked.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert locked.wait(10) and not failed, failed
        yield
    finally:
        release.set()
        thread.join(10)


async def _rows(url: str, key_id: int) -> int:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM request_logs WHERE key_id=$1", key_id))
    finally:
        await conn.close()


def rows_for(url: str, key_id: int) -> int:
    return asyncio.run(_rows(url, key_id))


def rows_when_settled(url: str, key_id: int, expected: int) -> int:
    """The key's row count once it reaches `expected`, or after a minute without reaching it."""
    with suppress(TimeoutError):
        wait_until(lambda: rows_for(url, key_id) >= expected, 60, 0.5)
    return rows_for(url, key_id)


def new_key(gw: Gateway, name: str) -> tuple[int, str]:
    with gw.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": name}).json()
        created = admin.post(
            "/admin/keys",
            json={"tenant_id": tenant["id"], "name": name, "rate_limit_rps": 100000,
                  "rate_limit_burst": 100000},
        ).json()  # fmt: skip
    return int(created["id"]), str(created["key"])


class Load:
    """Client threads sending cached GETs with one key until `stop()`; counts the answers."""

    def __init__(self, url: str, key: str, clients: int = 4) -> None:
        self.url, self.key = url, key
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": self.key}) as c:
            while not self._stop.is_set():
                try:
                    status = c.get("/g/demo/items").status_code
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    return
                if status != 200:
                    self.errors.append(str(status))
                    return
                with self._lock:
                    self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.fixture(scope="module")
def hang_env(
    upstream: Upstream, pg_database: str, redis_server: str, redis_module_prefix: str
) -> dict[str, str]:
    return gateway_env(
        upstream, database_url=pg_database, redis_url=redis_server,
        extra={"REDIS_KEY_PREFIX": redis_module_prefix, "LOG_QUEUE_SIZE": str(QUEUE_SIZE),
               "LOG_WRITE_TIMEOUT": "1", "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)},
    )  # fmt: skip


def test_a_hung_database_under_load_loses_no_log_row(
    tmp_path: Path, hang_env: dict[str, str], pg_database: str
) -> None:
    env = {**hang_env, "HELIOX_SPILL_DIR": str(tmp_path / "spill")}
    gw = start_gateway(tmp_path, env)
    try:
        key_id, key = new_key(gw, "hang-load")
        with request_logs_locked(pg_database):
            load = Load(gw.url, key)
            # More answers during the hang than the queue holds: before, the excess was dropped.
            try:
                wait_until(lambda: load.answered >= 2 * QUEUE_SIZE or load.errors, 120, 0.05)
                health = httpx.get(gw.url + "/health", timeout=10).json()
            finally:
                load.stop()
        assert load.errors == []
        assert rows_when_settled(pg_database, key_id, load.answered) == load.answered
        with gw.admin() as admin:
            metrics = admin.get("/metrics").json()
        assert metrics["events"].get("log_queue_dropped", 0) == 0
        assert metrics["events"].get("log_rows_spilled", 0) > 0  # the hang was seen, and spilled
        assert health["log_rows_lost"] == 0
        assert httpx.get(gw.url + "/health", timeout=10).json()["log_rows_lost"] == 0
    finally:
        assert gw.proc.stop() == 0, gw.proc.output()


def test_sigterm_during_a_hang_spills_the_queue_and_the_next_process_replays_it(
    tmp_path: Path, hang_env: dict[str, str], pg_database: str
) -> None:
    spill = tmp_path / "spill"
    env = {**hang_env, "HELIOX_SPILL_DIR": str(spill)}
    (tmp_path / "first").mkdir()
    gw = start_gateway(tmp_path / "first", env)
    try:
        key_id, key = new_key(gw, "hang-sigterm")
        with request_logs_locked(pg_database):
            load = Load(gw.url, key, clients=2)
            wait_until(lambda: load.answered >= 300 or load.errors, 60, 0.05)
            load.stop()
            assert load.errors == []
            gw.proc.popen.send_signal(signal.SIGTERM)
            try:
                # Hang detector: the kill comes SHUTDOWN_TIMEOUT + 15 s after the signal; the
                # queue is spilled within a write timeout or two.
                status = gw.proc.popen.wait(timeout=SHUTDOWN_TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                pytest.fail("the gateway was still flushing its log queue into a hung database")
            assert status == 0, gw.proc.output()
    finally:
        gw.proc.stop()
    # Nothing reached the table during the hang; the rows wait in the spill file, and the next
    # process started on the same folder replays them.
    (tmp_path / "second").mkdir()
    nxt = start_gateway(tmp_path / "second", env)
    try:
        assert rows_when_settled(pg_database, key_id, load.answered) == load.answered
        assert list(spill.glob("logs-spill-*")) == []
    finally:
        assert nxt.proc.stop() == 0, nxt.proc.output()
