"""Abuse detection an operator can leave on, through the running gateway in both modes.

The detector runs with 1 s windows here (ABUSE_WINDOW_SECONDS=1) and every other setting at its
default, so each traffic shape below is its real-world counterpart with time divided by ten: the
detector sees the same counts per window either way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ACME, TECHFLOW, Gateway, gateway_env, start_gateway, wait_until

WINDOW = 1.0
FAST = {"ABUSE_WINDOW_SECONDS": "1", "ABUSE_BLOCK_DURATION_SECONDS": "120"}


def _start(
    request: pytest.FixtureRequest, workdir: Path, name: str, extra: dict[str, str]
) -> Gateway:
    if request.param == "production":
        env = {**request.getfixturevalue("production_env"), **extra}
    else:
        env = gateway_env(request.getfixturevalue("upstream"), extra=extra)
    d = workdir / f"{name}-{request.param}"
    d.mkdir()
    return start_gateway(d, env)


@pytest.fixture(scope="module", params=["embedded", "production"])
def detecting_gateway(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Gateway]:
    gw = _start(request, workdir, "abuse-detect", FAST)
    try:
        yield gw
    finally:
        gw.proc.stop()


def _create_key(
    gw: Gateway,
    rps: float,
    burst: int,
    tenant_fields: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[int, str]:
    with gw.admin() as admin:
        tenant = admin.post(
            "/admin/tenants", json={"name": f"t-{time.monotonic_ns()}", **(tenant_fields or {})}
        )
        assert tenant.status_code == 201, tenant.text
        body = {"tenant_id": tenant.json()["id"], "name": "abuse", "rate_limit_rps": rps,
                "rate_limit_burst": burst, **fields}  # fmt: skip
        key = admin.post("/admin/keys", json=body)
        assert key.status_code == 201, key.text
    key_id, raw = key.json()["id"], key.json()["key"]
    # Until every instance knows the key; the one request that passes is the key's first.
    wait_until(lambda: _get(gw, raw) != 401, timeout=10)
    return key_id, raw


def _seeded_key_id(gw: Gateway, raw: str) -> int:
    with gw.admin() as admin:
        items = admin.get("/admin/keys", params={"limit": 1000}).json()["items"]
    key_id: int = next(k["id"] for k in items if raw.startswith(k["key_prefix"]))
    return key_id


def _get(gw: Gateway, key: str) -> int:
    r = httpx.get(gw.url + "/g/demo/items", headers={"X-API-Key": key}, timeout=10)
    return r.status_code


def _wait_for_clock(t: float) -> None:
    """The traffic shape's own pause (the clock is what is awaited, not any state)."""
    wait_until(lambda: time.time() >= t, timeout=t - time.time() + 5, interval=0.02)


def _next_window() -> None:
    _wait_for_clock(float(int(time.time() / WINDOW) + 1) * WINDOW)


def _listed(gw: Gateway, key_id: int) -> dict[str, Any] | None:
    with gw.admin() as admin:
        items = admin.get("/admin/abuse/blocked").json()["items"]
    return next((b for b in items if b["key_id"] == key_id), None)


def _events(gw: Gateway, key_id: int) -> list[dict[str, Any]]:
    with gw.admin() as admin:
        r = admin.get("/admin/abuse/events", params={"key_id": key_id})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
    return items


async def _burst(gw: Gateway, key: str, total: int) -> Counter[int]:
    async with httpx.AsyncClient(timeout=20) as client:
        rs = await asyncio.gather(
            *(client.get(gw.url + "/g/demo/items", headers={"X-API-Key": key})
              for _ in range(total))
        )  # fmt: skip
    return Counter(r.status_code for r in rs)


def _baseline_then_spike(gw: Gateway, keys: list[str], via: Gateway | None = None) -> None:
    """The README demo for each key at once: a steady baseline, then a sudden 10x spike."""
    target = via or gw
    with target.client() as c:
        _next_window()
        for _ in range(8):  # 8 windows of 8 requests: the baseline's span and size
            start = time.time()
            for key in keys:
                for _ in range(8):
                    assert c.get("/g/demo/items", headers={"X-API-Key": key}).status_code == 200
            _wait_for_clock(float(int(start / WINDOW) + 1) * WINDOW)

    async def spikes() -> list[Counter[int]]:
        return list(await asyncio.gather(*(_burst(target, key, 80) for key in keys)))

    for codes in asyncio.run(spikes()):
        assert set(codes) <= {200, 429}


