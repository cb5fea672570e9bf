"""The circuit breaker and the recent-events count: pure, driven by an injected clock."""

from __future__ import annotations

import pytest

from heliox.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, RecentEvents


def test_opens_after_consecutive_failures_only() -> None:
    b = Breaker(threshold=3, base_open=1.0, max_open=30.0)
    assert not b.failure(0.0) and not b.failure(0.1)
    b.ok()  # a success breaks the run
    assert not b.failure(0.2) and not b.failure(0.3)
    assert b.closed
    assert b.failure(0.4)
    assert b.state == OPEN and not b.closed
    assert b.wait(0.4) == pytest.approx(1.0)


def test_failures_while_open_do_not_extend_it_and_successes_do_not_close_it() -> None:
    b = Breaker(threshold=1, base_open=1.0, max_open=30.0)
    assert b.failure(10.0)
    assert not b.failure(10.5)  # a call in flight when it opened
    b.ok()
    assert b.state == OPEN and b.retry_at == 11.0


def test_probe_is_due_after_the_interval_and_failed_probes_double_it_up_to_the_cap() -> None:
    b = Breaker(threshold=1, base_open=1.0, max_open=5.0)
    b.failure(0.0)
    assert not b.probe_due(0.9)
    now = 1.0
    opened_for = []
    for _ in range(5):
        assert b.probe_due(now)
        assert b.state == HALF_OPEN and not b.closed  # requests still skip Redis while probing
        assert b.failure(now)
        opened_for.append(b.open_for)
        now = b.retry_at
    assert opened_for == [2.0, 4.0, 5.0, 5.0, 5.0]
    assert b.probe_due(now)
    b.success(now)
    assert b.state == CLOSED and b.closed
    b.failure(now)  # the next trip starts from the base interval again
    assert b.open_for == 1.0


def test_recent_events_count_the_window_and_stay_bounded() -> None:
    ev = RecentEvents(window=60)
    for i in range(1000):
        ev.add(i * 0.5)  # two a second for 500 s
    assert ev.count(499.9) == 120
    assert len(ev._buckets) <= 61
    assert ev.count(1000.0) == 0
