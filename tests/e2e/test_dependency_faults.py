"""Dependencies that hang or refuse work, injected for real: a Redis server the test owns
(`CLIENT PAUSE`, `maxmemory`), and PostgreSQL behind a proxy that stops forwarding.

Expected (docs/hardening.md, "Faults" and "Hanging is worse than refusing"): a request waits for
a hung Redis at most once; after repeated failures a circuit breaker keeps Redis off the request
path until a background probe succeeds; any Redis error that means "cannot serve" (OOM, ...)
shows on /health and on the dashboard with the fail-open admissions it caused; /health answers
from the last background checks, within its timeout, whatever hangs.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.faults import OwnRedis, TcpProxy
from tests.e2e.harness import (
    ACME,
    Gateway,
    Upstream,
    gateway_env,
    gateway_in,
    wait_until,
)

REDIS_TIMEOUT = 2.0  # the gateways' REDIS_TIMEOUT (the default)
HEALTH_TIMEOUT = 1.0  # their HEALTH_TIMEOUT (the default)
BREAKER_FAILURES = 3
KEY = {"X-API-Key": ACME}
# Hang detectors, not timings: generous against what one wait costs, far below what the fault
# cost before (a request: several REDIS_TIMEOUTs; /health: 2 s and more).
ONE_TIMEOUT_AND_SOME = REDIS_TIMEOUT + 1.5
HEALTH_BOUND = HEALTH_TIMEOUT + 0.5


def _health(gw: Gateway, timeout: float = 10) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(gw.url + "/health", timeout=timeout).json()
    return health


def _healthy(gw: Gateway) -> None:
    wait_until(lambda: _health(gw)["status"] == "ok", timeout=60, interval=0.2)


def _redis_state(gw: Gateway) -> dict[str, Any]:
    state: dict[str, Any] = _health(gw)["dependencies"]["redis"]
    return state


def _timed_get(c: httpx.Client, path: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = c.get(path, headers=KEY)
    return r, time.monotonic() - t0


@pytest.fixture(scope="module")
def budget_gateway(
    workdir: Path, upstream: Upstream, pg_database: str, own_redis: OwnRedis
) -> Iterator[Gateway]:
    """A breaker that never opens: what a request pays is its own budget's doing alone."""
    env = gateway_env(
        upstream, database_url=pg_database, redis_url=own_redis.url,
        extra={"REDIS_KEY_PREFIX": "f3-budget:", "REDIS_BREAKER_FAILURES": "10000"},
    )  # fmt: skip
    with gateway_in(workdir, "budget", env) as gw:
        yield gw


@pytest.fixture(scope="module")
def breaker_gateway(
    workdir: Path, upstream: Upstream, pg_database: str, own_redis: OwnRedis
) -> Iterator[Gateway]:
    env = gateway_env(
        upstream, database_url=pg_database, redis_url=own_redis.url,
        extra={"REDIS_KEY_PREFIX": "f3-breaker:",
               "REDIS_BREAKER_FAILURES": str(BREAKER_FAILURES)},
    )  # fmt: skip
    with gateway_in(workdir, "breaker", env) as gw:
        yield gw


def test_a_request_waits_for_a_hung_redis_at_most_once(
    budget_gateway: Gateway, own_redis: OwnRedis
) -> None:
    gw = budget_gateway
    _healthy(gw)
    with own_redis.hung(), httpx.Client(base_url=gw.url, timeout=30) as c:
        # A cached MISS: admission, lookup, lock, store and notice all go to Redis.
        cached, cached_s = _timed_get(c, f"/g/demo/items?f3={uuid.uuid4().hex}")
        uncached, uncached_s = _timed_get(c, "/g/webhooks/items")
        t0 = time.monotonic()
        health = _health(gw)
        health_s = time.monotonic() - t0
    assert cached.status_code == 200, cached.text
    assert uncached.status_code == 200, uncached.text
    assert "ratelimit-limit" not in uncached.headers  # admitted without a check: fail open
    assert cached_s < ONE_TIMEOUT_AND_SOME, f"cached MISS took {cached_s:.2f} s"
    assert uncached_s < ONE_TIMEOUT_AND_SOME, f"uncached request took {uncached_s:.2f} s"
    assert health_s < HEALTH_BOUND, f"/health took {health_s:.2f} s"
    assert health["dependencies"]["redis"]["fail_open_admissions_last_minute"] >= 2
    _healthy(gw)
    with gw.client() as c:
        assert "ratelimit-limit" in c.get("/g/products/items", headers=KEY).headers


