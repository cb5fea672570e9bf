"""Real gateway and upstream processes, shared per test module to keep the suite fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.faults import OwnRedis, TcpProxy
from tests.e2e.harness import Gateway, Upstream, gateway_env, gateway_in


@pytest.fixture(scope="module")
def embedded_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    """Embedded mode: SQLite file and in-process state (no DATABASE_URL, no REDIS_URL)."""
    env = gateway_env(upstream)
    env.pop("SECRET_KEY")
    env["ADMIN_API_KEY"] = "admin-secret-key"  # demo mode: the documented default admin key
    with gateway_in(workdir, "embedded", env) as gw:
        yield gw


@pytest.fixture(scope="module")
def own_redis(workdir: Path, redis_server: str) -> Iterator[OwnRedis]:
    """A Redis server of the module's own, which its tests may stop, pause or flush."""
    r = OwnRedis(workdir)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def pg_proxy(pg_server: str) -> Iterator[TcpProxy]:
    """A proxy in front of PostgreSQL that a module's tests may cut or hang."""
    proxy = TcpProxy("127.0.0.1", 5432)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def production_env(
    upstream: Upstream, pg_database: str, redis_server: str, redis_module_prefix: str
) -> dict[str, str]:
    return gateway_env(
        upstream,
        database_url=pg_database,
        redis_url=redis_server,
        extra={"REDIS_KEY_PREFIX": redis_module_prefix},
    )


@pytest.fixture(scope="module")
def pg_gateway(workdir: Path, production_env: dict[str, str]) -> Iterator[Gateway]:
    """Production mode: PostgreSQL + Redis."""
    with gateway_in(workdir, "production-a", production_env) as gw:
        yield gw


@pytest.fixture(scope="module")
def pg_gateway_b(
    workdir: Path, production_env: dict[str, str], pg_gateway: Gateway
) -> Iterator[Gateway]:
    """A second instance sharing PostgreSQL and Redis with `pg_gateway`."""
    with gateway_in(workdir, "production-b", production_env) as gw:
        yield gw


@pytest.fixture(params=["embedded", "production"])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """Each test using this runs against both modes."""
    name = "embedded_gateway" if request.param == "embedded" else "pg_gateway"
    gw: Gateway = request.getfixturevalue(name)
    return gw
