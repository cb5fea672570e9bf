"""Admission: the one call per request that decides block -> rate limit -> quotas, atomically.

`AdmissionBackend.admit` checks, in order, a soft block on the request's principal, the rate
limit of its subject, then its daily and monthly quotas, and commits only when all pass: a request
refused by the rate limiter uses no quota, and one refused by a quota takes no rate token.
Backends: `admission_memory.MemoryAdmission` (one process) and `admission_redis.RedisAdmission`
(shared by every gateway instance; one EVALSHA per request, Redis `TIME` as the clock).

Subjects. `subject` names the rate-limit counter ("k:42", "ip:1.2.3.4", "k:42:r:7" for a route
override); the principal (`quota_subject`, or `subject` when that is empty) names the quota
counters and is whom soft blocks apply to. On Redis every key of one request shares the
principal's hash tag, so the script is cluster-safe. A quota is counted only while the request
carries it (`daily_quota` / `monthly_quota` not None).

Abuse detection: the detector (`heliox.core.anomaly.AbuseDetector`) lives in each gateway process,
fed after each response; with several instances each sees its share of a key's traffic, which
scales baseline and spike alike. Its verdicts become soft blocks stored here (`block`), so every
instance enforces them, expiring by themselves at `until`. Counters in the backend would cost a
Redis round trip per response for a signal that is statistical anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from heliox.core.quota import QuotaPeriod
from heliox.core.ratelimit import window_limit

TOKEN_BUCKET = "token_bucket"
SLIDING_WINDOW = "sliding_window"
ALGORITHMS = (TOKEN_BUCKET, SLIDING_WINDOW)

# AdmissionResult.reason values
RATE = "rate"
DAILY_QUOTA = "daily_quota"
MONTHLY_QUOTA = "monthly_quota"
BLOCKED = "blocked"

# Quota counters outlive their period by this much, so the closing count can still be read (UI)
# for a while after the reset.
QUOTA_TTL_MARGIN_SECONDS = 3600
# Rate-limit state is kept this long past the moment it becomes equal to a missing entry (a full
# bucket, an empty window), in both backends, so whichever copy expires first they decide alike.
STATE_TTL_MARGIN_SECONDS = 1


class AdmissionUnavailable(Exception):
    """The backend could not decide (e.g. Redis down): the caller fails open or closed per route."""


def key_subject(key_id: int) -> str:
    """An API key as a principal: its quotas, rate limit and soft blocks ("k:42")."""
    return f"k:{key_id}"


def slowdown_subject(key_id: int) -> str:
    """Where a rate-multiplier verdict is stored: listed with the blocks, but not one (admission
    refuses only blocks on the key's own subject)."""
    return "m:" + key_subject(key_id)


def parse_key_subject(subject: str) -> tuple[int | None, bool]:
    """(key id, is a slowdown) of a block subject; None for subjects that are not keys."""
    slowdown = subject.startswith("m:")
    rest = subject[2:] if slowdown else subject
    if rest.startswith("k:") and rest[2:].isdigit():
        return int(rest[2:]), slowdown
    return None, slowdown


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A rate limit. Token bucket: `rate` tokens/s, up to `burst`. Sliding window: at most
    round(rate * window_seconds) requests per `window_seconds` (burst unused)."""

    algorithm: str
    rate: float
    burst: int = 1
    window_seconds: int = 1

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown rate-limit algorithm {self.algorithm!r}")
        if not 0 < self.rate < math.inf or self.burst < 1 or self.window_seconds < 1:
            raise ValueError("rate must be finite and > 0, burst >= 1 and window_seconds >= 1")

    @property
    def limit(self) -> int:
        """What RateLimit-Limit reports: the burst, or the requests allowed per window."""
        if self.algorithm == TOKEN_BUCKET:
            return self.burst
        return window_limit(self.rate, self.window_seconds)


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class AdmissionRequest:
    subject: str
    limit: LimitSpec | None = None
    daily_quota: int | None = None
    monthly_quota: int | None = None
    quota_subject: str = ""
    cost: int = 1
    # A backend's own per-request-shape work, kept with the request (see
    # heliox.state.admission_redis.AdmitCall); not part of what is asked.
    backend_memo: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.cost < 0:
            raise ValueError("cost must not be negative (it would hand back quota)")

    @property
    def principal(self) -> str:
        """Whom blocks apply to, and the hash tag every key of this request shares."""
        return self.quota_subject or self.subject


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class AdmissionResult:
    allowed: bool
    reason: str | None  # RATE | DAILY_QUOTA | MONTHLY_QUOTA | BLOCKED, None when allowed
    # The rate limiter (all 0 when the request has no limit). When a quota or a block refused the
    # request these describe the limiter untouched, since no token was taken.
    limit: int
    remaining: int
    reset_after: float  # seconds until the full allowance is back
    retry_after: float  # seconds until a retry can pass: for the refusing limit, quota or block
    blocked_until: float | None  # epoch, when reason is BLOCKED
    daily_limit: int | None
    daily_remaining: int | None
    daily_reset: float | None  # epoch of the next daily reset
    monthly_limit: int | None
    monthly_remaining: int | None
    monthly_reset: float | None
    now: float  # the backend's clock (Redis TIME on Redis), epoch seconds
    # Shared backends only, when asked and admitted: the cache's removal generation, read in the
    # same round trip (see heliox.state.cache_l1). None when unknown.
    cache_generation: bytes | None = None


@dataclass(frozen=True, slots=True)
class BlockInfo:
    subject: str
    until: float  # epoch seconds
    info: dict[str, Any] = field(default_factory=dict)  # reason, score, observed, baseline, ...


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    quota_subject: str
    daily_used: int
    daily_limit: int | None
    daily_period: str  # "d:2026-11-27"
    daily_reset: float  # epoch
    monthly_used: int
    monthly_limit: int | None
    monthly_period: str  # "m:2026-11"
    monthly_reset: float
    now: float

    @property
    def daily_remaining(self) -> int | None:
        return None if self.daily_limit is None else max(0, self.daily_limit - self.daily_used)

    @property
    def monthly_remaining(self) -> int | None:
        return (
            None if self.monthly_limit is None else max(0, self.monthly_limit - self.monthly_used)
        )


class AdmissionBackend(Protocol):
    async def admit(self, req: AdmissionRequest) -> AdmissionResult:
        """Block check, rate limit, quotas; commit only if all pass. Raises AdmissionUnavailable."""
        ...

    async def block(self, subject: str, until: float, info: dict[str, Any]) -> None:
        """Soft-block a principal until `until` (epoch, backend clock), replacing any block; an
        `until` already past lifts it."""
        ...

    async def unblock(self, subject: str) -> bool:
        """Lift a block; True if one was in force."""
        ...

    async def blocked(self) -> list[BlockInfo]:
        """Blocks in force, soonest expiry first."""
        ...

    async def usage(
        self,
        quota_subject: str,
        *,
        daily_limit: int | None = None,
        monthly_limit: int | None = None,
    ) -> QuotaUsage:
        """This period's quota use; the limits live in the config, so pass them to get remaining."""
        ...

    async def now(self) -> float:
        """The clock this backend decides with, epoch seconds."""
        ...


def build_result(
    req: AdmissionRequest,
    allowed: bool,
    reason: str | None,
    limit: int,
    remaining: int,
    reset_after: float,
    retry_after: float,
    blocked_until: float | None,
    daily: QuotaPeriod | None,
    daily_used: int | None,
    monthly: QuotaPeriod | None,
    monthly_used: int | None,
    now: float,
    cache_generation: bytes | None = None,
) -> AdmissionResult:
    """Assemble a result (for backends); quota remaining is None where the counter was not read.

    Called for every request: the fields go by position, in `AdmissionResult`'s order (by name
    they cost twice as much), and conditionals stand in for max()."""
    dq, mq = req.daily_quota, req.monthly_quota
    daily_left = None
    if dq is not None and daily_used is not None:
        daily_left = dq - daily_used if daily_used < dq else 0
    monthly_left = None
    if mq is not None and monthly_used is not None:
        monthly_left = mq - monthly_used if monthly_used < mq else 0
    return AdmissionResult(
        allowed,
        reason,
        limit,
        remaining,
        reset_after,
        retry_after,
        blocked_until,
        dq,
        daily_left,
        None if daily is None else daily.end,
        mq,
        monthly_left,
        None if monthly is None else monthly.end,
        now,
        cache_generation,
    )
