"""Guessing the admin key, through the running gateway: X-Admin-Key and the UI's sign-in form share
one record per client address, which earns a doubling lock-out (429 with Retry-After, even for the
right key), every failure is logged and audited, X-Forwarded-For from an untrusted peer changes
nothing, and with Redis every instance enforces one lock-out (in process while Redis is down)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.faults import OwnRedis
from tests.e2e.hardening_support import PROBLEM, fresh_address, tag
from tests.e2e.harness import (
    ADMIN_KEY,
    Gateway,
    Upstream,
    free_port,
    gateway_env,
    gateway_in,
    start_gateway,
    start_process,
    wait_until,
)

# The lock-out starts at 2 s and doubles: long enough that a request sent right after one starts
# still sees most of it, short enough to wait out.
THROTTLE = {
    "TRUSTED_PROXIES": "127.0.0.1/32",
    "ADMIN_AUTH_MAX_FAILURES": "5",
    "ADMIN_AUTH_LOCKOUT_SECONDS": "2",
    "ADMIN_AUTH_MAX_LOCKOUT_SECONDS": "60",
}


@pytest.fixture(scope="module")
def throttled_embedded(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    with gateway_in(workdir, "throttled-embedded", gateway_env(upstream, extra=THROTTLE)) as gw:
        yield gw


@pytest.fixture(scope="module")
def throttled_pair(workdir: Path, production_env: dict[str, str]) -> Iterator[list[Gateway]]:
    gateways: list[Gateway] = []
    try:
        for name in ("throttled-a", "throttled-b"):
            d = workdir / name
            d.mkdir()
            gateways.append(start_gateway(d, {**production_env, **THROTTLE}))
        yield gateways
    finally:
        for gw in gateways:
            gw.proc.stop()


@pytest.fixture(params=["embedded", "production"])
def throttled(request: pytest.FixtureRequest) -> Gateway:
    if request.param == "embedded":
        gw: Gateway = request.getfixturevalue("throttled_embedded")
        return gw
    pair: list[Gateway] = request.getfixturevalue("throttled_pair")
    return pair[0]


def admin_get(gw: Gateway, address: str, key: str, **kw: Any) -> httpx.Response:
    headers = {"X-Admin-Key": key, "X-Forwarded-For": address}
    return httpx.get(gw.url + "/admin/tenants", headers=headers, timeout=10, **kw)


def assert_locked(r: httpx.Response, most: int) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == PROBLEM
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= most
    body = r.json()
    assert body["retry_after"] == retry
    assert "too many failed admin authentications" in body["detail"]
    return retry


def audit_rows(gw: Gateway, address: str) -> list[dict[str, Any]]:
    with gw.admin() as admin:
        r = admin.get("/admin/audit", params={"entity_type": "admin_auth", "entity_id": address})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["items"]
    return rows[::-1]  # oldest first


def test_guessing_the_admin_key_earns_a_doubling_lockout(throttled: Gateway) -> None:
    gw = throttled
    address = fresh_address()
    for i in range(5):
        assert admin_get(gw, address, f"guess-{i}").status_code == 401
    first = assert_locked(admin_get(gw, address, "guess-5"), 2)
    # During the lock-out even the right key is refused: answering it would confirm a hit.
    assert_locked(admin_get(gw, address, ADMIN_KEY), first)
    # The first failure after it ends doubles the lock-out.
    wait_until(lambda: admin_get(gw, address, "guess-6").status_code == 401, timeout=15)
    assert assert_locked(admin_get(gw, address, "guess-7"), 4) > 2
    # The right key, once the lock-out is over, ends the streak: the next failure is a first.
    wait_until(lambda: admin_get(gw, address, ADMIN_KEY).status_code == 200, timeout=15)
    assert admin_get(gw, address, "guess-8").status_code == 401
    assert admin_get(gw, address, ADMIN_KEY).status_code == 200
    # Every failure that was checked is in the audit log and the gateway's log; none of the
    # refusals during a lock-out is (they are counted in /metrics).
    rows = audit_rows(gw, address)
    assert [r["after"]["failures_in_a_row"] for r in rows] == [1, 2, 3, 4, 5, 6, 1]
    assert [r["after"]["locked_out_seconds"] for r in rows] == [0, 0, 0, 0, 2, 4, 0]
    assert {(r["actor"], r["action"], r["after"]["channel"]) for r in rows} == {
        ("unauthenticated", "auth.failure", "x-admin-key")
    }
    assert "guess-" not in str(rows)  # the guesses themselves are never stored
    logged = re.findall(
        rf"admin authentication failed from {re.escape(address)} ", gw.proc.output()
    )
    assert len(logged) == 7
    with gw.admin() as admin:
        events = admin.get("/metrics").json()["events"]
    assert events["admin_auth_refused_locked"] >= 2
    assert events["admin_auth_lockouts"] >= 2


def _login_token(page: httpx.Response) -> str:
    found = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert found is not None, page.text[:300]
    return found.group(1)


def test_ui_sign_in_guesses_share_the_lockout(throttled: Gateway) -> None:
    gw = throttled
    address = fresh_address()
    with httpx.Client(
        base_url=gw.url, headers={"X-Forwarded-For": address}, timeout=10, follow_redirects=False
    ) as ui:
        page = ui.get("/ui/login")
        for i in range(5):
            page = ui.post(
                "/ui/login", data={"admin_key": f"g{i}", "login_token": _login_token(page)}
            )
            assert page.status_code == 401, page.text[:300]
            assert "That admin key is not valid." in page.text
        page = ui.post("/ui/login", data={"admin_key": "g5", "login_token": _login_token(page)})
        assert page.status_code == 429
        assert 1 <= int(page.headers["retry-after"]) <= 2
        assert "Too many failed sign-ins" in page.text
        # One record per address: the header is locked out too, and so is the right key.
        assert_locked(admin_get(gw, address, ADMIN_KEY), 2)
        page = ui.post(
            "/ui/login", data={"admin_key": ADMIN_KEY, "login_token": _login_token(page)}
        )
        assert page.status_code == 429
        assert "heliox_session" not in page.headers.get("set-cookie", "")
    rows = audit_rows(gw, address)
    assert [r["after"]["channel"] for r in rows] == ["ui-login"] * 5


def test_a_spoofed_forwarded_for_does_not_dodge_the_lockout(throttled_embedded: Gateway) -> None:
    """From a peer that is not a trusted proxy, X-Forwarded-For is ignored; behind a trusted one,
    entries the client wrote to the left of the proxy's are."""
    gw = throttled_embedded
    peer = f"127.0.0.{random.randint(20, 250)}"
    transport = httpx.HTTPTransport(local_address=peer)
    with httpx.Client(base_url=gw.url, transport=transport, timeout=10) as direct:
        codes = [
            direct.get(
                "/admin/tenants",
                headers={"X-Admin-Key": f"guess-{i}", "X-Forwarded-For": fresh_address()},
            ).status_code
            for i in range(6)
        ]
    assert codes == [401] * 5 + [429]
    assert len(audit_rows(gw, peer)) == 5

    address = fresh_address()
    codes = [
        admin_get(gw, f"{fresh_address()}, {address}", f"guess-{i}").status_code for i in range(6)
    ]
    assert codes == [401] * 5 + [429]
    assert_locked(admin_get(gw, address, ADMIN_KEY), 2)


