"""The admission step alone, in process: the in-memory store on an injected clock, real settings,
metrics and response sink. Limits, quotas, blocks and slowdowns as the client sees them: the
rate-limit fields, the 429 problem+json and its Retry-After, fail-open and fail-closed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import types
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import pytest

from heliox.config import load_settings
from heliox.core.breaker import RecentEvents
from heliox.gateway import admission_step
from heliox.gateway.admission_step import AdmissionStep, rate_limit_headers
from heliox.gateway.exchange import Exchange, ResponseSink
from heliox.metrics import Metrics
from heliox.snapshot import KeyConfig, RouteConfig
from heliox.state.admission import (
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionResult,
    AdmissionUnavailable,
    LimitSpec,
)
from heliox.state.admission_memory import MemoryAdmission
from tests.support import FakeClock

T0 = 1_795_780_800.0  # 2026-11-27T12:00:00Z: the day resets in 12 h, the month in 3.5 days
TO_MIDNIGHT = 43_200
TO_MONTH_END = 302_400
ROUTE = RouteConfig(id=3, name="orders", upstream_url="http://upstream.test")
IP = "192.0.2.10"


class Wire:
    """The ASGI send side: every message the sink writes."""

    def __init__(self) -> None:
        self.messages: list[MutableMapping[str, Any]] = []

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        return self.messages[0]["status"] if self.messages else None

    def header(self, name: bytes) -> bytes | None:
        found = [v for k, v in self.messages[0]["headers"] if k == name]
        assert len(found) <= 1, found
        return found[0] if found else None

    def problem(self) -> dict[str, Any]:
        assert self.header(b"content-type") == b"application/problem+json"
        body: dict[str, Any] = json.loads(self.messages[1]["body"])
        return body


class Step:
    """An AdmissionStep over a MemoryAdmission, both on one fake clock."""

    def __init__(self, backend: MemoryAdmission | None = None, **settings: object) -> None:
        self.clock = FakeClock(T0)
        self.backend = backend or MemoryAdmission(clock=self.clock)
        self.metrics = Metrics()
        self.step = AdmissionStep(self.backend, load_settings(**settings), self.metrics)

    async def admit(
        self, key: KeyConfig | None, route: RouteConfig = ROUTE
    ) -> tuple[bool, ResponseSink, Wire]:
        wire = Wire()
        sink = ResponseSink(wire, Exchange("GET", 0.0))
        admitted = await self.step.admit(route, key, IP, sink)
        assert admitted == (not wire.messages)  # a refusal answers; an admission leaves it to us
        return admitted, sink, wire


def key(**limits: Any) -> KeyConfig:
    return KeyConfig(id=7, tenant_id=1, name="k", key_prefix="hx_k", **limits)


def fields(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out = {k.decode(): v.decode() for k, v in headers}
    assert len(out) == len(headers), headers  # each field once
    return out


def rate_fields(limit: int, remaining: int, reset: int) -> dict[str, str]:
    values = {"limit": str(limit), "remaining": str(remaining), "reset": str(reset)}
    return {
        f"{prefix}{name}": v
        for prefix in ("ratelimit-", "x-ratelimit-")
        for name, v in values.items()
    }


# (what the key or route sets, requests sent before, the fields on the next admitted answer)
HEADER_CASES = [
    pytest.param(
        {"key": key(rate_limit_rps=10, rate_limit_burst=20)},
        0,
        # A token comes back in 0.1 s: the reset rounds up to 1; the window is burst / rate.
        {**rate_fields(20, 19, 1), "ratelimit-policy": '"rate";q=20;w=2',
         "ratelimit": '"rate";r=19;t=1'},
        id="token-bucket-below-the-limit",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=0.5, rate_limit_burst=3)},
        2,
        # The last token: an empty bucket refills at 0.5/s, so in 6 s.
        {**rate_fields(3, 0, 6), "ratelimit-policy": '"rate";q=3;w=6',
         "ratelimit": '"rate";r=0;t=6'},
        id="token-bucket-at-the-limit",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=10)},
        0,
        # No burst given: twice the rate.
        {**rate_fields(20, 19, 1), "ratelimit-policy": '"rate";q=20;w=2',
         "ratelimit": '"rate";r=19;t=1'},
        id="token-bucket-default-burst",
    ),
    pytest.param(
        {"key": key(), "settings": {"default_rate_limit_rps": 4, "default_rate_limit_burst": 12}},
        0,
        {**rate_fields(12, 11, 1), "ratelimit-policy": '"rate";q=12;w=3',
         "ratelimit": '"rate";r=11;t=1'},
        id="key-without-limits-gets-the-settings-default",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=5, rate_limit_algorithm="sliding_window",
                    rate_limit_window_seconds=10)},
        0,
        # 5/s over 10 s windows: 50. At :00 the counted request leaves this window and the next.
        {**rate_fields(50, 49, 20), "ratelimit-policy": '"rate";q=50;w=10',
         "ratelimit": '"rate";r=49;t=20'},
        id="sliding-window-below-the-limit",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=0.3, rate_limit_algorithm="sliding_window",
                    rate_limit_window_seconds=10)},
        2,
        {**rate_fields(3, 0, 20), "ratelimit-policy": '"rate";q=3;w=10',
         "ratelimit": '"rate";r=0;t=20'},
        id="sliding-window-at-the-limit",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=10, rate_limit_burst=20, daily_quota=100,
                    monthly_quota=1000)},
        0,
        {**rate_fields(20, 19, 1),
         "ratelimit-policy": '"rate";q=20;w=2, "daily";q=100;w=86400, "monthly";q=1000;w=2592000',
         "ratelimit": f'"rate";r=19;t=1, "daily";r=99;t={TO_MIDNIGHT}, '
                      f'"monthly";r=999;t={TO_MONTH_END}'},
        id="token-bucket-with-daily-and-monthly-quotas",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=100, rate_limit_burst=200, daily_quota=3)},
        2,
        # The quota's last request: the rate limit is far off, the daily count is at zero.
        {**rate_fields(200, 197, 1),
         "ratelimit-policy": '"rate";q=200;w=2, "daily";q=3;w=86400',
         "ratelimit": f'"rate";r=197;t=1, "daily";r=0;t={TO_MIDNIGHT}'},
        id="daily-quota-at-the-limit",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=5, rate_limit_algorithm="sliding_window",
                    rate_limit_window_seconds=10, monthly_quota=10)},
        0,
        {**rate_fields(50, 49, 20),
         "ratelimit-policy": '"rate";q=50;w=10, "monthly";q=10;w=2592000',
         "ratelimit": f'"rate";r=49;t=20, "monthly";r=9;t={TO_MONTH_END}'},
        id="sliding-window-with-a-monthly-quota",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=10, rate_limit_burst=20),
         "route": RouteConfig(id=4, name="search", upstream_url="http://upstream.test",
                              rate_limit_rps=1, rate_limit_burst=5)},
        0,
        # The route's override replaces the key's limit.
        {**rate_fields(5, 4, 1), "ratelimit-policy": '"rate";q=5;w=5',
         "ratelimit": '"rate";r=4;t=1'},
        id="route-override",
    ),
    pytest.param(
        {"key": None,
         "route": RouteConfig(id=5, name="public", upstream_url="http://upstream.test",
                              is_public=True, rate_limit_rps=2, rate_limit_burst=4)},
        1,
        {**rate_fields(4, 2, 1), "ratelimit-policy": '"rate";q=4;w=2',
         "ratelimit": '"rate";r=2;t=1'},
        id="public-route-per-address",
    ),
    pytest.param(
        {"key": key(rate_limit_rps=10, daily_quota=5),
         "route": RouteConfig(id=6, name="quiet", upstream_url="http://upstream.test",
                              hide_ratelimit_headers=True)},
        0,
        {},
        id="route-hides-the-fields",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("config", "before", "expected"), HEADER_CASES)
async def test_rate_limit_fields_on_an_admitted_answer(
    config: dict[str, Any], before: int, expected: dict[str, str]
) -> None:
    s = Step(**config.get("settings", {}))
    route = config.get("route", ROUTE)
    for _ in range(before):
        assert (await s.admit(config["key"], route))[0]
    admitted, sink, _ = await s.admit(config["key"], route)
    assert admitted
    assert fields(sink.extra_headers) == expected
    assert s.metrics.admission == {(route.name, "admitted", ""): before + 1}


async def test_the_fields_go_out_with_the_answer_and_follow_the_clock() -> None:
    s = Step()
    k = key(rate_limit_rps=0.5, rate_limit_burst=3)
    await s.admit(k)
    s.clock.advance(1.0)  # half a token back: 1.5 left after this one, full in 3 s
    _, sink, _ = await s.admit(k)
    assert fields(sink.extra_headers)["ratelimit"] == '"rate";r=1;t=3'
    wire = Wire()
    sink = ResponseSink(wire, Exchange("GET", 0.0))
    await s.step.admit(ROUTE, k, IP, sink)
    await sink.start(200, [(b"content-type", b"text/plain")])
    sent = fields(wire.messages[0]["headers"])
    assert sent["content-type"] == "text/plain"
    assert sent["ratelimit-remaining"] == "0"
    assert sent["ratelimit"] == '"rate";r=0;t=5'  # 0.5 left: 2.5 tokens short at 0.5/s


# A limiter-less request is not one the step builds (every key and route has a limit), but the
# header function must still describe the quotas alone.
async def test_quota_fields_without_a_rate_limit() -> None:
    clock = FakeClock(T0)
    backend = MemoryAdmission(clock=clock)
    req = AdmissionRequest("k:9", None, daily_quota=10, monthly_quota=None, quota_subject="k:9")
    result = await backend.admit(req)
    assert fields(rate_limit_headers(req, result)) == {
        "ratelimit-policy": '"daily";q=10;w=86400',
        "ratelimit": f'"daily";r=9;t={TO_MIDNIGHT}',
    }
    assert (
        rate_limit_headers(AdmissionRequest("k:9"), await backend.admit(AdmissionRequest("k:9")))
        == []
    )


def _result(**overrides: Any) -> AdmissionResult:
    base: dict[str, Any] = dict(
        allowed=True, reason=None, limit=10, remaining=4, reset_after=0.0, retry_after=0.0,
        blocked_until=None, daily_limit=None, daily_remaining=None, daily_reset=None,
        monthly_limit=None, monthly_remaining=None, monthly_reset=None, now=T0,
    )  # fmt: skip
    base.update(overrides)
    return AdmissionResult(**base)


@pytest.mark.parametrize(
    ("reset_after", "burst", "rate", "expected_t", "expected_w"),
    [
        (0.0, 10, 5.0, "0", "2"),
        (0.001, 10, 5.0, "1", "2"),  # any fraction rounds up
        (2.0, 10, 5.0, "2", "2"),
        (2.5, 10, 4.0, "3", "2"),  # 10 / 4 = 2.5: banker's rounding gives 2
        (1.0, 10, 0.001, "1", "10000"),
        (1.0, 1, 1000.0, "1", "1"),  # a window below one second is reported as one
    ],
)
def test_token_bucket_reset_rounds_up_and_window_is_burst_over_rate(
    reset_after: float, burst: int, rate: float, expected_t: str, expected_w: str
) -> None:
    req = AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, rate, burst))
    got = fields(rate_limit_headers(req, _result(limit=burst, reset_after=reset_after)))
    assert got["ratelimit-reset"] == got["x-ratelimit-reset"] == expected_t
    assert got["ratelimit-policy"] == f'"rate";q={burst};w={expected_w}'
    assert got["ratelimit"] == f'"rate";r=4;t={expected_t}'


# (the key, requests admitted first, Retry-After, the problem's type / title / limit, the
# refusing limit's q / w / RateLimit-Reset, the detail, the rate-limit fields sent)
REFUSAL_CASES = [
    pytest.param(
        # 100/s with the default burst of 2 x 100 is q=200, w=2: the example, scaled down.
        key(rate_limit_rps=0.5, rate_limit_burst=3), 3, 2,
        "rate-limited", "Rate limit exceeded", "rate", (3, 6, 6),
        "rate limit exceeded: 3 requests per 6 s (a bucket of 3 refilled at 0.5 per second), "
        "0 left; the next request is admitted in 2 s (Retry-After), all 3 in 6 s "
        "(RateLimit-Reset)",
        {**rate_fields(3, 0, 6), "ratelimit": '"rate";r=0;t=6',
         "ratelimit-policy": '"rate";q=3;w=6'},
        id="token-bucket",
    ),
    pytest.param(
        # 0.3/s over 10 s: 3 per window; the 4th waits for the window to end and the weight of
        # the 3 to fall to 2: 10 s + 10 s * 1/3, rounded up.
        key(rate_limit_rps=0.3, rate_limit_algorithm="sliding_window",
            rate_limit_window_seconds=10), 3, 14,
        "rate-limited", "Rate limit exceeded", "rate", (3, 10, 20),
        "rate limit exceeded: 3 requests per 10 s (sliding window), 0 left; the next request is "
        "admitted in 14 s (Retry-After), all 3 in 20 s (RateLimit-Reset)",
        {**rate_fields(3, 0, 20), "ratelimit": '"rate";r=0;t=20',
         "ratelimit-policy": '"rate";q=3;w=10'},
        id="sliding-window",
    ),
    pytest.param(
        key(rate_limit_rps=100, rate_limit_burst=200, daily_quota=2), 2, TO_MIDNIGHT,
        "daily-quota-exceeded", "Daily quota exceeded", "daily_quota", (2, 86400, TO_MIDNIGHT),
        f"daily quota exceeded: 2 requests per day, 0 left; it resets in {TO_MIDNIGHT} s "
        "(Retry-After, RateLimit-Reset), at 2026-11-28T00:00:00Z",
        # The quota refused: the legacy fields describe it; the rate limit's item is as it stood
        # (no token was taken).
        {**rate_fields(2, 0, TO_MIDNIGHT),
         "ratelimit": f'"rate";r=198;t=1, "daily";r=0;t={TO_MIDNIGHT}'},
        id="daily-quota",
    ),
    pytest.param(
        key(rate_limit_rps=100, rate_limit_burst=200, daily_quota=50, monthly_quota=1), 1,
        TO_MONTH_END,
        "monthly-quota-exceeded", "Monthly quota exceeded", "monthly_quota",
        (1, 2_592_000, TO_MONTH_END),
        f"monthly quota exceeded: 1 requests per calendar month, 0 left; it resets in "
        f"{TO_MONTH_END} s (Retry-After, RateLimit-Reset), at 2026-12-01T00:00:00Z",
        {**rate_fields(1, 0, TO_MONTH_END),
         "ratelimit": f'"rate";r=199;t=1, "daily";r=49;t={TO_MIDNIGHT}, '
                      f'"monthly";r=0;t={TO_MONTH_END}'},
        id="monthly-quota",
    ),
]  # fmt: skip


# The 429 problem's numbers the request log's `refusal` repeats.
LOGGED = (
    "quota",
    "window_seconds",
    "remaining",
    "retry_after",
    "reset_after",
    "retry_at",
    "reset_at",
)


def _at(seconds: int) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("k", "before", "retry", "type_", "title", "limit", "policy", "detail", "rate"),
    REFUSAL_CASES,
)
async def test_a_refusal_is_a_429_problem_saying_which_limit_and_when(
    k: KeyConfig,
    before: int,
    retry: int,
    type_: str,
    title: str,
    limit: str,
    policy: tuple[int, int, int],
    detail: str,
    rate: dict[str, str],
) -> None:
    s = Step()
    for _ in range(before):
        assert (await s.admit(k))[0]
    admitted, sink, wire = await s.admit(k)
    assert not admitted
    assert wire.status == 429 and sink.ex.status == 429
    assert wire.header(b"retry-after") == str(retry).encode()
    sent = fields(wire.messages[0]["headers"])
    assert {name: sent[name] for name in rate} == rate  # the fields go on the refusal too
    assert sent["cache-control"] == "no-store"
    quota, window, reset = policy
    assert wire.problem() == {
        "type": f"https://heliox.dev/problems/{type_}",
        "status": 429,
        "title": title,
        "detail": detail,
        "limit": limit,
        "quota": quota,
        "window_seconds": window,
        "remaining": 0,
        "retry_after": retry,
        "reset_after": reset,
        "retry_at": _at(retry),
        "reset_at": _at(reset),
    }
    # The log row records the same limit and numbers, under the same names.
    problem = wire.problem()
    assert sink.ex.refused_by == limit
    record = json.loads(sink.ex.refusal or "null")
    assert {name: record[name] for name in LOGGED} == {name: problem[name] for name in LOGGED}
    assert s.metrics.admission == {
        (ROUTE.name, "admitted", ""): before,
        (ROUTE.name, "limited", limit): 1,
    }


async def test_a_refused_client_is_admitted_once_retry_after_has_passed() -> None:
    s = Step()
    k = key(rate_limit_rps=0.5, rate_limit_burst=3)
    for _ in range(3):
        await s.admit(k)
    _, _, wire = await s.admit(k)
    retry = int(wire.header(b"retry-after") or b"0")
    s.clock.advance(retry - 0.01)
    assert not (await s.admit(k))[0]  # not a moment before
    s.clock.advance(0.01)
    assert (await s.admit(k))[0]


async def test_a_block_refuses_until_it_ends() -> None:
    s = Step()
    k = key(rate_limit_rps=10, rate_limit_burst=20)
    await s.backend.block("k:7", T0 + 90.5, {"reason": "spike"})
    admitted, sink, wire = await s.admit(k)
    assert not admitted and wire.status == 429
    assert wire.header(b"retry-after") == b"91"  # whole seconds, rounded up
    assert sink.ex.refused_by == "blocked" and sink.ex.refusal is not None
    record = json.loads(sink.ex.refusal)
    assert (record["blocked_until"], record["per"]) == ("2026-11-27T12:01:30Z", "key")
    # Nothing passes while the block lasts: the rate limit's fields say so, for as long.
    sent = fields(wire.messages[0]["headers"])
    assert {name: sent[name] for name in (*rate_fields(20, 0, 91), "ratelimit")} == {
        **rate_fields(20, 0, 91),
        "ratelimit": '"rate";r=0;t=91',
    }
    assert wire.problem() == {
        "type": "https://heliox.dev/problems/key-blocked",
        "status": 429,
        "title": "API key temporarily blocked",
        "detail": "this API key is temporarily blocked after unusual traffic; requests are "
        "admitted again in 91 s (Retry-After, RateLimit-Reset), at 2026-11-27T12:01:30Z; "
        "an administrator can lift the block",
        "limit": "blocked",
        "quota": 20,
        "window_seconds": 2,
        "remaining": 0,
        "retry_after": 91,
        "reset_after": 91,
        "retry_at": "2026-11-27T12:01:30Z",
        "reset_at": "2026-11-27T12:01:30Z",
    }
    assert not (await s.admit(k))[0]  # still blocked a moment later
    other = KeyConfig(id=8, tenant_id=1, name="other", key_prefix="hx_o")
    assert (await s.admit(other))[0]  # a block is the key's own
    s.clock.advance(90.5)
    assert (await s.admit(k))[0]
    assert s.metrics.admission[(ROUTE.name, "limited", "blocked")] == 2


class DownStore(MemoryAdmission):
    """The store is unreachable: every decision raises."""

    async def admit(self, req: AdmissionRequest) -> AdmissionResult:
        raise AdmissionUnavailable("connection refused")


@pytest.mark.parametrize(
    ("fail_mode", "admitted", "outcome"),
    [("open", True, ("admitted", "fail_open")), ("closed", False, ("refused", "unavailable"))],
)
async def test_an_unreachable_store_fails_open_or_closed_per_route(
    fail_mode: str, admitted: bool, outcome: tuple[str, str]
) -> None:
    s = Step(DownStore())
    s.step.fail_open = RecentEvents()
    route = RouteConfig(
        id=9, name="strict", upstream_url="http://upstream.test", fail_mode=fail_mode
    )
    got, sink, wire = await s.admit(key(rate_limit_rps=10, daily_quota=5), route)
    assert got is admitted
    assert sink.extra_headers == []  # no counts known, none reported
    assert s.metrics.events["admission_unavailable"] == 1
    assert s.metrics.admission == {(route.name, *outcome): 1}
    assert s.step.fail_open.count(time.monotonic()) == (1 if admitted else 0)
    # The log row says what refused it, or nothing when the request went on.
    assert sink.ex.refused_by == (None if admitted else "unavailable")
    if admitted:
        assert wire.messages == []
        return
    assert json.loads(sink.ex.refusal or "null") == {"retry_after": 1}
    assert wire.status == 503
    assert wire.header(b"retry-after") == b"1"
    problem = wire.problem()
    assert problem["status"] == 503 and problem["title"] == "Rate limiter unavailable"
    assert "'strict'" in problem["detail"] and "fail-closed" in problem["detail"]


@pytest.fixture
def step_clock(monkeypatch: pytest.MonkeyPatch) -> Step:
    """A Step whose slowdown expiry is read from the same fake clock as the store's."""
    s = Step()
    monkeypatch.setattr(
        admission_step, "time", types.SimpleNamespace(time=s.clock, monotonic=time.monotonic)
    )
    return s


