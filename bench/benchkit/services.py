"""PostgreSQL and Redis for the gateway's production mode: a throwaway database and key prefix."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

# Where a run's throwaway database and Redis key prefix go (bench/README.md).
DEFAULT_PG = os.environ.get(
    "HELIOX_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS = os.environ.get("HELIOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class ProductionBackends:
    """A fresh database and a unique Redis key prefix; `drop` removes both."""

    pg_admin_dsn: str
    redis_url: str
    db_name: str
    redis_prefix: str

    @property
    def database_url(self) -> str:
        base, _, _ = self.pg_admin_dsn.rpartition("/")
        return f"{base}/{self.db_name}".replace("postgresql://", "postgresql+asyncpg://", 1)

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.redis_prefix,
        }

    def drop(self) -> list[str]:
        """Best effort; returns what could not be cleaned up."""
        problems: list[str] = []
        # A loaded machine can make one attempt time out; a leftover database is worse than a wait.
        for attempt in range(3):
            try:
                asyncio.run(
                    _pg(self.pg_admin_dsn, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
                )
                break
            except Exception as exc:
                if attempt == 2:
                    problems.append(f"database {self.db_name}: {exc!r}")
                time.sleep(1)
        try:
            _delete_prefix(self.redis_url, self.redis_prefix)
        except Exception as exc:
            problems.append(f"Redis keys {self.redis_prefix}*: {exc!r}")
        return problems


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _delete_prefix(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def unavailable(pg_admin_dsn: str, redis_url: str) -> str | None:
    """None when both answer, else why not."""
    try:
        asyncio.run(_pg(pg_admin_dsn, "SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {pg_admin_dsn} is not reachable ({type(exc).__name__}: {exc})"
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"Redis at {redis_url} is not reachable ({type(exc).__name__}: {exc})"
    return None


def create(pg_admin_dsn: str, redis_url: str) -> ProductionBackends:
    tag = uuid.uuid4().hex[:10]
    backends = ProductionBackends(
        pg_admin_dsn, redis_url, f"heliox_bench_{tag}", f"heliox-bench:{tag}:"
    )
    asyncio.run(_pg(pg_admin_dsn, f'CREATE DATABASE "{backends.db_name}"'))
    return backends


def drop(backends: ProductionBackends | None, say: Callable[[str], None]) -> None:
    """Remove a run's database and Redis keys, if it made any, saying what could not be removed."""
    if backends is not None:
        for problem in backends.drop():
            say(f"cleanup: {problem}")
