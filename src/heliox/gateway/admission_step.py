"""Admission on the request path: soft block → rate limit → quotas, in one backend call.

Which limit applies: the route's override if it has one (its own counter per key, or per client
IP on a public route), else the key's, else DEFAULT_RATE_LIMIT_RPS / _BURST. Quotas belong to
the key. The answer's rate-limit fields go on every response (unless the route hides them);
a refusal is a 429 problem+json saying which limit was hit and when it resets, in the same
numbers as its Retry-After and RateLimit-* fields (the rule is in heliox.core.refusal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from heliox.config import Settings
from heliox.core.bounds import clamp_rate
from heliox.core.breaker import RecentEvents
from heliox.core.refusal import (
    Refusal,
    block_refusal,
    iso,
    quota_refusal,
    rate_refusal,
    token_bucket_window,
)
from heliox.gateway.exchange import ResponseSink
from heliox.gateway.responses import Headers
from heliox.metrics import Metrics
from heliox.snapshot import KeyConfig, RouteConfig
from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    RATE,
    TOKEN_BUCKET,
    AdmissionBackend,
    AdmissionRequest,
    AdmissionResult,
    LimitSpec,
    key_subject,
    parse_key_subject,
)
from heliox.state.admission_memory import MemoryAdmission

log = logging.getLogger("heliox.admission")

REQUEST_MEMO_SIZE = 65_536

PROBLEM_TYPES = {
    RATE: "https://heliox.dev/problems/rate-limited",
    DAILY_QUOTA: "https://heliox.dev/problems/daily-quota-exceeded",
    MONTHLY_QUOTA: "https://heliox.dev/problems/monthly-quota-exceeded",
    BLOCKED: "https://heliox.dev/problems/key-blocked",
}
TITLES = {
    RATE: "Rate limit exceeded",
    DAILY_QUOTA: "Daily quota exceeded",
    MONTHLY_QUOTA: "Monthly quota exceeded",
    BLOCKED: "API key temporarily blocked",
}


class AdmissionStep:
    def __init__(self, backend: AdmissionBackend, settings: Settings, metrics: Metrics) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self._default = LimitSpec(
            TOKEN_BUCKET, settings.default_rate_limit_rps, settings.default_rate_limit_burst
        )
        self._specs: dict[tuple[object, ...], LimitSpec] = {}
        # (route id, key id) -> (route, key, request): see request_for.
        self._requests: dict[tuple[int, int], tuple[RouteConfig, KeyConfig, AdmissionRequest]] = {}
        # ABUSE_ACTION=multiplier: key id -> (until, multiplier), from the shared backend.
        self.slowed: dict[int, tuple[float, float]] = {}
        # Set by the gateway: fail-open admissions of the last minute, for /health and the UI.
        self.fail_open: RecentEvents | None = None

    def _spec(
        self, algorithm: str | None, rps: float | None, burst: int | None, window: int
    ) -> LimitSpec:
        cache_key = (algorithm, rps, burst, window)
        spec = self._specs.get(cache_key)
        if spec is None:
            if rps is None:
                spec = self._default
            else:
                # The admin API bounds every limit (heliox.core.bounds); only the rate's floor is
                # newer than the API (it took any rate above 0), so a row stored before it may
                # hold a rate the arithmetic cannot handle: brought up to MIN_RATE here.
                rate = clamp_rate(rps)
                if burst is None:
                    burst = max(1, round(rate * 2))
                spec = LimitSpec(algorithm or TOKEN_BUCKET, rate, burst, max(1, window))
            if len(self._specs) > 4096:
                self._specs.clear()
            self._specs[cache_key] = spec
        return spec

    def request_for(
        self, route: RouteConfig, key: KeyConfig | None, client_ip: str
    ) -> AdmissionRequest:
        """What admission asks of the backend. A key's request depends on the route and key
        alone (unless a slowdown applies), so it is built once per pair of them: a reloaded
        snapshot brings new objects, and the identity check then rebuilds it."""
        if key is None or (self.slowed and key.id in self.slowed):
            return self._build_request(route, key, client_ip)
        memo_key = (route.id, key.id)
        found = self._requests.get(memo_key)
        if found is not None and found[0] is route and found[1] is key:
            return found[2]
        request = self._build_request(route, key, client_ip)
        if len(self._requests) >= REQUEST_MEMO_SIZE:
            self._requests.clear()  # bounded: a spread of keys costs rebuilding, never memory
        self._requests[memo_key] = (route, key, request)
        return request

    def _build_request(
        self, route: RouteConfig, key: KeyConfig | None, client_ip: str
    ) -> AdmissionRequest:
        if key is not None:
            principal = key_subject(key.id)
            if route.rate_limit_rps is not None:
                spec = self._spec(
                    route.rate_limit_algorithm or key.rate_limit_algorithm,
                    route.rate_limit_rps,
                    route.rate_limit_burst,
                    key.rate_limit_window_seconds,
                )
                subject = f"{principal}:r:{route.id}"
            else:
                spec = self._spec(
                    key.rate_limit_algorithm,
                    key.rate_limit_rps,
                    key.rate_limit_burst,
                    key.rate_limit_window_seconds,
                )
                subject = principal
            slowed = self.slowed.get(key.id) if self.slowed else None
            if slowed is not None and slowed[0] > time.time():
                # A fresh, smaller allowance while the slowdown lasts.
                m = slowed[1]
                spec = LimitSpec(
                    spec.algorithm,
                    clamp_rate(spec.rate * m),  # a multiplier below 1 may go under MIN_RATE
                    max(1, round(spec.burst * m)),
                    spec.window_seconds,
                )
                subject += ":slow"
            return AdmissionRequest(
                subject=subject,
                limit=spec,
                daily_quota=key.daily_quota,
                monthly_quota=key.monthly_quota,
                quota_subject=principal,
            )
        # Public route: limits per client address (the canonical form headers.client_ip gives).
        spec = self._spec(
            route.rate_limit_algorithm, route.rate_limit_rps, route.rate_limit_burst, 1
        )
        return AdmissionRequest(subject=f"ip:{client_ip}:r:{route.id}", limit=spec)

    def slow_down(self, key_id: int, until: float, multiplier: float) -> None:
        """Apply a slowdown the abuse monitor decided here at once (before the next refresh)."""
        self.slowed[key_id] = (until, multiplier)

    async def watch_slowdowns(self, interval: float = 1.0) -> None:
        """Keep `slowed` in step with the backend, so every instance applies every slowdown."""
        while True:
            try:
                current: dict[int, tuple[float, float]] = {}
                for b in await self.backend.blocked():
                    key_id, slowdown = parse_key_subject(b.subject)
                    if key_id is not None and slowdown:
                        current[key_id] = (b.until, float(b.info.get("multiplier", 1.0)))
                self.slowed = current
            except Exception as exc:  # the store is down: keep what we knew
                log.debug("could not refresh slowdowns: %s", exc)
            await asyncio.sleep(interval)

    async def admit(
        self, route: RouteConfig, key: KeyConfig | None, client_ip: str, sink: ResponseSink
    ) -> bool:
        """True to go on; False when a refusal has been sent."""
        admission = self.request_for(route, key, client_ip)
        backend = self.backend
        try:
            if type(backend) is MemoryAdmission:
                result = backend.admit_sync(admission)  # in process: no await, one coroutine fewer
            else:
                result = await backend.admit(admission)
        except Exception as exc:
            # Authentication already happened; only the counters are unknown.
            self.metrics.count("admission_unavailable")
            if route.fail_mode == "closed":
                self.metrics.admission[(route.name, "refused", "unavailable")] += 1
                sink.ex.refused_by = UNAVAILABLE
                sink.ex.refusal = _UNAVAILABLE_RECORD
                await sink.problem(
                    503,
                    "Rate limiter unavailable",
                    f"route {route.name!r} refuses traffic while its rate limiter's store is "
                    "unreachable (fail-closed); retry shortly",
                    [(b"retry-after", b"1")],
                )
                return False
            log.debug("admission unavailable, failing open: %s", exc)
            self.metrics.admission[(route.name, "admitted", "fail_open")] += 1
            if self.fail_open is not None:
                self.fail_open.add(time.monotonic())  # shown by /health and the dashboard
            return True
        if result.allowed:
            if not route.hide_ratelimit_headers:
                sink.extra_headers.extend(rate_limit_headers(admission, result))
            self.metrics.admission[(route.name, "admitted", "")] += 1
            sink.ex.cache_generation = result.cache_generation
            return True
        reason = result.reason or RATE
        self.metrics.admission[(route.name, "limited", reason)] += 1
        refusal = refusal_for(admission, result, reason)
        sink.ex.refused_by = reason
        sink.ex.refusal = refusal_record(admission, result, refusal)
        if not route.hide_ratelimit_headers:
            sink.extra_headers.extend(refusal_headers(admission, result, refusal))
        await sink.problem(
            429,
            TITLES[reason],
            refusal.detail,
            [(b"retry-after", b"%d" % refusal.retry_after)],
            type_=PROBLEM_TYPES[reason],
            limit=reason,
            quota=refusal.quota,
            window_seconds=refusal.window,
            remaining=0,
            retry_after=refusal.retry_after,
            reset_after=refusal.reset,
            retry_at=iso(refusal.retry_at),
            reset_at=iso(refusal.reset_at),
        )
        return False


def refusal_for(admission: AdmissionRequest, result: AdmissionResult, reason: str) -> Refusal:
    """The 429's numbers and words for the limit that refused (heliox.core.refusal)."""
    now = result.now
    if reason == DAILY_QUOTA and result.daily_limit is not None:
        reset = result.daily_reset if result.daily_reset is not None else now + result.retry_after
        return quota_refusal(DAILY_QUOTA, now=now, quota=result.daily_limit, reset_epoch=reset)
    if reason == MONTHLY_QUOTA and result.monthly_limit is not None:
        reset = (
            result.monthly_reset if result.monthly_reset is not None else now + result.retry_after
        )
        return quota_refusal(MONTHLY_QUOTA, now=now, quota=result.monthly_limit, reset_epoch=reset)
    quota, window = _rate_policy(admission, result)
    if reason == BLOCKED:
        until = result.blocked_until if result.blocked_until is not None else now + 1
        return block_refusal(now=now, until=until, quota=quota, window=window)
    spec = admission.limit
    return rate_refusal(
        now=now,
        quota=quota,
        window=window,
        rate=spec.rate if spec is not None else 0.0,
        token_bucket=spec is None or spec.algorithm == TOKEN_BUCKET,
        wait=result.retry_after,
        until_full=result.reset_after,
    )


