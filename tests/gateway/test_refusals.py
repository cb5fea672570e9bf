"""The refusal guard alone, on an injected clock: bad keys per address, sampled log rows."""

from __future__ import annotations

import json

from heliox.config import load_settings
from heliox.gateway.exchange import Exchange
from heliox.gateway.refusals import RefusalGuard
from heliox.metrics import Metrics
from tests.support import FakeClock

T0 = 1_795_780_800.0


def guard(clock: FakeClock, **settings: object) -> tuple[RefusalGuard, Metrics]:
    metrics = Metrics()
    s = load_settings(auth_failure_rate=2, auth_failure_burst=5, **settings)
    return RefusalGuard(s, metrics, clock=clock, max_addresses=50), metrics


def refused(address: str, status: int = 401) -> Exchange:
    ex = Exchange("GET", 0.0)
    ex.client_ip, ex.status = address, status
    return ex


def test_bad_keys_get_401_up_to_the_burst_then_429_with_the_wait() -> None:
    clock = FakeClock(T0)
    g, metrics = guard(clock)
    assert [g.bad_key("192.0.2.1") for _ in range(7)] == [None] * 5 + [1, 1]
    assert g.bad_key("192.0.2.2") is None  # per address
    clock.now += 0.5  # 2 per second: one more is due
    assert g.bad_key("192.0.2.1") is None
    assert g.bad_key("192.0.2.1") == 1
    assert metrics.events["bad_key_limited"] == 3


def test_a_bad_key_429_records_the_limit_and_its_numbers_for_the_log_row() -> None:
    clock = FakeClock(T0)
    g, _ = guard(clock)
    ex = refused("192.0.2.1", 429)
    retry = next(r for r in (g.bad_key("192.0.2.1") for _ in range(6)) if r is not None)
    g.note_bad_key(ex, retry)
    assert ex.refused_by == "bad_key"
    assert ex.refusal is not None
    assert json.loads(ex.refusal) == {"retry_after": 1, "rate": 2, "burst": 5, "per": "address"}
    assert refused("192.0.2.2").refused_by is None  # nothing on requests it did not refuse


def test_rows_of_refusals_are_sampled_per_address_and_for_the_process() -> None:
    clock = FakeClock(T0)
    g, metrics = guard(clock, refused_log_rate=8)
    kept = [g.keep_row(refused("192.0.2.1")) for _ in range(20)]
    assert kept == [True] * 5 + [False] * 15
    others = [g.keep_row(refused(f"198.51.100.{i}", 404)) for i in range(10)]
    assert others.count(True) == 3  # the process-wide budget: 8 at once, 5 used already
    assert metrics.events["refused_log_rows_dropped"] == 15 + 7


def test_answers_that_are_not_refusals_are_always_logged() -> None:
    g, _ = guard(FakeClock(T0), refused_log_rate=0)
    served = refused("192.0.2.1", 200)
    upstream_404 = refused("192.0.2.1", 404)
    upstream_404.upstream_seconds = 0.01
    cached = refused("192.0.2.1", 404)
    cached.cache_status = "NEGATIVE"
    gone = refused("192.0.2.1", 499)
    assert all(g.keep_row(ex) for ex in (served, upstream_404, cached, gone))
    assert not g.keep_row(refused("192.0.2.1"))  # REFUSED_LOG_RATE=0: no refusal rows at all


def test_the_maps_of_addresses_are_capped() -> None:
    g, _ = guard(FakeClock(T0))
    for i in range(1000):
        g.bad_key(f"2001:db8::{i:x}")
        g.keep_row(refused(f"2001:db8::{i:x}"))
    assert len(g._failures) <= 50 and len(g._rows) <= 50
