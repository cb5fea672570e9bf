"""The rate-limit arithmetic over every limit the admin API admits: finite answers, reset times
that fit in a date, and state lifetimes Redis takes as exact integer TTLs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from heliox.core.bounds import MAX_BURST, MAX_RATE, MAX_WINDOW_SECONDS, MIN_RATE, clamp_rate
from heliox.core.quota import daily_period, monthly_period
from heliox.core.ratelimit import (
    US,
    RateDecision,
    TokenBucketState,
    sliding_window,
    sliding_window_ttl_us,
    token_bucket,
    token_bucket_ttl_us,
    window_limit,
)

# Redis's Lua prints a number without an exponent, as PEXPIRE needs, only below 1e17; a double
# holds every integer exactly only below 2^53.
LUA_INTEGER_LIMIT = min(1e17, 2.0**53)
STATE_MARGIN_MS = 1000

rates = st.floats(min_value=MIN_RATE, max_value=MAX_RATE, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=MAX_BURST)
windows = st.integers(min_value=1, max_value=MAX_WINDOW_SECONDS)
# 2001 to 2099, in microseconds
epochs_us = st.integers(min_value=978_307_200 * US, max_value=4_102_444_800 * US)
gaps_us = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=12)


def _sane(d: RateDecision, now_us: int) -> None:
    for seconds in (d.reset_after, d.retry_after):
        assert math.isfinite(seconds) and seconds >= 0
        # RateLimit-Reset and Retry-After: whole seconds, a handful of digits.
        assert len(b"%d" % max(0, int(-(-seconds // 1)))) <= 16
    # A refusal names the moment it ends (reset_at): it must be a date.
    datetime.fromtimestamp(now_us / US + d.retry_after, UTC)
    assert 0 <= d.remaining <= max(d.limit, 0)


def _replay(step: Callable[[Any, int], Any], start: int, gaps: list[int]) -> Iterator[Any]:
    """Requests at `start` + each gap in turn, the state carried from each admitted one (as the
    stores keep it); checks every decision and yields (state, time) after each admission."""
    state = None
    now = start
    for gap in gaps:
        now += gap
        out = step(state, now)
        _sane(out.decision, now)
        if out.decision.allowed:
            state = out.state
            yield state, now


@settings(max_examples=400, deadline=None)
@given(rate=rates, burst=bursts, start=epochs_us, gaps=gaps_us)
def test_token_bucket_stays_finite_for_every_admitted_limit(
    rate: float, burst: int, start: int, gaps: list[int]
) -> None:
    for state, _ in _replay(lambda s, t: token_bucket(s, rate, burst, t), start, gaps):
        assert token_bucket_ttl_us(state, rate, burst) >= 0
        # admit.lua: PEXPIRE ceil((burst - tokens) / rate * 1000) + margin
        ttl_ms = math.ceil((burst - state.tokens) / rate * 1000) + STATE_MARGIN_MS
        assert ttl_ms < LUA_INTEGER_LIMIT


@settings(max_examples=400, deadline=None)
@given(
    rate=rates,
    burst=bursts,
    fill=st.floats(min_value=0, max_value=1),
    now=epochs_us,
    age=st.integers(min_value=0, max_value=10**12),
)
def test_any_bucket_state_stays_finite(
    rate: float, burst: int, fill: float, now: int, age: int
) -> None:
    """States a long run of requests reaches (an empty bucket of the largest burst at the
    slowest rate) without replaying the run."""
    state = TokenBucketState(tokens=burst * fill, ts_us=now - age)
    for cost in (0, 1):
        out = token_bucket(state, rate, burst, now, cost)
        _sane(out.decision, now)
    ttl_ms = math.ceil((burst - out.state.tokens) / rate * 1000) + STATE_MARGIN_MS
    assert ttl_ms < LUA_INTEGER_LIMIT
    assert 0 <= token_bucket_ttl_us(out.state, rate, burst) < 2**63


@settings(max_examples=400, deadline=None)
@given(rate=rates, window=windows, start=epochs_us, gaps=gaps_us)
def test_sliding_window_stays_finite_for_every_admitted_limit(
    rate: float, window: int, start: int, gaps: list[int]
) -> None:
    limit = window_limit(rate, window)
    assert 1 <= limit < LUA_INTEGER_LIMIT
    window_us = window * US
    for state, now in _replay(lambda s, t: sliding_window(s, limit, window_us, t), start, gaps):
        ttl_us = sliding_window_ttl_us(state, window_us, now)
        assert 0 < ttl_us <= 2 * window_us
        assert math.ceil(ttl_us / 1000) + STATE_MARGIN_MS < LUA_INTEGER_LIMIT


@given(st.floats(max_value=MAX_RATE) | st.just(math.nan))
def test_any_stored_rate_is_brought_within_the_bounds(rate: float) -> None:
    """Any rate a row can hold (the API has always refused more than MAX_RATE, and infinity)."""
    clamped = clamp_rate(rate)
    assert MIN_RATE <= clamped <= MAX_RATE
    if rate >= MIN_RATE:
        assert clamped == rate


@given(now=st.floats(min_value=978_307_200, max_value=4_102_444_800))
def test_quota_periods_end_soon_after_now(now: float) -> None:
    for tz in ("UTC", "Pacific/Kiritimati", "America/St_Johns", "Australia/Lord_Howe"):
        day, month = daily_period(now, tz), monthly_period(now, tz)
        assert 0 < day.end - now <= 25 * 3600
        assert 0 < month.end - now <= 32 * 86400