async def test_a_slowdown_lowers_the_rate_until_it_ends(step_clock: Step) -> None:
    s = step_clock
    k = key(rate_limit_rps=10, rate_limit_burst=20)
    assert fields((await s.admit(k))[1].extra_headers)["ratelimit-remaining"] == "19"
    s.step.slow_down(7, T0 + 60, 0.1)
    # A fresh, smaller allowance: 1/s, burst 2.
    _, sink, _ = await s.admit(k)
    assert fields(sink.extra_headers) == {
        **rate_fields(2, 1, 1),
        "ratelimit-policy": '"rate";q=2;w=2',
        "ratelimit": '"rate";r=1;t=1',
    }
    assert (await s.admit(k))[0]
    admitted, _, wire = await s.admit(k)
    assert not admitted and wire.header(b"retry-after") == b"1"
    assert wire.problem()["detail"].startswith("rate limit exceeded: 2 requests per 2 s")
    other = KeyConfig(id=8, tenant_id=1, name="other", key_prefix="hx_o", rate_limit_rps=10)
    assert fields((await s.admit(other))[1].extra_headers)["ratelimit-limit"] == "20"
    s.clock.advance(59.9)  # 1/s: tokens come back, but no more than the slowed burst
    assert fields((await s.admit(k))[1].extra_headers)["ratelimit"] == '"rate";r=1;t=1'
    s.clock.advance(0.1)  # `until` reached: the key's own bucket again, untouched meanwhile
    _, sink, _ = await s.admit(k)
    assert fields(sink.extra_headers)["ratelimit-limit"] == "20"
    assert fields(sink.extra_headers)["ratelimit-remaining"] == "19"