def test_every_instance_enforces_one_lockout(throttled_pair: list[Gateway]) -> None:
    a, b = throttled_pair
    address = fresh_address()
    codes = [admin_get(gw, address, f"guess-{i}").status_code for i, gw in enumerate([a, b] * 3)]
    assert codes == [401] * 5 + [429]
    assert_locked(admin_get(a, address, ADMIN_KEY), 2)
    assert_locked(admin_get(b, address, ADMIN_KEY), 2)
    assert len(audit_rows(b, address)) == 5


@pytest.fixture(scope="module")
def throttled_own_redis(
    workdir: Path, upstream: Upstream, pg_database: str, own_redis: OwnRedis
) -> Iterator[Gateway]:
    env = gateway_env(upstream, database_url=pg_database, redis_url=own_redis.url, extra=THROTTLE)
    with gateway_in(workdir, "throttled-own-redis", env) as gw:
        yield gw


def test_with_redis_down_the_throttle_holds_in_process(
    throttled_own_redis: Gateway, own_redis: OwnRedis
) -> None:
    """The shared records are out of reach: the right key still works (authentication never
    depends on Redis), and guessing is still locked out, by this instance alone."""
    gw = throttled_own_redis
    address = fresh_address()
    own_redis.stop()
    try:
        assert admin_get(gw, address, ADMIN_KEY).status_code == 200
        codes = [admin_get(gw, address, f"guess-{i}").status_code for i in range(6)]
        assert codes == [401] * 5 + [429]
        assert_locked(admin_get(gw, address, ADMIN_KEY), 2)
        with gw.admin() as admin:
            events = admin.get("/metrics").json()["events"]
        assert events["admin_auth_throttle_unavailable"] >= 7
    finally:
        own_redis.start()
    # Back on Redis, where this address has no record yet.
    assert admin_get(gw, fresh_address(), ADMIN_KEY).status_code == 200


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("ADMIN_API_KEY", "change-me-to-a-long-random-admin-key", "placeholder"),
        ("SECRET_KEY", "change-me-to-a-long-random-session-secret", "placeholder"),
        ("ADMIN_API_KEY", "admin-secret-key", "demo default"),
        ("ADMIN_API_KEY", "k" * 40, "one character repeated"),
        ("SECRET_KEY", "abcabcabcabcabcabcabc", "too easy to guess"),
        ("ADMIN_API_KEY", "Password123456789", "common word"),
    ],
)
def test_production_refuses_a_guessable_secret_and_names_it(
    workdir: Path, production_env: dict[str, str], variable: str, value: str, why: str
) -> None:
    d = workdir / f"weak-{variable}-{tag()}"
    d.mkdir()
    env = {**production_env, variable: value}
    proc = start_process("weak", ["serve", "--port", str(free_port())], env, d)
    try:
        status = proc.popen.wait(timeout=60)
    finally:
        proc.stop()
    output = proc.output()
    assert status != 0
    assert f"{variable}: " in output and why in output, output[-2000:]
    assert value not in output  # a secret, even a bad one, is never printed
    other = "SECRET_KEY" if variable == "ADMIN_API_KEY" else "ADMIN_API_KEY"
    assert f"{other}: " not in output
