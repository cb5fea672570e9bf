"""Database fixtures: every test here runs on SQLite and on PostgreSQL unless it says otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from heliox.config import Settings, load_settings
from heliox.db.engine import make_engine, make_session_factory
from heliox.db.migrate import upgrade_database

EXAMPLE_UPSTREAM = "http://127.0.0.1:8001"


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "heliox.db")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def migrated_url(db_url: str) -> str:
    await upgrade_database(db_url)
    return db_url


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(migrated_url, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_session_factory(engine)


def make_settings(upstream: str = EXAMPLE_UPSTREAM) -> Settings:
    return load_settings(
        deployment_mode="demo", database_url="", redis_url="", example_upstream_url=upstream
    )


@pytest.fixture
def settings() -> Settings:
    return make_settings()
