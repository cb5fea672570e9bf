"""Alembic migrations: upgrade, downgrade, no drift from the models, CLI, concurrent start-up."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

import heliox
from heliox.config import load_settings
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import (
    MIGRATIONS_DIR,
    PG_MIGRATION_LOCK_KEY,
    alembic_config,
    head_revision,
    upgrade_database,
    upgrade_database_sync,
)
from heliox.db.models import Base
from heliox.db.partitions import DEFAULT_PARTITION, day_of, partition_name
from heliox.db.rollups import ROLLUP_TABLES
from heliox.seed import seed

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = "0010"
TABLES = {
    "tenants",
    "api_keys",
    "cache_policies",
    "routes",
    "config_version",
    "config_changes",
    "request_logs",
    "abuse_events",
    "audit_log",
    *ROLLUP_TABLES,
}


def _is_partition(name: str) -> bool:
    return day_of(name) is not None or name == DEFAULT_PARTITION


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    # The daily partitions of request_logs (PostgreSQL) are tables no model describes.
    return [
        d
        for d in compare_metadata(context, Base.metadata)
        if not (isinstance(d, tuple) and _is_partition(_table_of(d)))
    ]


def _table_of(d: tuple[Any, ...]) -> str:
    if d[0] == "remove_table":
        return str(d[1].name)
    if d[0] == "remove_index":
        return str(d[1].table.name)
    return ""


def _tables(connection: Connection) -> set[str]:
    return {name for name in inspect(connection).get_table_names() if not _is_partition(name)}


async def _inspect(url: str) -> tuple[set[str], list[object], str | None]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(_tables)
            diff = await conn.run_sync(_diff)
            revision = None
            if "alembic_version" in tables:
                revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return tables, diff, revision
    finally:
        await engine.dispose()


async def test_upgrade_matches_models_and_downgrade_removes_everything(db_url: str) -> None:
    messages: list[str] = []
    await upgrade_database(db_url, progress=messages.append)

    tables, diff, revision = await _inspect(db_url)
    assert tables == TABLES | {"alembic_version"}
    assert diff == []
    assert revision == head_revision() == HEAD
    assert messages == ["migrating database …", f"database at revision {HEAD}"]

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "base")
    tables, _, revision = await _inspect(db_url)
    assert tables == {"alembic_version"}
    assert revision is None

    # Upgrading again after a full downgrade works and is a no-op the second time.
    await upgrade_database(db_url)
    await upgrade_database(db_url)
    tables, diff, revision = await _inspect(db_url)
    assert tables == TABLES | {"alembic_version"}
    assert diff == []
    assert revision == HEAD


async def test_cache_with_cookies_is_added_off_to_existing_policies(db_url: str) -> None:
    """0002 on a database with policies: each gets cache_with_cookies off, and a row written
    without the column (an instance still on 0001 during a rolling upgrade) gets it off too."""
    cfg = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, cfg, "0001")
    engine = make_engine(db_url, pool_size=1)
    try:
        settings = load_settings(deployment_mode="demo", database_url="", redis_url="")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO cache_policies (name, mode, ttl_seconds,"
                    " stale_while_revalidate_seconds, stale_if_error_seconds, vary_headers,"
                    " cacheable_methods, cacheable_statuses, max_object_bytes, shared,"
                    " negative_cache, created_at, updated_at) VALUES ('before', 'policy', 60,"
                    " 0, 0, '[]', '[]', '[]', 1, false, true, CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                )
            )
        await upgrade_database(db_url)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO cache_policies (name, mode, ttl_seconds,"
                    " stale_while_revalidate_seconds, stale_if_error_seconds, vary_headers,"
                    " cacheable_methods, cacheable_statuses, max_object_bytes, shared,"
                    " negative_cache, created_at, updated_at) VALUES ('during', 'policy', 60,"
                    " 0, 0, '[]', '[]', '[]', 1, false, true, CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                )
            )
            rows = await conn.execute(
                text("SELECT name, cache_with_cookies FROM cache_policies ORDER BY id")
            )
            assert [(name, bool(value)) for name, value in rows] == [
                ("before", False),
                ("during", False),
            ]
        await seed(make_session_factory(engine), settings)  # the models write the column
        await asyncio.to_thread(command.downgrade, cfg, "0001")
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("cache_policies")}
            )
            policies = await conn.scalar(text("SELECT count(*) FROM cache_policies"))
    finally:
        await engine.dispose()
    assert "cache_with_cookies" not in columns
    assert policies == 2 + 3  # the downgrade keeps the rows, seeded ones included


ENGINE_COLUMNS = ("keep_seconds", "lock_timeout_seconds", "lock_age_seconds", "max_variants")
INSERT_0006_POLICY = (
    "INSERT INTO cache_policies (name, mode, ttl_seconds, stale_while_revalidate_seconds,"
    " stale_if_error_seconds, vary_headers, cacheable_methods, cacheable_statuses,"
    " max_object_bytes, shared, negative_cache, cache_with_cookies, created_at, updated_at)"
    " VALUES (:name, 'policy', 60, 0, 0, '[]', '[]', '[]', 1, false, true, false,"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)


async def test_cache_engine_columns_get_their_defaults_on_existing_policies(db_url: str) -> None:
    """0007 on a database with policies: each gets keep 600 s and 8 variants, and a null lock
    timeout and age (the gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE, which deployments may
    have set), as does a row written without the columns (an instance still on 0006 during a
    rolling upgrade); a number is stored as given; the downgrade drops the columns and keeps
    the rows."""
    cfg = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, cfg, "0006")
    engine = make_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(INSERT_0006_POLICY), {"name": "before"})
        await upgrade_database(db_url)
        async with engine.begin() as conn:
            await conn.execute(text(INSERT_0006_POLICY), {"name": "during"})
            await conn.execute(
                text(
                    "UPDATE cache_policies SET lock_timeout_seconds = 0.25, lock_age_seconds = 12.5"
                    " WHERE name = 'during'"
                )
            )
            lock_columns = await conn.run_sync(
                lambda c: {
                    col["name"]: (col["nullable"], col["default"])
                    for col in inspect(c).get_columns("cache_policies")
                    if col["name"] in ("lock_timeout_seconds", "lock_age_seconds")
                }
            )
            rows = await conn.execute(
                text(
                    "SELECT name, keep_seconds, lock_timeout_seconds, lock_age_seconds,"
                    " max_variants FROM cache_policies ORDER BY id"
                )
            )
            assert [tuple(row) for row in rows] == [
                ("before", 600, None, None, 8),
                ("during", 600, 0.25, 12.5, 8),
            ]
        await asyncio.to_thread(command.downgrade, cfg, "0006")
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("cache_policies")}
            )
            names = list(await conn.scalars(text("SELECT name FROM cache_policies ORDER BY id")))
            revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert lock_columns == {
        "lock_timeout_seconds": (True, None),
        "lock_age_seconds": (True, None),
    }
    assert revision == "0006"
    assert not set(ENGINE_COLUMNS) & columns
    assert "cache_with_cookies" in columns  # only 0007's columns go
    assert names == ["before", "during"]


INSERT_0009_LOG = (
    "INSERT INTO request_logs (ts, request_id, route_name, method, path, status, cache_status,"
    " latency_ms, bytes_in, bytes_out, client_ip, user_agent)"
    " VALUES (:ts, :rid, 'demo', 'GET', '/x', 429, '', 1.0, 0, 0, '127.0.0.1', 't')"
)
DETAIL_COLUMNS = {"cache_key", "upstream_status", "refused_by", "refusal"}


def _detail_schema(c: Connection, table: str) -> tuple[set[str], set[str], set[str]]:
    """`table`'s 0010 log columns, its request-id indexes, and audit_log's columns."""
    insp = inspect(c)
    columns = {col["name"] for col in insp.get_columns(table)} & DETAIL_COLUMNS
    indexes = {
        str(ix["name"]) for ix in insp.get_indexes(table) if ix["column_names"] == ["request_id"]
    }
    audit = {col["name"] for col in insp.get_columns("audit_log")}
    return columns, indexes, audit


async def test_request_detail_columns_come_and_go_keeping_the_rows(db_url: str) -> None:
    """0010 on a database with log and audit rows: the new columns are null on them, the
    request-id index exists (on PostgreSQL on the partitioned parent and in each day's
    partition, which also has the columns); the downgrade drops all of it and keeps the rows."""
    cfg = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, cfg, "0009")
    postgres = db_url.startswith("postgresql")
    ts = datetime.now(UTC) if postgres else datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    engine = make_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(INSERT_0009_LOG), {"ts": ts, "rid": "before"})
            await conn.execute(
                text(
                    "INSERT INTO audit_log (ts, actor, action, entity_type, entity_id)"
                    " VALUES (CURRENT_TIMESTAMP, 'cli', 'tenant.create', 'tenant', '1')"
                )
            )
        await upgrade_database(db_url)
        partition = partition_name(datetime.now(UTC).date()) if postgres else "request_logs"
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE request_logs SET refused_by = 'daily_quota', upstream_status = 200"
                    " WHERE request_id = 'before'"
                )
            )
            for table in ("request_logs", partition):
                columns, indexes, audit = await conn.run_sync(_detail_schema, table)
                assert columns == DETAIL_COLUMNS, table
                assert len(indexes) == 1, (table, indexes)
            assert "client_ip" in audit
            assert await conn.scalar(text("SELECT client_ip FROM audit_log")) is None
            assert tuple(
                (
                    await conn.execute(text("SELECT refused_by, upstream_status FROM request_logs"))
                ).one()
            ) == ("daily_quota", 200)
        await asyncio.to_thread(command.downgrade, cfg, "0009")
        async with engine.connect() as conn:
            columns, indexes, audit = await conn.run_sync(_detail_schema, "request_logs")
            ids = list(await conn.scalars(text("SELECT request_id FROM request_logs")))
            audits = await conn.scalar(text("SELECT count(*) FROM audit_log"))
            revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert (columns, indexes, "client_ip" in audit) == (set(), set(), False)
    assert (ids, audits, revision) == (["before"], 1, "0009")


async def test_compare_detects_drift(db_url: str) -> None:
    """The no-diff check above could not pass vacuously: a missing index is reported."""
    await upgrade_database(db_url)
    engine = make_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_request_logs_ts"))
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_index"]


def _alembic_cli() -> list[str]:
    script = Path(sys.executable).with_name("alembic")
    return [str(script)] if script.exists() else [sys.executable, "-m", "alembic"]


def _run_alembic(*args: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [*_alembic_cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "DATABASE_URL_SYNC", "REDIS_URL")
    }
    env.update(extra)
    return env


def test_alembic_cli_upgrade_head_reads_database_url(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "cli.db"
    env = _clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{db_file}")

    _run_alembic("upgrade", "head", cwd=REPO_ROOT, env=env)
    current = _run_alembic("current", cwd=REPO_ROOT, env=env)

    assert f"{HEAD} (head)" in current
    tables, diff, _ = asyncio.run(_inspect(f"sqlite+aiosqlite:///{db_file}"))
    assert tables == TABLES | {"alembic_version"}
    assert diff == []


def test_alembic_cli_defaults_to_heliox_db_in_working_directory(tmp_path: Path) -> None:
    _run_alembic(
        "-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head", cwd=tmp_path, env=_clean_env()
    )

    tables, _, revision = asyncio.run(_inspect(f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"))
    assert revision == HEAD
    assert tables >= TABLES


def test_migrations_ship_inside_the_package() -> None:
    assert Path(heliox.__file__).parent / "db" / "migrations" == MIGRATIONS_DIR
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()


def test_sync_upgrade_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    db_file = tmp_path / "data" / "deep" / "gateway.db"
    messages: list[str] = []

    upgrade_database_sync(f"sqlite+aiosqlite:///{db_file}", progress=messages.append)

    assert db_file.is_file()
    assert messages[-1] == f"database at revision {HEAD}"
    # The URL given wins over the environment's default file.
    assert not (tmp_path / "heliox.db").exists()


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres_all_succeed(pg_url: str) -> None:
    logs: list[list[str]] = [[], [], []]

    await asyncio.gather(*(upgrade_database(pg_url, progress=log.append) for log in logs))

    tables, diff, revision = await _inspect(pg_url)
    assert tables == TABLES | {"alembic_version"}
    assert diff == []
    assert revision == HEAD
    for log in logs:
        assert log[-1] == f"database at revision {HEAD}"


@pytest.mark.postgres
def test_concurrent_upgrades_from_separate_processes(pg_url: str) -> None:
    """Gateway processes starting together: each waits its turn, none fails."""
    code = (
        "import sys; from heliox.db.migrate import upgrade_database_sync; "
        "upgrade_database_sync(sys.argv[1], progress=print)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_clean_env(),
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    for out in outputs:
        assert out.splitlines()[-1] == f"database at revision {HEAD}"
    tables, diff, revision = asyncio.run(_inspect(pg_url))
    assert tables == TABLES | {"alembic_version"}
    assert diff == []
    assert revision == HEAD


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _advisory_waiters(conn: asyncpg.Connection) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(count)


@pytest.mark.postgres
async def test_upgrade_waits_for_the_migration_lock(pg_url: str) -> None:
    holder = await asyncpg.connect(_asyncpg_dsn(pg_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", PG_MIGRATION_LOCK_KEY)
        messages: list[str] = []
        task = asyncio.create_task(upgrade_database(pg_url, progress=messages.append))

        deadline = asyncio.get_running_loop().time() + 20
        while await _advisory_waiters(holder) == 0:
            assert not task.done(), task.exception() if task.done() else None
            assert asyncio.get_running_loop().time() < deadline, "upgrade never waited on the lock"
            await asyncio.sleep(0.02)

        assert not task.done()
        assert messages == ["waiting for another process to finish migrating …"]
        tables = await holder.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0

        await holder.execute("SELECT pg_advisory_unlock($1)", PG_MIGRATION_LOCK_KEY)
        await asyncio.wait_for(task, timeout=30)
        assert messages[-1] == f"database at revision {HEAD}"
    finally:
        await holder.close()
    assert (await _inspect(pg_url))[2] == HEAD


RECREATE_TENANTS = f"""
from alembic import op

revision = "9999"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", recreate="always"):
        pass


def downgrade() -> None:
    pass
"""


async def test_sqlite_batch_migration_keeps_rows_of_child_tables(tmp_path: Path) -> None:
    """SQLite batch mode drops and recreates a table; that must not cascade to api_keys."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'heliox.db'}"
    await upgrade_database(url)
    engine = make_engine(url)
    try:
        settings = load_settings(deployment_mode="demo", database_url="", redis_url="")
        await seed(make_session_factory(engine), settings)
        await engine.dispose()

        scripts = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
        (scripts / "versions" / "9999_recreate_tenants.py").write_text(RECREATE_TENANTS)
        cfg = alembic_config(url)
        cfg.set_main_option("script_location", str(scripts))
        await asyncio.to_thread(command.upgrade, cfg, "head")

        async with engine.connect() as conn:
            keys = await conn.scalar(text("SELECT count(*) FROM api_keys"))
            revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert revision == "9999"
    assert keys == 4
