"""The cache across processes: stampedes (one embedded gateway; two instances sharing
PostgreSQL and Redis), purges seen by every instance, the Redis cost of a HIT, and a Redis
outage survived without a restart."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import subprocess
import threading
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.harness import (
    ACME,
    CLOUDBRIDGE,
    Gateway,
    Upstream,
    free_port,
    gateway_env,
    start_gateway,
    wait_until,
)

STAMPEDE = 200


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def get(gw: Gateway, path: str, key: str = ACME, **headers: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"X-API-Key": key, **headers}, timeout=15)


def calls(upstream: Upstream, path: str) -> int:
    by_path: dict[str, int] = upstream.stats()["by_path"]
    return by_path.get(path, 0)


async def stampede(gateways: list[Gateway], path: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=STAMPEDE + 50, max_keepalive_connections=STAMPEDE)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.get(
                    gateways[i % len(gateways)].url + path,
                    headers={"X-API-Key": CLOUDBRIDGE},
                )
                for i in range(STAMPEDE)
            )
        )


def assert_one_upstream_call(answers: list[httpx.Response], upstream: Upstream, path: str) -> None:
    assert [a.status_code for a in answers] == [200] * STAMPEDE
    labels = collections.Counter(a.headers["x-cache"] for a in answers)
    assert labels["MISS"] == 1, labels
    assert {a.content for a in answers} == {answers[0].content}
    assert calls(upstream, path.partition("?")[0].removeprefix("/g/demo")) == 1


def test_stampede_through_one_embedded_gateway(
    embedded_gateway: Gateway, upstream: Upstream
) -> None:
    path = f"/g/demo/respond/{unique('storm')}?delay=0.5"
    answers = asyncio.run(stampede([embedded_gateway], path))
    assert_one_upstream_call(answers, upstream, path)
    events = httpx.get(embedded_gateway.url + "/metrics", timeout=5).json()["events"]
    assert events["coalesced"] >= STAMPEDE - 1


def test_stampede_across_two_instances(
    pg_gateway: Gateway, pg_gateway_b: Gateway, upstream: Upstream
) -> None:
    path = f"/g/demo/respond/{unique('storm')}?delay=0.5"
    answers = asyncio.run(stampede([pg_gateway, pg_gateway_b], path))
    assert_one_upstream_call(answers, upstream, path)


def test_purge_on_one_instance_is_seen_by_the_other(
    pg_gateway: Gateway, pg_gateway_b: Gateway
) -> None:
    path = f"/g/demo/respond/{unique('purge')}"
    get(pg_gateway, path)
    assert get(pg_gateway_b, path).headers["x-cache"] == "HIT"  # one shared store
    with pg_gateway.admin() as admin:
        assert admin.post("/admin/cache/purge", json={"url": path}).json() == {"purged": 1}
    assert get(pg_gateway_b, path).headers["x-cache"] == "MISS"


def test_swr_refresh_runs_once_across_instances(
    pg_gateway: Gateway, pg_gateway_b: Gateway, upstream: Upstream
) -> None:
    name = unique("swr")
    with pg_gateway.admin() as admin:
        policy = {"name": name, "ttl_seconds": 1, "stale_while_revalidate_seconds": 60}
        assert admin.post("/admin/policies", json=policy).status_code == 201
        route = {"name": name, "upstream_url": upstream.url, "cache_policy": name}
        assert admin.post("/admin/routes", json=route).status_code == 201
    path = f"/g/{name}/respond/{name}?delay=0.3"
    wait_until(lambda: get(pg_gateway_b, path).status_code == 200, 10)  # config propagated
    first_n = get(pg_gateway, path).json()["n"]
    wait_until(lambda: get(pg_gateway, path).headers["x-cache"] != "HIT", 10)  # gone stale
    # Stale on both instances at once: one refresh between them.
    assert get(pg_gateway_b, path).headers["x-cache"] in ("STALE", "UPDATING", "HIT")
    wait_until(lambda: get(pg_gateway_b, path).json()["n"] > first_n, 10)
    assert calls(upstream, f"/respond/{name}") == 2


def _stats_script_sha() -> str:
    lua = resources.files("heliox.state").joinpath("lua")
    source = (
        lua.joinpath("cache_common.lua").read_text() + lua.joinpath("cache_stats.lua").read_text()
    )
    return hashlib.sha1(source.encode()).hexdigest()


def test_a_hit_costs_one_redis_round_trip(
    pg_gateway: Gateway, redis_server: str, redis_module_prefix: str
) -> None:
    path = f"/g/demo/respond/{unique('cost')}"
    get(pg_gateway, path)
    hits = 20
    cache_prefixes = (redis_module_prefix + "cache:", redis_module_prefix + "neg:")
    background = _stats_script_sha()  # the periodic size gauge, not part of any request
    sentinel = unique("sentinel")
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        client = redis.Redis.from_url(redis_server)
        try:
            # redis-py leaves Redis.monitor unannotated.
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                for command in monitor.listen():
                    if sentinel in command["command"]:
                        return
                    seen.append(command)
        finally:
            client.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)
    answers = [get(pg_gateway, path) for _ in range(hits)]
    with redis.Redis.from_url(redis_server) as client:
        client.echo(sentinel)
    watcher.join(10)
    assert [a.headers["x-cache"] for a in answers] == ["HIT"] * hits
    # One round trip per HIT in all: the admission script, which also reads the cache's removal
    # generation; the entry itself comes from the in-process copy (CACHE_L1_MAX_BYTES).
    ours = [
        c["command"]
        for c in seen
        if c["client_type"] != "lua"  # commands run inside scripts are not round trips
        and redis_module_prefix in c["command"]
        and background not in c["command"]
        and redis_module_prefix + "probe:" not in c["command"]  # the periodic health check's
    ]
    assert len(ours) == hits, ours[:5]
    assert all(c.startswith("EVALSHA ") and "cache:gen" in c for c in ours), ours[:5]
    assert not any(p in c for c in ours for p in cache_prefixes if c.startswith("GET "))


# --- Redis outage --------------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this test's own, so it can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: redis.Redis.from_url(self.url, socket_timeout=1).ping(), 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_outage_degrades_to_misses_and_recovers(
    workdir: Path, upstream: Upstream, private_redis: PrivateRedis
) -> None:
    gw_dir = workdir / unique("outage")
    gw_dir.mkdir()
    gw = start_gateway(gw_dir, gateway_env(upstream, redis_url=private_redis.url))
    try:
        path = f"/g/demo/respond/{unique('outage')}"
        get(gw, path)
        assert get(gw, path).headers["x-cache"] == "HIT"

        private_redis.stop()
        during = [get(gw, path) for _ in range(3)]
        assert [(a.status_code, a.headers["x-cache"]) for a in during] == [(200, "MISS")] * 3
        health = httpx.get(gw.url + "/health", timeout=10).json()
        assert (health["status"], health["checks"]["redis"]) == ("degraded", "degraded")
        with gw.admin() as admin:  # production: the metrics need the admin key
            assert admin.get("/metrics").json()["events"]["redis_errors"] > 0

        private_redis.start()  # same port, empty: the gateway must find it again by itself
        wait_until(lambda: get(gw, path).headers["x-cache"] == "HIT", 20)
        # /health reports the background checks and recent Redis errors: ok shortly after.
        wait_until(lambda: httpx.get(gw.url + "/health", timeout=10).json()["status"] == "ok", 30)
    finally:
        gw.proc.stop()