def _spike_after_a_baseline(gw: Gateway) -> tuple[int, str]:
    # A 500/s key: its spike of 80 is flagged even if it lands in two windows (40 >= 25, 5% of
    # the limit, and >= 32, 4x the baseline of 8).
    key_id, key = _create_key(gw, rps=500, burst=1000)
    _baseline_then_spike(gw, [key])
    return key_id, key


def _assert_never_flagged(gw: Gateway, keys: dict[str, tuple[int, str]]) -> None:
    """No block and no event for any of `keys` (what each stands for: its key id and key).
    Their verdicts, had there been any, were taken before the positive control's (same process,
    in order), so once the control is listed they would be too."""
    control_id, _ = _spike_after_a_baseline(gw)
    wait_until(lambda: _listed(gw, control_id) is not None, timeout=15)
    for name, (key_id, key) in keys.items():
        assert _listed(gw, key_id) is None, f"{name}: blocked"
        assert _events(gw, key_id) == [], f"{name}: flagged"
        assert _get(gw, key) == 200, name
    with gw.admin() as admin:
        assert admin.post(f"/admin/abuse/unblock/{control_id}").json()["unblocked"] is True


def _pause_then_one_after_another(gw: Gateway, key: str, n: int) -> None:
    """6.2 windows of silence (62 s at 10 s windows), then `n` requests one after another."""
    _wait_for_clock(time.time() + 6.2 * WINDOW)
    with gw.client() as c:
        codes = Counter(
            c.get("/g/demo/items", headers={"X-API-Key": key}).status_code for _ in range(n)
        )
    assert codes == {200: n}


def _slow_steady_then_nine_at_once(gw: Gateway, key: str) -> None:
    """One request a window for 8 windows, then 9 at once."""
    with gw.client() as c:
        _next_window()
        for _ in range(8):
            start = time.time()
            assert c.get("/g/demo/items", headers={"X-API-Key": key}).status_code == 200
            _wait_for_clock(float(int(start / WINDOW) + 1) * WINDOW)
    codes = asyncio.run(_burst(gw, key, 9))
    assert codes == {200: 9}


def _one_then_a_pause_then(gw: Gateway, key: str, n: int) -> None:
    """One request (a fresh key's first was sent when it was created), a pause, then `n`."""
    assert _get(gw, key) == 200
    _pause_then_one_after_another(gw, key, n)


def test_ordinary_shapes_are_not_blocked(detecting_gateway: Gateway) -> None:
    """Three shapes of ordinary traffic, each on its own key and all at once (the detector
    judges each key on its own counts): a fresh 500 req/s key's first burst after a silence
    (one request, 62 s, here 6.2 s, of silence, then 8 one after another); the seeded Acme key
    (500 req/s) sending the five requests of a cache check after a pause; the seeded TechFlow
    key (250 req/s) sending one request a window for 8 windows, then 9 at once."""
    gw = detecting_gateway
    fresh_id, fresh = _create_key(gw, rps=500, burst=1000)  # its first request
    shapes = {
        "a fresh key's first burst after silence": (
            fresh_id, fresh, lambda: _pause_then_one_after_another(gw, fresh, 8)
        ),
        "the seeded key's few requests after a pause": (
            _seeded_key_id(gw, ACME), ACME, lambda: _one_then_a_pause_then(gw, ACME, 5)
        ),
        "a slow steady key sending nine at once": (
            _seeded_key_id(gw, TECHFLOW), TECHFLOW,
            lambda: _slow_steady_then_nine_at_once(gw, TECHFLOW),
        ),
    }  # fmt: skip
    with ThreadPoolExecutor(len(shapes)) as pool:
        sent = {name: pool.submit(send) for name, (_, _, send) in shapes.items()}
    for name, done in sent.items():
        assert done.exception() is None, f"{name}: {done.exception()!r}"
    _assert_never_flagged(gw, {name: (key_id, key) for name, (key_id, key, _) in shapes.items()})


