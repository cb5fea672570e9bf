"""A 429 says the same thing in words, numbers and headers, in every state the limiters can reach.

For random token buckets, sliding windows, quotas and blocks, refused by the real arithmetic
(heliox.core.ratelimit): Retry-After is at least 1 and never later than RateLimit-Reset; the
legacy fields, the refusing limit's RateLimit item and RateLimit-Policy name the same q, w and
reset; the detail quotes exactly those numbers; and Retry-After means what it says: a retry that
late is admitted, one a second earlier is not (the wait is rounded up, never more).
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from heliox.core.ratelimit import (
    US,
    SlidingWindowState,
    TokenBucketState,
    sliding_window,
    token_bucket,
    window_limit,
)
from heliox.gateway.admission_step import refusal_for, refusal_headers
from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    RATE,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionResult,
    LimitSpec,
)

NOW_US = 1_795_780_800_123_456  # 2026-11-27T12:00:00.123456Z: not on a whole second
NOW = NOW_US / US


def _result(
    reason: str,
    decision: tuple[int, int, float, float],
    *,
    daily: tuple[int, int, float] | None,
    monthly: tuple[int, int, float] | None,
    blocked_until: float | None,
) -> AdmissionResult:
    limit, remaining, reset_after, retry_after = decision
    return AdmissionResult(
        allowed=False,
        reason=reason,
        limit=limit,
        remaining=remaining,
        reset_after=reset_after,
        retry_after=retry_after,
        blocked_until=blocked_until,
        daily_limit=daily[0] if daily else None,
        daily_remaining=daily[1] if daily else None,
        daily_reset=daily[2] if daily else None,
        monthly_limit=monthly[0] if monthly else None,
        monthly_remaining=monthly[1] if monthly else None,
        monthly_reset=monthly[2] if monthly else None,
        now=NOW,
    )


@st.composite
def refused(
    draw: st.DrawFn, reasons: tuple[str, ...] = (RATE, DAILY_QUOTA, MONTHLY_QUOTA, BLOCKED)
) -> tuple[AdmissionRequest, AdmissionResult, object]:
    """A refused admission: the request, the result and the limiter state that refused it."""
    reason = draw(st.sampled_from(reasons))
    if draw(st.booleans()):
        rate = draw(st.floats(0.001, 5000, allow_nan=False))
        burst = draw(st.integers(1, 100_000))
        spec = LimitSpec(TOKEN_BUCKET, rate, burst)
        # Anything short of one token refuses; a quota or block refusal leaves any bucket.
        top = 0.999999 if reason == RATE else float(burst)
        state: object = TokenBucketState(draw(st.floats(0, top)), NOW_US)
        assert isinstance(state, TokenBucketState)
        d = token_bucket(state, rate, burst, NOW_US, 0 if reason != RATE else 1).decision
    else:
        # Up to 600 per window: the window is filled one request at a time below.
        window = draw(st.integers(1, 3600))
        rate = draw(st.floats(0.001, 600 / window, allow_nan=False))
        limit = window_limit(rate, window)
        spec = LimitSpec(SLIDING_WINDOW, rate, 1, window)
        window_us = window * US
        state = SlidingWindowState(
            NOW_US // window_us - draw(st.integers(0, 1)),
            draw(st.integers(0, limit)),
            draw(st.integers(0, limit)),
        )
        assert isinstance(state, SlidingWindowState)
        out = sliding_window(state, limit, window_us, NOW_US, 0 if reason != RATE else 1)
        d = out.decision
        if reason == RATE:
            while d.allowed:  # fill the window until it refuses
                state = out.state
                out = sliding_window(out.state, limit, window_us, NOW_US)
                d = out.decision
    day_end = NOW + draw(st.floats(0.001, 86_400))
    month_end = day_end + draw(st.floats(0, 31 * 86_400))
    daily = monthly = None
    if reason == DAILY_QUOTA or draw(st.booleans()):
        quota = draw(st.integers(1, 10**12))
        daily = (quota, 0 if reason == DAILY_QUOTA else draw(st.integers(0, quota)), day_end)
    if reason == MONTHLY_QUOTA or draw(st.booleans()):
        quota = draw(st.integers(1, 10**12))
        monthly = (quota, 0 if reason == MONTHLY_QUOTA else draw(st.integers(0, quota)), month_end)
    until = NOW + draw(st.floats(0.000001, 7 * 86_400)) if reason == BLOCKED else None
    retry = d.retry_after
    if reason == DAILY_QUOTA:
        retry = day_end - NOW
    elif reason == MONTHLY_QUOTA:
        retry = month_end - NOW
    elif until is not None:
        retry = until - NOW
    admission = AdmissionRequest("k:1", spec, quota_subject="k:1")
    result = _result(
        reason,
        (d.limit, d.remaining, d.reset_after, retry),
        daily=daily,
        monthly=monthly,
        blocked_until=until,
    )
    return admission, result, state


POLICY_NAME = {RATE: "rate", BLOCKED: "rate", DAILY_QUOTA: "daily", MONTHLY_QUOTA: "monthly"}


def _ints(pattern: str, text: str) -> tuple[int, ...]:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return tuple(int(group) for group in found.groups())


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(refused())
def test_words_numbers_and_headers_agree(
    case: tuple[AdmissionRequest, AdmissionResult, object],
) -> None:
    admission, result, _ = case
    reason = result.reason
    assert reason is not None
    refusal = refusal_for(admission, result, reason)
    sent = dict(refusal_headers(admission, result, refusal))
    retry = refusal.retry_after  # the Retry-After the sink sends, `b"%d" % retry_after`
    reset = int(sent[b"ratelimit-reset"])

    assert 1 <= retry <= reset
    assert sent[b"x-ratelimit-reset"] == sent[b"ratelimit-reset"]
    assert sent[b"ratelimit-remaining"] == sent[b"x-ratelimit-remaining"] == b"0"
    assert sent[b"ratelimit-limit"] == sent[b"x-ratelimit-limit"] == b"%d" % refusal.quota
    assert reset == refusal.reset
    if reason != RATE:
        assert retry == reset  # nothing at all passes before a quota or block ends

    name = POLICY_NAME[reason]
    items = {}
    for item in sent[b"ratelimit"].decode().split(", "):
        key, _, params = item.partition(";")
        items[key.strip('"')] = params
    assert items[name] == f"r=0;t={reset}"
    policies: dict[str, tuple[int, int]] = {}
    for policy in sent[b"ratelimit-policy"].decode().split(", "):
        name_q_w = re.fullmatch(r'"(\w+)";q=(\d+);w=(\d+)', policy)
        assert name_q_w is not None, policy
        policies[name_q_w[1]] = (int(name_q_w[2]), int(name_q_w[3]))
    if reason == BLOCKED:
        assert policies["rate"] == (refusal.quota, refusal.window)
    else:
        assert policies[name] == (refusal.quota, refusal.window)

    detail = refusal.detail
    if reason == RATE:
        assert _ints(r"(\d+) requests per (\d+) s", detail) == (refusal.quota, refusal.window)
        assert _ints(r"admitted in (\d+) s \(Retry-After\)", detail) == (retry,)
        assert _ints(r"all (\d+) in (\d+) s \(RateLimit-Reset\)", detail) == (refusal.quota, reset)
    elif reason == BLOCKED:
        assert _ints(r"admitted again in (\d+) s \(Retry-After, RateLimit-Reset\)", detail) == (
            retry,
        )
    else:
        assert _ints(r"(\d+) requests per", detail) == (refusal.quota,)
        assert _ints(r"resets in (\d+) s \(Retry-After, RateLimit-Reset\)", detail) == (retry,)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(refused(reasons=(RATE,)))
def test_retry_after_is_when_the_limiter_admits_again(
    case: tuple[AdmissionRequest, AdmissionResult, object],
) -> None:
    """A retry Retry-After seconds later passes; one a whole second earlier does not."""
    admission, result, state = case
    refusal = refusal_for(admission, result, RATE)
    spec = admission.limit
    assert spec is not None

    def admits(at_us: int) -> bool:
        if isinstance(state, TokenBucketState):
            return token_bucket(state, spec.rate, spec.burst, at_us).decision.allowed
        assert isinstance(state, SlidingWindowState)
        limit = window_limit(spec.rate, spec.window_seconds)
        return sliding_window(state, limit, spec.window_seconds * US, at_us).decision.allowed

    assert admits(NOW_US + refusal.retry_after * US)
    if refusal.retry_after > 1:
        assert not admits(NOW_US + (refusal.retry_after - 1) * US)
    if isinstance(state, TokenBucketState):
        full = token_bucket(state, spec.rate, spec.burst, NOW_US + refusal.reset * US, 0)
        assert full.decision.remaining == spec.burst  # RateLimit-Reset: all of q is back
