"""Alembic environment: async engine, URL from the caller or from DATABASE_URL.

The URL is taken, first found wins, from `config.attributes["url"]` (heliox.db.migrate), the
`sqlalchemy.url` option, then the environment through heliox.config (DATABASE_URL; empty means the
default SQLite file ./heliox.db). `config.attributes["connection"]` may carry an open sync
connection to migrate on instead.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection, make_url

from heliox.config import load_settings
from heliox.db.engine import make_engine
from heliox.db.models import Base

config = context.config
target_metadata = Base.metadata

# Only the CLI (an alembic.ini on disk) configures logging; embedded callers keep their own.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    overrides: dict[str, object] = {}
    if not os.environ.get("DATABASE_URL") and os.environ.get("DATABASE_URL_SYNC"):
        # The documented `export DATABASE_URL_SYNC=postgresql://…` form; the async driver is used.
        overrides["database_url"] = os.environ["DATABASE_URL_SYNC"]
    # Migrating needs no admin credentials: skip production-mode secret checks.
    settings = load_settings(deployment_mode="demo", **overrides)
    return settings.effective_database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
    config.attributes["current_revision"] = context.get_context().get_current_revision()


async def run_async_migrations(url: str) -> None:
    # No statement timeout: a migration may rewrite a large table.
    engine = make_engine(url, pool_size=1, statement_timeout_ms=None)
    try:
        async with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode drops and recreates tables; with foreign keys on, dropping `tenants`
                # would cascade-delete every API key. Checked again after the migration instead.
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.run_sync(do_run_migrations)
            await connection.commit()
            if sqlite:
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"migration left rows with dangling foreign keys: {broken}")
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    url = make_url(database_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    asyncio.run(run_async_migrations(database_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
