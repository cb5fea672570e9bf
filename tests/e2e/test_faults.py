"""Dependency outages with real processes: Redis killed under traffic, PostgreSQL cut off.

Expected (docs/hardening.md, "Faults"): keep serving, /health says degraded, nothing lost,
recovery without a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.faults import OwnRedis, TcpProxy
from tests.e2e.harness import ACME, Gateway, Upstream, gateway_env, gateway_in, wait_until

# The suite cuts PostgreSQL for a few seconds; set HELIOX_PG_OUTAGE_SECONDS=30 for the long run.
PG_OUTAGE_SECONDS = float(os.environ.get("HELIOX_PG_OUTAGE_SECONDS", "4"))


def _health(gw: Gateway) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(gw.url + "/health", timeout=10).json()
    return health


@pytest.fixture(scope="module")
def redis_fault_gateway(
    workdir: Path, upstream: Upstream, pg_database: str, own_redis: OwnRedis
) -> Iterator[Gateway]:
    env = gateway_env(upstream, database_url=pg_database, redis_url=own_redis.url)
    with gateway_in(workdir, "redis-fault", env) as gw:
        yield gw


def test_redis_killed_under_traffic(redis_fault_gateway: Gateway, own_redis: OwnRedis) -> None:
    gw = redis_fault_gateway
    with gw.admin() as admin:
        closed = admin.post(
            "/admin/routes",
            json={"name": "closed-route", "path_pattern": "/*",
                  "upstream_url": gw.env["EXAMPLE_UPSTREAM_URL"], "fail_mode": "closed"},
        )  # fmt: skip
        assert closed.status_code == 201, closed.text
    headers = {"X-API-Key": ACME}
    wait_until(
        lambda: httpx.get(gw.url + "/g/closed-route/items", headers=headers).status_code == 200
    )
    assert _health(gw)["status"] == "ok"

    own_redis.stop()
    with gw.client() as c:
        codes = [c.get("/g/demo/items", headers=headers).status_code for _ in range(20)]
        assert codes == [200] * 20
        closed_codes = {
            c.get("/g/closed-route/items", headers=headers).status_code for _ in range(3)
        }
        assert closed_codes == {503}
        assert c.get("/g/demo/items", headers={"X-API-Key": "wrong"}).status_code == 401
    health = _health(gw)
    assert health["status"] == "degraded"
    assert health["checks"] == {"database": "ok", "redis": "degraded"}

    own_redis.start()
    wait_until(lambda: _health(gw)["status"] == "ok", timeout=30, interval=0.2)
    wait_until(
        lambda: httpx.get(gw.url + "/g/closed-route/items", headers=headers).status_code == 200,
        timeout=30,
    )


def test_redis_flushed_keys_still_work(redis_fault_gateway: Gateway, own_redis: OwnRedis) -> None:
    gw = redis_fault_gateway
    own_redis.client().flushall()
    with gw.client() as c:
        codes = [c.get("/g/demo/items", headers={"X-API-Key": ACME}).status_code for _ in range(5)]
    assert codes == [200] * 5


# --- PostgreSQL cut off under traffic ------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_fault_gateway(
    workdir: Path, upstream: Upstream, pg_database: str, pg_proxy: TcpProxy, redis_server: str,
    redis_module_prefix: str,
) -> Iterator[Gateway]:  # fmt: skip
    proxied = pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    env = gateway_env(
        upstream, database_url=proxied, redis_url=redis_server,
        extra={"REDIS_KEY_PREFIX": redis_module_prefix + "pgfault:",
               "HELIOX_SPILL_DIR": str(workdir / "pg-fault")},
    )  # fmt: skip
    with gateway_in(workdir, "pg-fault", env) as gw:
        yield gw


async def _count_rows(dsn: str, key_id: int) -> int:
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM request_logs WHERE key_id=$1", key_id))
    finally:
        await conn.close()


def test_postgres_outage_loses_no_log_rows(
    pg_fault_gateway: Gateway, pg_proxy: TcpProxy, pg_database: str
) -> None:
    gw = pg_fault_gateway
    with gw.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "outage"}).json()
        created = admin.post(
            "/admin/keys",
            json={"tenant_id": tenant["id"], "name": "o", "rate_limit_rps": 10000,
                  "rate_limit_burst": 20000},
        ).json()  # fmt: skip
    key_id, key = created["id"], created["key"]
    headers = {"X-API-Key": key}
    served = 0

    def probe() -> bool:
        nonlocal served
        r = httpx.get(gw.url + "/g/demo/items", headers=headers, timeout=10)
        if r.status_code == 200:
            served += 1
        return r.status_code == 200

    wait_until(probe, timeout=10)
    with gw.client() as c:
        for _ in range(20):
            assert c.get("/g/demo/items", headers=headers).status_code == 200
            served += 1
        pg_proxy.cut()
        deadline = time.monotonic() + PG_OUTAGE_SECONDS
        while time.monotonic() < deadline:
            assert c.get("/g/demo/items", headers=headers).status_code == 200
            served += 1
        health = _health(gw)
        assert health["status"] == "degraded"
        with gw.admin() as admin:
            write = admin.post("/admin/tenants", json={"name": "during-outage"})
        assert write.status_code == 503, write.text
        assert write.headers["content-type"] == "application/problem+json"
        pg_proxy.restore()
        for _ in range(20):
            assert c.get("/g/demo/items", headers=headers).status_code == 200
            served += 1

    def all_written() -> bool:
        return asyncio.run(_count_rows(pg_database, key_id)) >= served

    wait_until(all_written, timeout=60, interval=0.5)
    assert asyncio.run(_count_rows(pg_database, key_id)) == served
    wait_until(lambda: _health(gw)["status"] == "ok", timeout=30)


def test_redis_hung_under_traffic(redis_fault_gateway: Gateway, own_redis: OwnRedis) -> None:
    """CLIENT PAUSE: Redis accepts connections but answers nothing for a while."""
    gw = redis_fault_gateway
    headers = {"X-API-Key": ACME}
    wait_until(lambda: _health(gw)["status"] == "ok", timeout=30, interval=0.2)
    own_redis.client().client_pause(4000, all=True)
    with gw.client() as c:
        codes = [c.get("/g/products/items", headers=headers).status_code for _ in range(5)]
    assert codes == [200] * 5  # fail open: each waits at most REDIS_TIMEOUT, then is served
    wait_until(lambda: _health(gw)["status"] == "ok", timeout=30, interval=0.2)
    with gw.client() as c:
        assert c.get("/g/products/items", headers=headers).status_code == 200