async def test_a_slowdown_never_takes_the_rate_below_the_floor(step_clock: Step) -> None:
    s = step_clock
    k = key(rate_limit_rps=0.002, rate_limit_burst=1)
    s.step.slow_down(7, T0 + 3600, 0.01)
    _, sink, _ = await s.admit(k)
    # 0.002 * 0.01 would be under MIN_RATE (0.001/s): brought up to it; the burst stays 1.
    assert fields(sink.extra_headers)["ratelimit-policy"] == '"rate";q=1;w=1000'
    assert fields(sink.extra_headers)["ratelimit"] == '"rate";r=0;t=1000'


async def test_slowdowns_stored_in_the_backend_reach_the_step(step_clock: Step) -> None:
    s = step_clock
    await s.backend.block("m:k:7", T0 + 30, {"multiplier": 0.5})
    await s.backend.block("k:8", T0 + 30, {"reason": "spike"})  # a block, not a slowdown
    watcher = asyncio.create_task(s.step.watch_slowdowns(interval=3600))
    await asyncio.sleep(0)  # one turn: the watcher refreshes once (the store never awaits)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert s.step.slowed == {7: (T0 + 30, 0.5)}
    _, sink, _ = await s.admit(key(rate_limit_rps=10, rate_limit_burst=20))
    assert fields(sink.extra_headers)["ratelimit-limit"] == "10"