# The request log's `refused_by` for a fail-closed 503 (the limiter's store unreachable): not a
# limit, but the limiter refusing all the same.
UNAVAILABLE = "unavailable"
_UNAVAILABLE_RECORD = json.dumps({"retry_after": 1}, separators=(",", ":"))


def refusal_record(admission: AdmissionRequest, result: AdmissionResult, refusal: Refusal) -> str:
    """The refusing limit's numbers for the request log (`refusal`, compact JSON): the numbers
    the 429 problem gave the client, under the same names, and what the limit is (its rate,
    burst and algorithm; whose counter it is; the block's end). Built on refusals only.

    A token bucket refuses when it is empty, whether a burst or the steady rate emptied it: the
    log cannot tell those apart, so a rate refusal just says "rate"."""
    record: dict[str, object] = {
        "quota": refusal.quota,
        "window_seconds": refusal.window,
        "remaining": 0,
        "retry_after": refusal.retry_after,
        "reset_after": refusal.reset,
        "retry_at": iso(refusal.retry_at),
        "reset_at": iso(refusal.reset_at),
    }
    if refusal.kind in (RATE, BLOCKED):
        spec = admission.limit
        subject = admission.subject
        if spec is not None:
            record["algorithm"] = spec.algorithm
            record["rate"] = spec.rate
            if spec.algorithm == TOKEN_BUCKET:
                record["burst"] = spec.burst
        # Whose counter: the key's own, the key's on a route with its own limit, or (public
        # route) the client address's.
        if subject.startswith("ip:"):
            record["per"] = "address"
        else:
            record["per"] = "key_route" if ":r:" in subject else "key"
        if subject.endswith(":slow"):
            record["slowed"] = True  # ABUSE_ACTION=multiplier: the reduced allowance
    if refusal.kind == BLOCKED and result.blocked_until is not None:
        record["blocked_until"] = iso(result.blocked_until)
    return json.dumps(record, separators=(",", ":"))


