"""In-process admission (embedded mode): the core arithmetic over bounded maps, injected clock.

Every map is capped. Entries carry an expiry after which they equal a missing one (a full bucket,
an empty window, a finished quota period, a lapsed block), so expired entries are dropped as they
are met and, past the cap, the least recently written entry goes. Evicting a live rate-limit entry
hands that subject a full allowance, a live quota counter restarts, a live block is lifted. All
are counted in `evictions`; with the default caps they need 10^5 subjects active at once.

`admit` never awaits, so each decision is atomic on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from datetime import tzinfo
from typing import Any, Generic, TypeVar

from heliox.core.quota import QuotaCalendar, QuotaPeriod
from heliox.core.ratelimit import (
    US,
    RateDecision,
    SlidingWindowState,
    TokenBucketState,
    sliding_window,
    sliding_window_ttl_us,
    to_us,
    token_bucket,
    token_bucket_ttl_us,
)
from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    QUOTA_TTL_MARGIN_SECONDS,
    RATE,
    STATE_TTL_MARGIN_SECONDS,
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionResult,
    BlockInfo,
    LimitSpec,
    QuotaUsage,
    build_result,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_STATE_MARGIN_US = STATE_TTL_MARGIN_SECONDS * US
_QUOTA_MARGIN_US = QUOTA_TTL_MARGIN_SECONDS * US
_NO_LIMIT = RateDecision(True, 0, 0, 0.0, 0.0)


class ExpiringMap(Generic[K, V]):
    """A dict of values with expiry times (µs), ordered by last write, capped at `maxsize`."""

    __slots__ = ("_d", "evictions", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._d: dict[K, tuple[V, int]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: K, now_us: int) -> V | None:
        entry = self._d.get(key)
        if entry is None:
            return None
        if entry[1] <= now_us:
            del self._d[key]
            return None
        return entry[0]

    def put(self, key: K, value: V, expires_us: int, now_us: int) -> None:
        d = self._d
        if d.pop(key, None) is None:
            # A new entry: drop expired ones at the old end as we pass, a couple per insert, so
            # maps of idle subjects shrink without a sweep.
            for _ in range(2):
                first = next(iter(d), None)
                if first is None or d[first][1] > now_us:
                    break
                del d[first]
            if len(d) >= self.maxsize and d.pop(next(iter(d)))[1] > now_us:
                self.evictions += 1
        d[key] = (value, expires_us)

    def pop(self, key: K) -> V | None:
        entry = self._d.pop(key, None)
        return None if entry is None else entry[0]

    def live(self, now_us: int) -> list[tuple[K, V, int]]:
        """Unexpired entries (and forget the expired ones)."""
        dead = [k for k, (_, exp) in self._d.items() if exp <= now_us]
        for k in dead:
            del self._d[k]
        return [(k, v, exp) for k, (v, exp) in self._d.items()]


class MemoryAdmission:
    """Admission for one process. `clock` returns epoch seconds (inject a fake one in tests)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        quota_tz: str | tzinfo = "UTC",
        max_subjects: int = 100_000,
        max_quota_counters: int = 200_000,
        max_blocks: int = 100_000,
    ) -> None:
        self._clock = clock
        self._calendar = QuotaCalendar(quota_tz)
        self._buckets: ExpiringMap[tuple[str, str], TokenBucketState] = ExpiringMap(max_subjects)
        self._windows: ExpiringMap[tuple[str, str], SlidingWindowState] = ExpiringMap(max_subjects)
        self._quotas: ExpiringMap[tuple[str, str], int] = ExpiringMap(max_quota_counters)
        self._blocks: ExpiringMap[str, tuple[int, dict[str, Any]]] = ExpiringMap(max_blocks)

    @property
    def evictions(self) -> int:
        """Entries pushed out by the caps before they expired (see the module docstring)."""
        maps = (self._buckets, self._windows, self._quotas, self._blocks)
        return sum(m.evictions for m in maps)

    def sizes(self) -> dict[str, int]:
        return {
            "token_buckets": len(self._buckets),
            "sliding_windows": len(self._windows),
            "quota_counters": len(self._quotas),
            "blocks": len(self._blocks),
        }

    async def now(self) -> float:
        return to_us(self._clock()) / US

    async def admit(self, req: AdmissionRequest) -> AdmissionResult:
        return self.admit_sync(req)

    def admit_sync(self, req: AdmissionRequest) -> AdmissionResult:
        """The decision itself; callers on the event loop may use it directly (it never blocks)."""
        now_us = to_us(self._clock())
        now = now_us / US
        principal = req.principal
        cost = req.cost
        spec = req.limit
        daily = self._calendar.daily(now) if req.daily_quota is not None else None
        monthly = self._calendar.monthly(now) if req.monthly_quota is not None else None

        block = self._blocks.get(principal, now_us)
        if block is not None and block[0] > now_us:
            return build_result(
                req, False, BLOCKED, spec.limit if spec else 0, 0, 0.0, (block[0] - now_us) / US,
                block[0] / US, daily, None, monthly, None, now,
            )  # fmt: skip

        dused = 0 if daily is None else self._quotas.get((principal, daily.id), now_us) or 0
        mused = 0 if monthly is None else self._quotas.get((principal, monthly.id), now_us) or 0

        rkey = (principal, req.subject)
        decision: RateDecision | None = None
        state: TokenBucketState | SlidingWindowState | None = None
        if spec is not None:
            decision, state = self._rate(spec, rkey, now_us, cost)
            if not decision.allowed:
                return build_result(
                    req, False, RATE, decision.limit, decision.remaining, decision.reset_after,
                    decision.retry_after, None, daily, dused, monthly, mused, now,
                )  # fmt: skip

        refused: tuple[str, QuotaPeriod] | None = None
        if daily is not None and req.daily_quota is not None and dused + cost > req.daily_quota:
            refused = (DAILY_QUOTA, daily)
        elif (
            monthly is not None
            and req.monthly_quota is not None
            and (mused + cost > req.monthly_quota)
        ):
            refused = (MONTHLY_QUOTA, monthly)
        if refused is not None:
            reason, period = refused
            # No token was taken: report the limiter as it stands (a zero-cost look).
            view = self._rate(spec, rkey, now_us, 0)[0] if spec is not None else _NO_LIMIT
            return build_result(
                req, False, reason, view.limit, view.remaining, view.reset_after,
                (to_us(period.end) - now_us) / US, None, daily, dused, monthly, mused, now,
            )  # fmt: skip

        if spec is not None and state is not None:
            self._store(spec, rkey, state, now_us)
        if daily is not None:
            dused += cost
            self._quotas.put((principal, daily.id), dused, _quota_expiry(daily), now_us)
        if monthly is not None:
            mused += cost
            self._quotas.put((principal, monthly.id), mused, _quota_expiry(monthly), now_us)
        d = decision or _NO_LIMIT
        return build_result(
            req, True, None, d.limit, d.remaining, d.reset_after, d.retry_after, None,
            daily, dused, monthly, mused, now,
        )  # fmt: skip

    def _rate(
        self, spec: LimitSpec, rkey: tuple[str, str], now_us: int, cost: int
    ) -> tuple[RateDecision, TokenBucketState | SlidingWindowState]:
        if spec.algorithm == TOKEN_BUCKET:
            tb = token_bucket(self._buckets.get(rkey, now_us), spec.rate, spec.burst, now_us, cost)
            return tb.decision, tb.state
        window_us = spec.window_seconds * US
        sw = sliding_window(self._windows.get(rkey, now_us), spec.limit, window_us, now_us, cost)
        return sw.decision, sw.state

    def _store(
        self,
        spec: LimitSpec,
        rkey: tuple[str, str],
        state: TokenBucketState | SlidingWindowState,
        now_us: int,
    ) -> None:
        if isinstance(state, TokenBucketState):
            ttl = token_bucket_ttl_us(state, spec.rate, spec.burst)
            self._buckets.put(rkey, state, now_us + ttl + _STATE_MARGIN_US, now_us)
        else:
            ttl = sliding_window_ttl_us(state, spec.window_seconds * US, now_us)
            self._windows.put(rkey, state, now_us + ttl + _STATE_MARGIN_US, now_us)

    async def block(self, subject: str, until: float, info: dict[str, Any]) -> None:
        now_us = to_us(self._clock())
        until_us = to_us(until)
        if until_us <= now_us:
            self._blocks.pop(subject)
            return
        self._blocks.put(subject, (until_us, dict(info)), until_us, now_us)

    async def unblock(self, subject: str) -> bool:
        now_us = to_us(self._clock())
        entry = self._blocks.pop(subject)
        return entry is not None and entry[0] > now_us

    async def blocked(self) -> list[BlockInfo]:
        now_us = to_us(self._clock())
        live = self._blocks.live(now_us)
        live.sort(key=lambda e: (e[1][0], e[0]))
        return [
            BlockInfo(subject, until_us / US, dict(info)) for subject, (until_us, info), _ in live
        ]

    async def usage(
        self,
        quota_subject: str,
        *,
        daily_limit: int | None = None,
        monthly_limit: int | None = None,
    ) -> QuotaUsage:
        now_us = to_us(self._clock())
        now = now_us / US
        daily = self._calendar.daily(now)
        monthly = self._calendar.monthly(now)
        return QuotaUsage(
            quota_subject=quota_subject,
            daily_used=self._quotas.get((quota_subject, daily.id), now_us) or 0,
            daily_limit=daily_limit,
            daily_period=daily.id,
            daily_reset=daily.end,
            monthly_used=self._quotas.get((quota_subject, monthly.id), now_us) or 0,
            monthly_limit=monthly_limit,
            monthly_period=monthly.id,
            monthly_reset=monthly.end,
            now=now,
        )


def _quota_expiry(period: QuotaPeriod) -> int:
    return to_us(period.end) + _QUOTA_MARGIN_US
