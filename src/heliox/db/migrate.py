"""Run the Alembic migrations in code: `heliox db upgrade` and gateway start-up.

Needs no alembic.ini, so it works from an installed wheel. On PostgreSQL several gateway processes
may start at once; an advisory lock held on a dedicated connection lets one migrate while the
others wait, then find the database already at head. Then, still under the lock, the request
log partitions of the coming days are created (heliox.db.partitions).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from heliox.db.engine import is_postgres_url, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number shared by every Heliox process: the ASCII bytes of "heliox".
PG_MIGRATION_LOCK_KEY = 0x68656C696F78
# A process that waits longer than this for another one's migration gives up with an error.
PG_MIGRATION_LOCK_TIMEOUT_MS = 600_000

Progress = Callable[[str], None]
# Alembic keeps its running context in module globals: one command at a time per process.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(url: str) -> Config:
    """An Alembic Config for the packaged migrations, aimed at `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    # Through attributes, not the ini option: configparser would choke on '%' in passwords.
    cfg.attributes["url"] = url
    return cfg


async def upgrade_database(url: str, *, progress: Progress | None = None) -> None:
    """Bring the database at `url` to the latest revision (`alembic upgrade head`)."""
    report = progress or _silent
    if is_postgres_url(url):
        async with _pg_migration_lock(url, report):
            report("migrating database …")
            revision = await _finish_in_thread(_upgrade, url)
            await _create_partitions(url)
    else:
        report("migrating database …")
        revision = await _finish_in_thread(_upgrade, url)
    report(f"database at revision {revision}")


async def _create_partitions(url: str) -> None:
    """The request log partitions of the coming days (heliox.db.partitions), at every start:
    a process that starts can write today's and the next days' rows to their own partition."""
    from heliox.db.partitions import ensure_partitions

    engine = make_engine(url, pool_size=1, statement_timeout_ms=None)
    try:
        async with engine.connect() as conn:
            await ensure_partitions(conn, datetime.now(UTC))
    finally:
        await engine.dispose()


def upgrade_database_sync(url: str, progress: Progress | None = None) -> None:
    """The same for synchronous callers (the CLI); must not run inside an event loop."""
    asyncio.run(upgrade_database(url, progress=progress))


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _upgrade(url: str) -> str:
    cfg = alembic_config(url)
    with _ALEMBIC_LOCK:
        command.upgrade(cfg, "head")
    return str(cfg.attributes.get("current_revision") or head_revision())


async def _finish_in_thread(func: Callable[[str], str], url: str) -> str:
    # env.py calls asyncio.run, hence a worker thread with no running loop. A thread cannot be
    # stopped: on cancellation wait for it, so the migration lock is not released mid-migration.
    task = asyncio.ensure_future(asyncio.to_thread(func, url))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _silent(_message: str) -> None:
    return None


@asynccontextmanager
async def _pg_migration_lock(url: str, report: Progress) -> AsyncIterator[None]:
    # A session-level lock on its own connection: released when it unlocks or the process dies.
    engine = make_engine(url, pool_size=1, statement_timeout_ms=None)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
            )
            if not got:
                report("waiting for another process to finish migrating …")
                await conn.execute(text(f"SET lock_timeout = {PG_MIGRATION_LOCK_TIMEOUT_MS}"))
                await conn.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
                )
            try:
                yield
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
                )
    finally:
        await engine.dispose()
