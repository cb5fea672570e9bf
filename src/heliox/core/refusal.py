"""What a 429 of the data plane says: words and numbers that agree with its headers.

The rule (docs/rate-limits.md tells it to operators and clients):

- Every limit is described in the terms of the IETF RateLimit fields: a quota `q` per window of
  `w` seconds. A token bucket of rate R/s and burst B is `q=B`, `w=B/R` (rounded, at least 1):
  B requests at once, B more after B/R seconds. A sliding window of `w` seconds allows `q=R*w`.
  The daily and monthly quotas are `q` per 86400 s and per 2592000 s (the month is the calendar
  month; 30 days is what the field can say).
- `Retry-After` is the time until a request would be admitted, in whole seconds rounded up, at
  least 1: a client that waits that long is not refused by the same limit.
- On a refusal `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (and `X-RateLimit-*`)
  describe the limit that refused: its `q`, 0, and the whole seconds (rounded up) until all of `q`
  is available again. For a quota or a block nothing is admitted before then, so Reset equals
  Retry-After; a bucket admits one request before it is full again, so Reset may be later. Never
  earlier: `Retry-After <= RateLimit-Reset` in every state.
- The problem's `detail` quotes those same numbers (q, w, Retry-After, Reset), and its members
  `quota`, `window_seconds`, `retry_after` and `reset_after` hold them for programs.

Pure: the caller passes `now` and the limiter's answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "DAILY_WINDOW",
    "MONTHLY_WINDOW",
    "Refusal",
    "block_refusal",
    "ceil_seconds",
    "iso",
    "quota_refusal",
    "rate_refusal",
    "token_bucket_window",
]

DAILY_WINDOW = 86_400
MONTHLY_WINDOW = 2_592_000
# A wait the arithmetic calls infinite (a cost above the whole allowance) is told as a day: a
# header must hold a number, and no retry within a day could change the answer.
_NEVER = DAILY_WINDOW


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: str  # "rate", "daily_quota", "monthly_quota" or "blocked"
    quota: int  # q of the limit that refused: RateLimit-Limit
    window: int  # w of that limit, seconds
    retry_after: int  # Retry-After
    reset: int  # RateLimit-Reset: all of `quota` is available again; >= retry_after
    retry_at: float  # epoch of the first moment a request is admitted
    reset_at: float  # epoch of `reset`
    detail: str


def ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up; 0 for no wait, a day for an infinite one."""
    if not math.isfinite(seconds):
        return _NEVER
    return max(0, math.ceil(seconds))


def token_bucket_window(burst: int, rate: float) -> int:
    """The `w` of a token bucket: the seconds it takes to refill from empty, at least 1."""
    window = round(burst / rate)
    return window if window > 1 else 1  # not max(): on every admitted request


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rate(value: float) -> str:
    return f"{value:.6g}"


def rate_refusal(
    *,
    now: float,
    quota: int,
    window: int,
    rate: float,
    token_bucket: bool,
    wait: float,
    until_full: float,
) -> Refusal:
    """A refusal by the rate limit: `wait` seconds until one request passes, `until_full` until
    the whole allowance is back (the limiter's retry_after and reset_after)."""
    retry = max(1, ceil_seconds(wait))
    reset = max(retry, ceil_seconds(until_full))
    if token_bucket:
        shape = f"a bucket of {quota} refilled at {_rate(rate)} per second"
    else:
        shape = "sliding window"
    detail = (
        f"rate limit exceeded: {quota} requests per {window} s ({shape}), 0 left; "
        f"the next request is admitted in {retry} s (Retry-After), "
        f"all {quota} in {reset} s (RateLimit-Reset)"
    )
    return Refusal("rate", quota, window, retry, reset, now + retry, now + reset, detail)


def quota_refusal(kind: str, *, now: float, quota: int, reset_epoch: float) -> Refusal:
    """A refusal by the daily or monthly quota (`kind` "daily_quota" / "monthly_quota"), which
    is whole again at `reset_epoch`."""
    retry = max(1, ceil_seconds(reset_epoch - now))
    daily = kind == "daily_quota"
    period = "day" if daily else "calendar month"
    detail = (
        f"{'daily' if daily else 'monthly'} quota exceeded: {quota} requests per {period}, "
        f"0 left; it resets in {retry} s (Retry-After, RateLimit-Reset), at {iso(reset_epoch)}"
    )
    window = DAILY_WINDOW if daily else MONTHLY_WINDOW
    return Refusal(kind, quota, window, retry, retry, reset_epoch, reset_epoch, detail)


def block_refusal(*, now: float, until: float, quota: int, window: int) -> Refusal:
    """A refusal by an abuse block lasting until `until`; `quota`/`window` are the rate limit's,
    of which nothing is available while the block lasts."""
    retry = max(1, ceil_seconds(until - now))
    detail = (
        "this API key is temporarily blocked after unusual traffic; requests are admitted again "
        f"in {retry} s (Retry-After, RateLimit-Reset), at {iso(until)}; "
        "an administrator can lift the block"
    )
    return Refusal("blocked", quota, window, retry, retry, until, until, detail)