def test_the_readme_demo_spike_is_blocked_and_listed_with_its_reason(
    detecting_gateway: Gateway,
) -> None:
    gw = detecting_gateway
    key_id, key = _spike_after_a_baseline(gw)
    wait_until(lambda: _listed(gw, key_id) is not None, timeout=15)
    entry = _listed(gw, key_id)
    assert entry is not None and entry["action"] == "block"
    assert entry["score"] >= 3.0
    assert entry["observed_rate"] >= 4 * entry["baseline_rate"]
    reason = entry["reason"]
    # The numbers that decided, each stated against its bound.
    assert "z = " in reason and ">= 3;" in reason and "at least 4x needed" in reason
    assert "of the key's 500/s limit (at least 5% needed)" in reason
    assert _get(gw, key) == 429
    events = _events(gw, key_id)
    assert events and events[0]["reason"] == reason
    with gw.admin() as admin:
        assert admin.post(f"/admin/abuse/unblock/{key_id}").json()["unblocked"] is True
    assert _get(gw, key) == 200


# --- per-key and per-tenant overrides ---


def test_exempt_and_own_threshold_keys_are_not_flagged_by_the_same_spike(
    detecting_gateway: Gateway,
) -> None:
    gw = detecting_gateway
    # 500/s keys: a spike window needs 25 requests (5% of the limit) and 32 (4x the baseline of
    # 8), so the control's 80 are flagged even when the four keys' 320 requests at once take
    # longer than one window on a busy machine and land in two.
    exempt_id, exempt = _create_key(gw, rps=500, burst=1000, abuse_mode="exempt")
    tenant_id, tenant_exempt = _create_key(
        gw, rps=500, burst=1000, tenant_fields={"abuse_mode": "exempt"}
    )
    lax_id, lax = _create_key(
        gw, rps=500, burst=1000, abuse_mode="custom", abuse_zscore_threshold=1000
    )
    control_id, control = _create_key(gw, rps=500, burst=1000)
    _baseline_then_spike(gw, [exempt, tenant_exempt, lax, control])
    wait_until(lambda: _listed(gw, control_id) is not None, timeout=15)
    for key_id in (exempt_id, tenant_id, lax_id):
        assert _listed(gw, key_id) is None
        assert _events(gw, key_id) == []
    with gw.admin() as admin:
        key = admin.get(f"/admin/keys/{lax_id}").json()
        assert (key["abuse_mode"], key["abuse_zscore_threshold"]) == ("custom", 1000)
        assert admin.post(f"/admin/abuse/unblock/{control_id}").json()["unblocked"] is True


def test_an_override_that_is_not_whole_is_a_422_and_changes_nothing(
    detecting_gateway: Gateway,
) -> None:
    gw = detecting_gateway
    key_id, _ = _create_key(gw, rps=100, burst=200)
    with gw.admin() as admin:
        tenant_id = admin.get(f"/admin/keys/{key_id}").json()["tenant_id"]
        r = admin.patch(f"/admin/keys/{key_id}", json={"abuse_mode": "custom"})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert "abuse_zscore_threshold" in r.text
        assert admin.get(f"/admin/keys/{key_id}").json()["abuse_mode"] == "default"
        r = admin.patch(f"/admin/keys/{key_id}", json={"abuse_zscore_threshold": 0.5})
        assert r.status_code == 422 and "abuse_zscore_threshold" in r.text
        r = admin.patch(f"/admin/keys/{key_id}", json={"abuse_mode": "lenient"})
        assert r.status_code == 422 and "abuse_mode" in r.text
        before = admin.get("/admin/keys", params={"limit": 1000}).json()["total"]
        r = admin.post("/admin/keys", json={"tenant_id": tenant_id, "name": "x",
                                            "abuse_mode": "custom"})  # fmt: skip
        assert r.status_code == 422 and "abuse_zscore_threshold" in r.text
        assert admin.get("/admin/keys", params={"limit": 1000}).json()["total"] == before
        r = admin.patch(f"/admin/tenants/{tenant_id}", json={"abuse_mode": "custom"})
        assert r.status_code == 422 and "abuse_zscore_threshold" in r.text
        assert admin.get(f"/admin/tenants/{tenant_id}").json()["abuse_mode"] == "default"
        r = admin.patch(
            f"/admin/keys/{key_id}", json={"abuse_mode": "custom", "abuse_zscore_threshold": 6}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["abuse_mode"], r.json()["abuse_zscore_threshold"]) == ("custom", 6)