def test_an_open_breaker_keeps_a_hung_redis_off_the_request_path(
    breaker_gateway: Gateway, own_redis: OwnRedis
) -> None:
    gw = breaker_gateway
    _healthy(gw)
    with own_redis.hung(), httpx.Client(base_url=gw.url, timeout=30) as c:
        # Each of these pays at most one timeout and counts one failure.
        for _ in range(BREAKER_FAILURES):
            assert c.get("/g/products/items", headers=KEY).status_code == 200
        wait_until(lambda: _redis_state(gw)["breaker"] != "closed", timeout=15)
        health = _health(gw)
        t0 = time.monotonic()
        answers = [
            c.get(path, headers=KEY)
            for path in ["/g/webhooks/items", f"/g/demo/items?f3={uuid.uuid4().hex}"] * 10
        ]
        elapsed = time.monotonic() - t0
    assert health["status"] == "degraded"
    assert health["checks"]["redis"] == "degraded"
    assert [r.status_code for r in answers] == [200] * 20
    # 20 requests, a cached MISS among every two, while the breaker is open: together less than
    # one REDIS_TIMEOUT (they never wait for Redis), where each paid one or more before.
    assert elapsed < REDIS_TIMEOUT, f"20 requests took {elapsed:.2f} s"
    # Recovery without a restart: a probe in the background closes the breaker.
    _healthy(gw)
    assert _redis_state(gw)["breaker"] == "closed"
    with gw.client() as c:
        assert "ratelimit-limit" in c.get("/g/products/items", headers=KEY).headers


def _fill_redis(r: redis.Redis) -> None:
    r.config_set("maxmemory", "1mb")
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        for i in range(10_000):
            r.set(f"f3-fill:{i}", b"x" * 10_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("f3-fill:last", b"x")


def test_redis_out_of_memory_is_degraded_and_fail_open_shows(
    budget_gateway: Gateway, own_redis: OwnRedis
) -> None:
    gw = budget_gateway
    _healthy(gw)
    r = own_redis.client()
    _fill_redis(r)
    try:
        with gw.client() as c:
            answers = [c.get("/g/webhooks/items", headers=KEY) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert all("ratelimit-limit" not in a.headers for a in answers)  # failed open
        health = _health(gw)
        redis_state = health["dependencies"]["redis"]
        assert health["status"] == "degraded"
        assert health["checks"]["redis"] == "degraded"
        assert "maxmemory" in redis_state["last_error"]
        assert redis_state["fail_open_admissions_last_minute"] >= 5
        ui = _ui_session(gw)
        try:
            page = ui.get("/ui/dashboard")
        finally:
            ui.close()
        assert page.status_code == 200
        notices = re.findall(r"data-dependency-notice>([^<]*)<", page.text)
        assert any("Redis degraded" in n and "fail-open" in n for n in notices), notices
    finally:
        r.config_set("maxmemory", "0")
        filled = list(r.scan_iter("f3-fill:*", count=1000))
        if filled:
            r.delete(*filled)
    _healthy(gw)


def _ui_session(gw: Gateway) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, timeout=10, follow_redirects=False)
    page = client.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None, page.text[:500]
    signed = client.post(
        "/ui/login", data={"admin_key": gw.env["ADMIN_API_KEY"], "login_token": token.group(1)}
    )
    assert signed.status_code == 303, signed.text[:300]
    return client


# --- PostgreSQL that hangs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_hang_gateway(
    workdir: Path, upstream: Upstream, pg_database: str, pg_proxy: TcpProxy,
    own_redis: OwnRedis,
) -> Iterator[Gateway]:  # fmt: skip
    proxied = pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    env = gateway_env(
        upstream, database_url=proxied, redis_url=own_redis.url,
        extra={"REDIS_KEY_PREFIX": "f3-pg:", "HELIOX_SPILL_DIR": str(workdir / "pg-hang")},
    )  # fmt: skip
    with gateway_in(workdir, "pg-hang", env) as gw:
        yield gw


def test_health_answers_within_its_timeout_while_postgres_hangs(
    pg_hang_gateway: Gateway, pg_proxy: TcpProxy
) -> None:
    gw = pg_hang_gateway
    _healthy(gw)
    pg_proxy.hang()
    try:
        wait_until(lambda: _health(gw)["checks"]["database"] == "degraded", timeout=20)
        took, answers = [], []
        for _ in range(5):
            t0 = time.monotonic()
            answers.append(_health(gw))
            took.append(time.monotonic() - t0)
        with gw.client() as c:
            served = c.get("/g/products/items", headers=KEY).status_code
    finally:
        pg_proxy.restore()
    assert max(took) < HEALTH_BOUND, f"/health took {max(took):.2f} s"
    assert all(h["status"] == "degraded" for h in answers)
    assert all(h["dependencies"]["database"]["error"] for h in answers)
    assert served == 200
    _healthy(gw)
