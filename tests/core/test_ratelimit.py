"""Token bucket and sliding window arithmetic, on integer-microsecond time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliox.core.ratelimit import (
    US,
    SlidingWindowState,
    TokenBucketState,
    sliding_window,
    sliding_window_ttl_us,
    to_us,
    token_bucket,
    token_bucket_ttl_us,
    window_limit,
)

T0 = to_us(1_795_780_800.0)  # 2026-11-27T12:00:00Z


def run_bucket(
    steps: list[tuple[int, int]], rate: float, burst: int
) -> list[tuple[bool, float, float, int]]:
    """Feed (dt_us, cost) steps; store state only when admitted, like the backends."""
    state: TokenBucketState | None = None
    now = T0
    out = []
    for dt, cost in steps:
        now += dt
        res = token_bucket(state, rate, burst, now, cost)
        if res.decision.allowed:
            state = res.state
        d = res.decision
        out.append((d.allowed, d.retry_after, d.reset_after, d.remaining))
    return out


def test_to_us_recovers_microseconds_lost_in_float_epochs() -> None:
    assert to_us(1_795_780_800.1) == 1_795_780_800_100_000
    assert to_us(0.000_001) == 1


def test_burst_is_served_then_refused_with_exact_retry_and_reset() -> None:
    state = None
    remaining = []
    for _ in range(5):
        res = token_bucket(state, 2.0, 5, T0)
        assert res.decision.allowed
        state = res.state
        remaining.append(res.decision.remaining)
    assert remaining == [4, 3, 2, 1, 0]
    refused = token_bucket(state, 2.0, 5, T0)
    assert not refused.decision.allowed
    assert refused.decision.limit == 5
    assert refused.decision.retry_after == 0.5
    assert refused.decision.reset_after == 2.5
    # Half a second later exactly one token is due, and it is granted.
    later = token_bucket(state, 2.0, 5, T0 + US // 2)
    assert later.decision.allowed
    assert later.decision.remaining == 0
    assert token_bucket(later.state, 2.0, 5, T0 + US // 2).decision.allowed is False


def test_refill_is_capped_at_burst() -> None:
    state = TokenBucketState(0.0, T0)
    res = token_bucket(state, 10.0, 3, T0 + 3600 * US)
    assert res.decision.allowed
    assert res.state.tokens == 2.0
    assert res.decision.reset_after == pytest.approx(0.1)


def test_refusals_do_not_drain_the_bucket() -> None:
    # 100 refused retries in the 0.5 s it takes one token to arrive: the next one still passes.
    steps = [(0, 1)] * 5 + [(5_000, 1)] * 99 + [(5_000, 1)]
    results = run_bucket(steps, 2.0, 5)
    assert [r[0] for r in results[:5]] == [True] * 5
    assert not any(r[0] for r in results[5:-1])
    assert results[-1][0] is True


def test_a_due_token_is_not_lost_to_float_drift() -> None:
    # Ten steps of 0.1 s at 1 token/s add up to exactly one token.
    state = TokenBucketState(0.0, T0)
    now = T0
    for _ in range(10):
        now += 100_000
        res = token_bucket(state, 1.0, 1, now, 0)
        state = res.state
    assert token_bucket(state, 1.0, 1, now).decision.allowed


def test_fractional_rate_and_cost() -> None:
    state = TokenBucketState(0.0, T0)
    res = token_bucket(state, 0.5, 10, T0, cost=3)
    assert not res.decision.allowed
    assert res.decision.retry_after == 6.0  # three tokens at half a token per second
    res = token_bucket(state, 0.5, 10, T0 + 6 * US, cost=3)
    assert res.decision.allowed
    assert res.decision.remaining == 0


def test_zero_cost_is_a_read_only_look() -> None:
    state = TokenBucketState(2.5, T0)
    res = token_bucket(state, 1.0, 5, T0, 0)
    assert res.decision.allowed
    assert res.state.tokens == 2.5
    assert res.decision.remaining == 2
    assert res.decision.retry_after == 0.0


def test_a_clock_stepping_back_refills_nothing() -> None:
    state = TokenBucketState(0.0, T0)
    res = token_bucket(state, 1.0, 5, T0 - 10 * US)
    assert not res.decision.allowed
    assert res.state.ts_us == T0


def test_bucket_ttl_is_the_time_to_full() -> None:
    assert token_bucket_ttl_us(TokenBucketState(1.0, T0), 2.0, 5) == 2 * US
    assert token_bucket_ttl_us(TokenBucketState(5.0, T0), 2.0, 5) == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, 3)), max_size=200),
)
def test_bucket_never_admits_more_than_burst_plus_refill(
    rate: float, burst: int, steps: list[tuple[int, int]]
) -> None:
    results = run_bucket(steps, rate, burst)
    elapsed = sum(dt for dt, _ in steps[1:]) / US if steps else 0
    admitted = sum(cost for (ok, *_), (_, cost) in zip(results, steps, strict=True) if ok)
    assert admitted <= burst + rate * elapsed + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.integers(0, 100_000), st.just(1)), min_size=1, max_size=60),
)
def test_bucket_retry_after_is_exact(rate: float, burst: int, steps: list[tuple[int, int]]) -> None:
    """After a refusal, a retry at now + retry_after passes and one a microsecond early does not."""
    state: TokenBucketState | None = None
    now = T0
    for dt, cost in steps:
        now += dt
        res = token_bucket(state, rate, burst, now, cost)
        if res.decision.allowed:
            state = res.state
            continue
        wait_us = res.decision.retry_after * US
        assert token_bucket(state, rate, burst, now + math.ceil(wait_us) + 1, cost).decision.allowed
        if wait_us > 2:
            early = now + math.floor(wait_us) - 1
            assert not token_bucket(state, rate, burst, early, cost).decision.allowed


def run_window(
    steps: list[tuple[int, int]], limit: int, window_us: int
) -> list[tuple[int, bool, float]]:
    state: SlidingWindowState | None = None
    now = T0
    out = []
    for dt, cost in steps:
        now += dt
        res = sliding_window(state, limit, window_us, now, cost)
        if res.decision.allowed:
            state = res.state
        out.append((now, res.decision.allowed, res.decision.retry_after))
    return out


def test_window_limit_is_rate_times_window() -> None:
    assert window_limit(100 / 60, 60) == 100
    assert window_limit(0.01, 1) == 1
    assert window_limit(2.5, 10) == 25


def test_sliding_window_weights_the_previous_window() -> None:
    window = 10 * US
    start = (T0 // window + 1) * window  # a window boundary
    state = None
    for _ in range(10):
        res = sliding_window(state, 10, window, start)
        assert res.decision.allowed
        state = res.state
    refused = sliding_window(state, 10, window, start + 1)
    assert not refused.decision.allowed
    # 11th request: this window is full (10 + 1 > 10) so it waits for the next window, where the
    # ten decay: 10 * (W - into) / W + 1 <= 10 at into = W / 10.
    assert refused.decision.retry_after == pytest.approx(10 - 1e-6 + 1.0)
    assert refused.decision.reset_after == pytest.approx(20 - 1e-6)

    # Halfway through the next window the previous ten weigh five: five more fit.
    now = start + window + window // 2
    admitted = 0
    for _ in range(10):
        res = sliding_window(state, 10, window, now)
        if res.decision.allowed:
            admitted += 1
            state = res.state
    assert admitted == 5
    res = sliding_window(state, 10, window, now)
    assert res.decision.remaining == 0
    # 10 * (5 - t) / 10 + 5 + 1 <= 10  <=>  t >= 1 s
    assert res.decision.retry_after == 1.0
    assert sliding_window(state, 10, window, now + US).decision.allowed
    assert not sliding_window(state, 10, window, now + US - 1).decision.allowed


def test_sliding_window_forgets_after_two_windows_and_ignores_a_clock_stepping_back() -> None:
    window = US
    state = SlidingWindowState(T0 // window, 7, 9)
    fresh = sliding_window(state, 10, window, T0 + 2 * window)
    assert fresh.state.previous == 0
    assert fresh.state.current == 1
    back = sliding_window(state, 10, window, T0 - 5 * window)
    assert back.state.window == state.window
    assert not back.decision.allowed  # still counted against the newest window


def test_cost_beyond_the_limit_can_never_pass() -> None:
    res = sliding_window(None, 3, US, T0, cost=4)
    assert not res.decision.allowed
    assert res.decision.retry_after == math.inf


def test_sliding_window_ttl_covers_the_next_window() -> None:
    window = 10 * US
    state = SlidingWindowState(T0 // window, 0, 1)
    ttl = sliding_window_ttl_us(state, window, T0)
    assert sliding_window(state, 1, window, T0 + ttl).state.previous == 0
    assert sliding_window(state, 1, window, T0 + ttl - 1).state.previous == 1


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 30),
    window_s=st.integers(1, 60),
    steps=st.lists(st.tuples(st.integers(0, 3_000_000), st.integers(1, 2)), max_size=150),
)
def test_sliding_window_never_exceeds_limit_within_any_window(
    limit: int, window_s: int, steps: list[tuple[int, int]]
) -> None:
    window = window_s * US
    results = run_window(steps, limit, window)
    # Within one fixed window the estimate alone (previous weight >= 0) caps admissions at limit.
    per_window: dict[int, int] = {}
    for (now, ok, _), (_, cost) in zip(results, steps, strict=True):
        if ok:
            per_window[now // window] = per_window.get(now // window, 0) + cost
    assert all(v <= limit for v in per_window.values())


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    window_s=st.integers(1, 30),
    steps=st.lists(st.tuples(st.integers(0, 2_000_000), st.just(1)), min_size=1, max_size=80),
)
def test_sliding_window_retry_after_is_exact(
    limit: int, window_s: int, steps: list[tuple[int, int]]
) -> None:
    window = window_s * US
    state: SlidingWindowState | None = None
    now = T0
    for dt, cost in steps:
        now += dt
        res = sliding_window(state, limit, window, now, cost)
        if res.decision.allowed:
            state = res.state
            continue
        wait_us = res.decision.retry_after * US
        assert sliding_window(state, limit, window, now + math.ceil(wait_us) + 1).decision.allowed
        if wait_us > 2:
            early = now + math.floor(wait_us) - 1
            assert not sliding_window(state, limit, window, early).decision.allowed
