"""Shared fixtures: real PostgreSQL and Redis servers, isolated per test session or test.

On a machine without them the tests that need them skip; with HELIOX_REQUIRE_SERVICES=1 (set by
.ci/run) a missing service fails the run instead.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.cluster_support import LocalCluster
    from tests.e2e.harness import Upstream

PG_ADMIN_URL = os.environ.get(
    "HELIOX_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HELIOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("HELIOX_REQUIRE_SERVICES", "") not in ("", "0", "false")


def pytest_collection_finish(session: pytest.Session) -> None:
    # What collection imported (the app, SQLAlchemy, hypothesis: ~170k objects) lives for the whole
    # run. Frozen out of the collector's sight, the full collection after each test below costs
    # ~10 ms instead of ~300 ms.
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Leaks fail the test that caused them. A socket, file or event loop left open warns
    (ResourceWarning, an error in this suite) only when collected; objects in a reference cycle
    are collected whenever the collector next runs, which would blame a random later test.
    The collection before a test catches what a module's fixtures left at their teardown.

    What survives a test's collection is frozen too, so each collection looks only at what was
    made since the previous one: without that, the full collections grew with the heap and took
    most of the suite's time by its second half (84 % of the pytest process in one profile)."""
    gc.collect()
    yield
    gc.collect()
    gc.freeze()


def _unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} is not reachable ({exc!r})"
    if REQUIRE_SERVICES:
        pytest.fail(msg + "; HELIOX_REQUIRE_SERVICES is set, so this is a failure", pytrace=False)
    pytest.skip(msg)


def _dsn_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin DSN of a reachable PostgreSQL server (skips or fails when there is none)."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    return PG_ADMIN_URL


def make_pg_database(admin_dsn: str) -> tuple[str, str]:
    """Create a fresh empty database; returns (name, sqlalchemy async URL)."""
    import asyncpg

    name = "heliox_t_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return name, _dsn_for(name).replace("postgresql://", "postgresql+asyncpg://", 1)


def drop_pg_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@contextmanager
def fresh_pg_database(admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database as a postgresql+asyncpg:// URL, dropped on leaving."""
    name, url = make_pg_database(admin_dsn)
    try:
        yield url
    finally:
        drop_pg_database(admin_dsn, name)


# One database each way: per test where a test needs it empty, per module where the module's
# gateway processes (module-scoped, so needing a module-scoped database) share one.
@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, as a postgresql+asyncpg:// URL."""
    with fresh_pg_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database shared by one test module, as a postgresql+asyncpg:// URL."""
    with fresh_pg_database(pg_server) as url:
        yield url


@pytest.fixture(scope="session")
def redis_server() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        _unavailable("Redis", exc)
    return REDIS_URL


@contextmanager
def fresh_redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix nobody else uses; its keys are deleted on leaving."""
    import redis

    prefix = f"heliox-test:{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# As with the databases: per test, and per module for the module-scoped gateway processes.
@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    with fresh_redis_prefix(redis_server) as prefix:
        yield prefix


@pytest.fixture(scope="module")
def redis_module_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix no other test module uses; its keys are deleted after the module."""
    with fresh_redis_prefix(redis_server) as prefix:
        yield prefix


@pytest.fixture
async def redis_client(redis_server: str) -> AsyncIterator[object]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server)
    try:
        yield client
    finally:
        await client.aclose()


# --- a real Redis Cluster (three masters, three replicas) on loopback, once per session ------


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of this session's own (tests/cluster_support.py), torn down after it.
    Skips without redis-server/redis-cli (fails with HELIOX_REQUIRE_SERVICES=1)."""
    from tests.cluster_support import LocalCluster

    for attempt in range(3):
        try:
            cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
        except RuntimeError as exc:
            _unavailable("Redis Cluster", exc)
        try:
            cluster.start()
            break
        except Exception:
            cluster.stop()
            if attempt == 2:
                raise
            # A port found free may have been taken before the node bound it: other ports.
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    """A key prefix no other test uses on the cluster; its keys are deleted afterwards."""
    prefix = f"heliox-test:{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        redis_cluster.delete_prefix(prefix)


@pytest.fixture
async def redis_cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[object]:
    """Heliox's cluster client (with its breaker and budget) for the session's cluster."""
    from heliox.state.redis_cluster import ClusterRedis

    client = ClusterRedis.from_url(redis_cluster.url, max_connections=64)
    try:
        yield client
    finally:
        await client.aclose()


# --- real example upstream, shared by the end-to-end and browser tests -----------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for one test module's processes (their logs and SQLite files)."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def upstream(workdir: Path) -> Iterator[Upstream]:
    """The example upstream as a real process, for one test module."""
    from tests.e2e.harness import start_upstream

    up = start_upstream(workdir)
    try:
        yield up
    finally:
        up.proc.stop()
