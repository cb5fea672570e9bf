"""Rate-limit arithmetic: token bucket and sliding window, pure functions of (state, now).

Time is integer microseconds (`now_us`). An epoch in float seconds has only ~0.24 µs of
resolution, so differences of float timestamps would make a token that is exactly due arrive a
hair late; integer microseconds make elapsed time exact. `to_us` converts a float clock.

`state/lua/admit.lua` repeats these formulas operation for operation, in the same order, so the
memory and Redis backends produce bit-identical floats (both are IEEE doubles). Change one, change
the other; `tests/state/test_admission_conformance.py` compares them on random traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

US = 1_000_000
# Tolerance, in tokens (or requests), for float drift: a token that is due by exact arithmetic is
# never refused because repeated additions left 0.9999999999999998 of it.
EPS = 1e-9


def to_us(seconds: float) -> int:
    """A float clock reading as integer microseconds."""
    return round(seconds * US)


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class TokenBucketState:
    tokens: float
    ts_us: int


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class SlidingWindowState:
    window: int  # index of the current window: now_us // window_us
    previous: int
    current: int


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the full allowance is back
    retry_after: float  # seconds until the next request (of `cost` when refused) would pass


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class TokenBucketOutcome:
    decision: RateDecision
    state: TokenBucketState  # store it only if the whole request is admitted


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class SlidingWindowOutcome:
    decision: RateDecision
    state: SlidingWindowState


def token_bucket(
    state: TokenBucketState | None, rate: float, burst: int, now_us: int, cost: int = 1
) -> TokenBucketOutcome:
    """Refill at `rate` tokens/s up to `burst`, then take `cost` tokens if they are there.

    A refusal takes nothing, so a client that keeps retrying is admitted as soon as tokens are
    due. `cost=0` is a read-only view (used to report the limiter when a quota refuses).
    """
    cap = float(burst)
    if state is None:
        tokens = cap
        ts = now_us
    else:
        tokens = state.tokens
        ts = state.ts_us
        if now_us > ts:  # a clock that steps back refills nothing and keeps the later stamp
            tokens += (now_us - ts) * rate / US
            if tokens > cap:  # not min(): on every request
                tokens = cap
            ts = now_us
    allowed = tokens + EPS >= cost
    if allowed:
        tokens = tokens - cost
        if tokens < 0.0:
            tokens = 0.0
    need = 1 if allowed else cost
    retry_after = 0.0 if tokens + EPS >= need else (need - tokens) / rate
    remaining = math.floor(tokens + EPS)
    decision = RateDecision(allowed, burst, remaining, (cap - tokens) / rate, retry_after)
    return TokenBucketOutcome(decision, TokenBucketState(tokens, ts))


def token_bucket_ttl_us(state: TokenBucketState, rate: float, burst: int) -> int:
    """How long the state matters: once the bucket is full again it equals a missing one."""
    return math.ceil((burst - state.tokens) / rate * US)


def window_limit(rate: float, window_seconds: int) -> int:
    """Requests allowed per sliding window: rate * window, at least one."""
    return max(1, round(rate * window_seconds))


def sliding_window(
    state: SlidingWindowState | None, limit: int, window_us: int, now_us: int, cost: int = 1
) -> SlidingWindowOutcome:
    """Two-window weighted estimate: previous * (unelapsed share of this window) + current.

    Allow iff estimate + cost ≤ limit; a refusal is not counted.
    """
    idx = now_us // window_us
    if state is None:
        prev = 0
        cur = 0
    elif idx == state.window:
        prev = state.previous
        cur = state.current
    elif idx == state.window + 1:
        prev = state.current
        cur = 0
    elif idx > state.window:
        prev = 0
        cur = 0
    else:  # the clock stepped back into an older window: stay in the newest one seen
        idx = state.window
        prev = state.previous
        cur = state.current
    start = idx * window_us
    into = now_us - start
    if into < 0:
        into = 0
    left = window_us - into  # unelapsed part of the current window, µs
    # float(...) first: Lua multiplies in doubles, so Python must round the product the same way.
    estimate = float(prev) * left / window_us + cur
    allowed = estimate + cost <= limit + EPS
    if allowed:
        cur = cur + cost
        estimate = estimate + cost
    need = 1 if allowed else cost
    if estimate + need <= limit + EPS:
        retry_after = 0.0
    elif cur + need <= limit:
        # Within this window: wait until the previous window's weight has shrunk enough.
        retry_after = (left - float(limit - need - cur) * window_us / prev) / US
    elif need <= limit:
        # Only after this window ends, as this window's count becomes the decaying previous one.
        retry_after = (left + (window_us - float(limit - need) * window_us / cur)) / US
    else:
        retry_after = math.inf
    if cur > 0:
        reset_after = (left + window_us) / US
    elif prev > 0:
        reset_after = left / US
    else:
        reset_after = 0.0
    remaining = math.floor(limit - estimate + EPS)
    if remaining < 0:
        remaining = 0
    decision = RateDecision(allowed, limit, remaining, reset_after, retry_after)
    return SlidingWindowOutcome(decision, SlidingWindowState(idx, prev, cur))


def sliding_window_ttl_us(state: SlidingWindowState, window_us: int, now_us: int) -> int:
    """How long the state matters: to the end of the window after the current one."""
    return (state.window + 2) * window_us - now_us