# --- shadow mode ---


@pytest.fixture(scope="module", params=["embedded", "production"])
def shadow_gateway(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Gateway]:
    gw = _start(request, workdir, "abuse-shadow", {**FAST, "ABUSE_ACTION": "shadow"})
    try:
        yield gw
    finally:
        gw.proc.stop()


def test_shadow_mode_records_the_would_be_block_and_blocks_nothing(
    shadow_gateway: Gateway,
) -> None:
    gw = shadow_gateway
    key_id, key = _spike_after_a_baseline(gw)
    wait_until(lambda: _events(gw, key_id) != [], timeout=15)
    event = _events(gw, key_id)[0]
    assert event["action"] == "shadow" and event["blocked_until"] is None
    assert "z = " in event["reason"] and event["score"] >= 3.0
    assert _listed(gw, key_id) is None
    assert asyncio.run(_burst(gw, key, 20)) == {200: 20}
    with gw.admin() as admin:
        events = admin.get("/metrics").json()["events"]
    assert events.get("abuse_shadow_flags", 0) >= 1
    assert events.get("abuse_blocks", 0) == 0


# --- an unblock makes every instance forget the key ---


@pytest.fixture(scope="module")
def two_instances(workdir: Path, production_env: dict[str, str]) -> Iterator[list[Gateway]]:
    env = {**production_env, **FAST}
    gws: list[Gateway] = []
    try:
        for name in ("abuse-a", "abuse-b"):
            d = workdir / name
            d.mkdir()
            gws.append(start_gateway(d, env))
        yield gws
    finally:
        for gw in gws:
            gw.proc.stop()


def _forgets(gw: Gateway) -> int:
    with gw.admin() as admin:
        return int(admin.get("/metrics").json()["events"].get("abuse_forgets", 0))


def test_an_unblock_on_one_instance_makes_the_others_forget_the_key(
    two_instances: list[Gateway],
) -> None:
    a, b = two_instances
    key_id, key = _create_key(a, rps=500, burst=1000)
    wait_until(lambda: _get(b, key) != 401, timeout=10)
    _baseline_then_spike(a, [key], via=b)  # only B has seen the key's traffic
    wait_until(lambda: _listed(a, key_id) is not None, timeout=15)
    forgotten_a, forgotten_b = _forgets(a), _forgets(b)
    with a.admin() as admin:
        assert admin.post(f"/admin/abuse/unblock/{key_id}").json()["unblocked"] is True
    wait_until(lambda: _forgets(b) > forgotten_b, timeout=10)
    # A forgot once, itself: its own message, which Redis sends back to it, is not a second
    # forget. An unblock on B after it comes to A later on the same subscription.
    other_id, _ = _create_key(a, rps=500, burst=1000)
    with b.admin() as admin:
        assert admin.post(f"/admin/abuse/unblock/{other_id}").status_code == 200
    wait_until(lambda: _forgets(a) >= forgotten_a + 2, timeout=10)
    assert _forgets(a) == forgotten_a + 2
    # B judges the key afresh: the same high rate again is no verdict (no baseline yet), where
    # B's old baseline would have flagged the next spike and blocked the key again at once.
    _next_window()
    assert asyncio.run(_burst(b, key, 80)) == {200: 80}
    control_id, _ = _spike_after_a_baseline(b)
    wait_until(lambda: _listed(a, control_id) is not None, timeout=15)
    assert _listed(a, key_id) is None
    assert _get(b, key) == 200
