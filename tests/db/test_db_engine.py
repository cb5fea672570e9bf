"""Engine settings per backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from heliox.db.engine import make_engine, make_session_factory
from heliox.db.models import Tenant


async def test_sqlite_engine_creates_folder_and_sets_pragmas(tmp_path: Path) -> None:
    db_file = tmp_path / "a" / "b" / "heliox.db"
    engine = make_engine(f"sqlite+aiosqlite:///{db_file}")
    try:
        async with engine.connect() as conn:
            journal = await conn.scalar(text("PRAGMA journal_mode"))
            busy = await conn.scalar(text("PRAGMA busy_timeout"))
            fks = await conn.scalar(text("PRAGMA foreign_keys"))
    finally:
        await engine.dispose()
    assert db_file.is_file()
    assert (journal, busy, fks) == ("wal", 5000, 1)


def test_none_binds_as_null_through_the_registered_adapter(tmp_path: Path) -> None:
    # The engine module registers an adapter for None (the request log binds many per row, and
    # Python 3.11's lookup without one raises and discards an AttributeError for each): it must
    # be there, and None must still arrive as SQL NULL, in a plain sqlite3 connection too.
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)]("anything") is None
    conn = sqlite3.connect(tmp_path / "nulls.db")
    try:
        conn.execute("CREATE TABLE t (a TEXT, b INTEGER, c REAL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, None, None), ("x", None, 1.5)])
        rows = conn.execute("SELECT typeof(a), typeof(b), typeof(c), a, b, c FROM t").fetchall()
    finally:
        conn.close()
    assert rows == [
        ("null", "null", "null", None, None, None),
        ("text", "null", "real", "x", None, 1.5),
    ]


@pytest.mark.postgres
async def test_postgres_engine_pool_and_timeouts(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=3)
    try:
        async with engine.connect() as conn:
            timeout = await conn.scalar(text("SHOW statement_timeout"))
            app = await conn.scalar(text("SHOW application_name"))
        pool = engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._pre_ping is True
        assert pool._max_overflow == 3  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    assert timeout == "30s"
    assert app == "heliox"


@pytest.mark.postgres
async def test_postgres_statement_timeout_can_be_lifted(pg_url: str) -> None:
    engine = make_engine(pg_url, statement_timeout_ms=None)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "0"
    finally:
        await engine.dispose()


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql\\+asyncpg"):
        make_engine("mysql+aiomysql://u@h/db")


async def test_session_objects_stay_readable_after_commit(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        async with make_session_factory(engine)() as session:
            tenant = Tenant(name="Readable", description="after commit")
            session.add(tenant)
            await session.commit()
            # With expire_on_commit this attribute access would need I/O and fail outside greenlet.
            assert tenant.name == "Readable"
            assert tenant.id > 0
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced(migrated_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    from heliox.db.models import ApiKey

    engine = make_engine(migrated_url)
    try:
        async with make_session_factory(engine)() as session:
            session.add(ApiKey(tenant_id=424242, name="orphan", key_hash="0" * 64, key_prefix="x"))
            with pytest.raises(IntegrityError):
                await session.commit()
    finally:
        await engine.dispose()