class SharedStore(MemoryAdmission):
    """As a shared store answers: the cache's removal generation read in the same round trip."""

    async def admit(self, req: AdmissionRequest) -> AdmissionResult:
        return dataclasses.replace(await super().admit(req), cache_generation=b"gen-41")


async def test_an_admission_hands_the_cache_generation_to_the_exchange() -> None:
    s = Step(SharedStore())
    k = key(rate_limit_rps=0.5, rate_limit_burst=1)
    admitted, sink, _ = await s.admit(k)
    assert admitted and sink.ex.cache_generation == b"gen-41"
    admitted, sink, _ = await s.admit(k)
    assert not admitted and sink.ex.cache_generation is None  # a refusal never reads the cache


async def test_a_reloaded_key_or_route_takes_effect_at_its_next_request() -> None:
    # The step builds a key's admission request once per (route, key) pair of objects: a
    # configuration reload hands it new objects with the same ids, which must not meet the old.
    s = Step()
    k = key(rate_limit_rps=10, rate_limit_burst=20)
    assert fields((await s.admit(k))[1].extra_headers)["ratelimit-limit"] == "20"
    assert s.step.request_for(ROUTE, k, IP) is s.step.request_for(ROUTE, k, IP)
    reloaded = dataclasses.replace(k, rate_limit_burst=50)
    assert fields((await s.admit(reloaded))[1].extra_headers)["ratelimit-limit"] == "50"
    own_limit = dataclasses.replace(ROUTE, rate_limit_rps=1.0, rate_limit_burst=3)
    assert fields((await s.admit(reloaded, own_limit))[1].extra_headers)["ratelimit-limit"] == "3"
