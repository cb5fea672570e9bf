"""Async SQLAlchemy engines for SQLite (embedded mode) and PostgreSQL (production mode)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_SECONDS = 10.0
PG_POOL_TIMEOUT_SECONDS = 10.0
# Server-side connections are dropped by proxies and failovers long before this; recycle first.
PG_POOL_RECYCLE_SECONDS = 1800
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000


# Python 3.11's sqlite3 binds None through its adapter lookup, which asks the protocol type for
# `__adapt__` and so formats and discards an AttributeError for every None bound. A cache hit's
# request-log row binds five (of 21 values), its roll-ups more: the bare insert of such a row
# took 3.0 µs, 2.0 µs with this (about 11,000 instructions a row, valgrind). An adapter
# registered for None is found first; an empty dict's `get` returns None for anything, in C.
# Process-wide, like every sqlite3 adapter, and harmless elsewhere: None still binds as NULL.
_AS_NULL: dict[None, None] = {}  # stays empty
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", _AS_NULL.get))


def is_sqlite_url(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgres_url(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def make_engine(
    url: str | URL,
    *,
    pool_size: int = 10,
    statement_timeout_ms: int | None = DEFAULT_STATEMENT_TIMEOUT_MS,
    connect_timeout: float = PG_CONNECT_TIMEOUT_SECONDS,
    echo: bool = False,
) -> AsyncEngine:
    """An engine tuned for the backend: WAL + busy timeout on SQLite, a bounded pool on PostgreSQL.

    `statement_timeout_ms=None` lifts PostgreSQL's server-side statement timeout (migrations).
    """
    sa_url = make_url(url)
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        _ensure_sqlite_folder(sa_url)
        engine = create_async_engine(
            sa_url,
            echo=echo,
            pool_size=pool_size,
            # aiosqlite hands this to sqlite3.connect: how long a writer waits for the lock.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
        return engine
    if backend == "postgresql":
        server_settings = {"application_name": "heliox"}
        if statement_timeout_ms is not None:
            server_settings["statement_timeout"] = str(int(statement_timeout_ms))
        connect_args: dict[str, Any] = {
            "timeout": connect_timeout,
            "server_settings": server_settings,
        }
        return create_async_engine(
            sa_url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=PG_POOL_TIMEOUT_SECONDS,
            pool_recycle=PG_POOL_RECYCLE_SECONDS,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
    raise ValueError(
        f"unsupported database URL scheme {sa_url.drivername!r}: "
        "use postgresql+asyncpg:// or sqlite+aiosqlite://"
    )


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Objects stay readable after commit: handlers return them after the transaction ends.
    return async_sessionmaker(engine, expire_on_commit=False)


def _sqlite_file(sa_url: URL) -> Path | None:
    database = sa_url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _ensure_sqlite_folder(sa_url: URL) -> None:
    path = _sqlite_file(sa_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets the log writer append while the admin API reads; it persists in the file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Safe with WAL: a crash loses at most the last transactions, never corrupts the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