def _rate_policy(admission: AdmissionRequest, result: AdmissionResult) -> tuple[int, int]:
    """The rate limit's q and w, as RateLimit-Policy states them (0, 0 without one)."""
    spec = admission.limit
    if spec is None or not result.limit:
        return 0, 0
    if spec.algorithm == TOKEN_BUCKET:
        return result.limit, token_bucket_window(spec.burst, spec.rate)
    return result.limit, spec.window_seconds


def refusal_headers(
    admission: AdmissionRequest, result: AdmissionResult, refusal: Refusal
) -> Headers:
    """The rate-limit fields of a 429: RateLimit-Policy as on every answer; RateLimit-Limit,
    -Remaining, -Reset (and X-RateLimit-*) and the refusing limit's item of RateLimit describe
    the limit that refused, with the Reset the problem's detail quotes (heliox.core.refusal).

    Refusals only: the admitted path keeps its cheaper `rate_limit_headers`.
    """
    limit_b = b"%d" % refusal.quota
    reset_b = b"%d" % refusal.reset
    out: Headers = []
    if refusal.quota:
        out += [
            (b"ratelimit-limit", limit_b),
            (b"ratelimit-remaining", b"0"),
            (b"ratelimit-reset", reset_b),
            (b"x-ratelimit-limit", limit_b),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", reset_b),
        ]
    rate_q, window = _rate_policy(admission, result)
    now = result.now
    # The refusing limit's item says r=0 and the detail's Reset; a block empties the rate limit
    # for as long as it lasts. The other items are the limits as they stand.
    refusing = b"daily" if refusal.kind == DAILY_QUOTA else b"monthly"
    if refusal.kind in (RATE, BLOCKED):
        refusing = b"rate"
    states: list[bytes] = []
    if rate_q:
        states.append(_item(b"rate", result.remaining, result.reset_after, refusing, refusal))
    daily = result.daily_limit
    if daily is not None and result.daily_remaining is not None and result.daily_reset is not None:
        left = result.daily_reset - now
        states.append(_item(b"daily", result.daily_remaining, left, refusing, refusal))
    else:
        daily = None
    monthly = result.monthly_limit
    if (
        monthly is not None
        and result.monthly_remaining is not None
        and result.monthly_reset is not None
    ):
        left = result.monthly_reset - now
        states.append(_item(b"monthly", result.monthly_remaining, left, refusing, refusal))
    else:
        monthly = None
    if states:
        out.append((b"ratelimit-policy", _policy_field(rate_q, window, daily, monthly)))
        out.append((b"ratelimit", b", ".join(states)))
    return out


def _item(name: bytes, remaining: int, seconds: float, refusing: bytes, refusal: Refusal) -> bytes:
    if name == refusing:
        return b'"%s";r=0;t=%d' % (name, refusal.reset)
    return b'"%s";r=%d;t=%d' % (name, remaining, max(0, math.ceil(seconds)))


def rate_limit_headers(admission: AdmissionRequest, result: AdmissionResult) -> Headers:
    """IETF draft-10 RateLimit-Policy / RateLimit, plus the legacy RateLimit-* and X-RateLimit-*.

    Every response carries these, so only the changing counts are formatted per request; the
    policy field depends on the limits alone and is built once per distinct set of them.
    """
    out: Headers
    states: list[bytes] = []
    spec = admission.limit
    rate_q = 0
    window = 0
    if spec is not None and result.limit:
        rate_q = result.limit
        if spec.algorithm == TOKEN_BUCKET:
            window = token_bucket_window(spec.burst, spec.rate)
        else:
            window = spec.window_seconds
        reset = int(-(-result.reset_after // 1))
        if reset < 0:  # not max(): on every admitted request
            reset = 0
        limit_b = b"%d" % rate_q
        remaining_b = b"%d" % result.remaining
        reset_b = b"%d" % reset
        states.append(b'"rate";r=%d;t=%d' % (result.remaining, reset))
        out = [
            (b"ratelimit-limit", limit_b),
            (b"ratelimit-remaining", remaining_b),
            (b"ratelimit-reset", reset_b),
            (b"x-ratelimit-limit", limit_b),
            (b"x-ratelimit-remaining", remaining_b),
            (b"x-ratelimit-reset", reset_b),
        ]
    else:
        out = []
    daily = result.daily_limit
    if daily is not None and result.daily_remaining is not None and result.daily_reset is not None:
        left = max(0, int(-(-(result.daily_reset - result.now) // 1)))  # rounded up
        states.append(b'"daily";r=%d;t=%d' % (result.daily_remaining, left))
    else:
        daily = None
    monthly = result.monthly_limit
    if (
        monthly is not None
        and result.monthly_remaining is not None
        and result.monthly_reset is not None
    ):
        left = max(0, int(-(-(result.monthly_reset - result.now) // 1)))  # rounded up
        states.append(b'"monthly";r=%d;t=%d' % (result.monthly_remaining, left))
    else:
        monthly = None
    if states:
        out.append((b"ratelimit-policy", _policy_field(rate_q, window, daily, monthly)))
        out.append((b"ratelimit", b", ".join(states)))
    return out


_POLICY_FIELDS: dict[tuple[int, int, int | None, int | None], bytes] = {}


def _policy_field(rate_q: int, window: int, daily: int | None, monthly: int | None) -> bytes:
    """The RateLimit-Policy value for one set of limits, memoised."""
    memo_key = (rate_q, window, daily, monthly)
    found = _POLICY_FIELDS.get(memo_key)
    if found is None:
        parts: list[str] = []
        if rate_q:
            parts.append(f'"rate";q={rate_q};w={window}')
        if daily is not None:
            parts.append(f'"daily";q={daily};w=86400')
        if monthly is not None:
            parts.append(f'"monthly";q={monthly};w=2592000')
        if len(_POLICY_FIELDS) >= 4096:
            _POLICY_FIELDS.clear()  # bounded: limits are few, but never trust that
        found = ", ".join(parts).encode()
        _POLICY_FIELDS[memo_key] = found
    return found
