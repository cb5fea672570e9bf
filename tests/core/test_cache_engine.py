"""`decide` and `settle`, row by row: each row is a request (or an upstream answer) against a
stored entry at a given moment, and the section of RFC 9111 (or RFC 5861, 9110) it follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from heliox.core.cache_engine import Action, Outcome, decide, expires_at, keep_until, settle
from heliox.core.cachecontrol import parse_cache_control
from heliox.core.freshness import EntryTimes
from heliox.snapshot import CachePolicyConfig

NOW = 1_800_000_000.0
ETAG = [(b"etag", b'"v1"')]


@dataclass(frozen=True)
class Stored:
    """A stored entry, its times relative to NOW."""

    fresh: float = 60  # seconds of freshness left (negative: stale for that long)
    swr: float = 0  # stale-while-revalidate window after freshness
    sie: float = 0  # stale-if-error window after freshness
    keep: float = 0  # kept this long after both windows (only with a validator)
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    age_at_store: int = 0

    @property
    def stored_at(self) -> float:
        return NOW - 1

    @property
    def fresh_until(self) -> float:
        return NOW + self.fresh

    @property
    def stale_until(self) -> float:
        return self.fresh_until + self.swr

    @property
    def error_until(self) -> float:
        return self.fresh_until + self.sie

    @property
    def keep_until(self) -> float:
        return max(self.stale_until, self.error_until) + self.keep if self.keep else 0.0


def policy(**kw: object) -> CachePolicyConfig:
    return CachePolicyConfig(id=1, name="p", **kw)  # type: ignore[arg-type]


def run(
    entry: Stored | None,
    *,
    method: str = "GET",
    request: list[tuple[bytes, bytes]] | None = None,
    pol: CachePolicyConfig | None = None,
    updating: bool = False,
) -> tuple[Action, str, str | None]:
    headers = request or []
    cc = parse_cache_control(b",".join(v for n, v in headers if n == b"cache-control"))
    d = decide(pol or policy(), method, headers, cc, entry, NOW, updating=updating)
    return d.action, d.label, d.detail


CC = b"cache-control"

DECIDE = [
    # (section, entry, kwargs, expected (action, label, detail))
    ("§4.4 unsafe method writes through", Stored(), {"method": "POST"},
     (Action.WRITE_THROUGH, "BYPASS", None)),
    ("§3 only the policy's methods are cached", Stored(), {"method": "HEAD",
     "pol": policy(cacheable_methods=frozenset({"GET"}))}, (Action.BYPASS, "BYPASS", "method")),
    ("§3.3 Range is not served from a stored whole", Stored(),
     {"request": [(b"range", b"bytes=0-1")]}, (Action.BYPASS, "BYPASS", "range")),
    ("§3.5-like: a Cookie the policy does not key on", Stored(),
     {"request": [(b"cookie", b"a=1")]}, (Action.BYPASS, "BYPASS", "cookie")),
    ("§4.2 fresh: served", Stored(), {}, (Action.HIT, "HIT", None)),
    ("§4.2 fresh 404 under the negative cache", Stored(status=404), {},
     (Action.HIT, "NEGATIVE", "negative")),
    ("RFC 5861 §3 stale inside stale-while-revalidate", Stored(fresh=-5, swr=30), {},
     (Action.STALE, "STALE", None)),
    ("RFC 5861 §3 ... while this process refreshes it", Stored(fresh=-5, swr=30),
     {"updating": True}, (Action.STALE, "UPDATING", None)),
    ("§4.2 stale, no window: fetched", Stored(fresh=-5), {}, (Action.FILL, "MISS", None)),
    ("§4.3.1 stale with a validator in the keep window: revalidated",
     Stored(fresh=-5, keep=60, headers=ETAG), {}, (Action.REVALIDATE, "MISS", None)),
    ("§4.3.1 past the keep window: nothing to revalidate",
     Stored(fresh=-100, keep=60, headers=ETAG), {}, (Action.FILL, "MISS", None)),
    ("§5.2.1.4 request no-cache: validated even when fresh", Stored(headers=ETAG),
     {"request": [(CC, b"no-cache")]}, (Action.REVALIDATE, "MISS", None)),
    ("§5.2.1.1 request max-age below the entry's age", Stored(age_at_store=30),
     {"request": [(CC, b"max-age=10")]}, (Action.FILL, "MISS", None)),
    ("§5.2.1.1 request max-age above the entry's age", Stored(age_at_store=5),
     {"request": [(CC, b"max-age=10")]}, (Action.HIT, "HIT", None)),
    ("§5.2.1.3 min-fresh beyond what is left", Stored(fresh=20),
     {"request": [(CC, b"min-fresh=30")]}, (Action.FILL, "MISS", None)),
    ("§5.2.1.7 only-if-cached with nothing usable", None,
     {"request": [(CC, b"only-if-cached")]}, (Action.ONLY_IF_CACHED, "MISS", "only-if-cached")),
    ("§5.2.1.7 only-if-cached with a fresh entry", Stored(),
     {"request": [(CC, b"only-if-cached")]}, (Action.HIT, "HIT", None)),
    ("§4 nothing stored", None, {}, (Action.FILL, "MISS", None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "entry", "kwargs", "expected"), DECIDE, ids=[r[0] for r in DECIDE]
)
def test_decide(
    section: str,
    entry: Stored | None,
    kwargs: dict[str, Any],
    expected: tuple[Action, str, str | None],
) -> None:
    assert run(entry, **kwargs) == expected


def test_decide_fill_flags() -> None:
    p = policy()
    no_store = parse_cache_control(b"no-store")
    d = decide(p, "GET", [], no_store, None, NOW)
    assert (d.store, d.join) == (False, True)  # §5.2.1.5: nothing of it is stored
    d = decide(p, "HEAD", [], parse_cache_control(None), None, NOW)
    assert (d.store, d.join) == (False, True)  # a HEAD has no body to store
    for directive in (b"no-cache", b"max-age=0"):  # §5.2.1.4, §5.2.1.1
        d = decide(p, "GET", [], parse_cache_control(directive), None, NOW)
        assert d.join is False, directive
    # The negative cache (a Bloom filter) answers first in policy mode only; a no-cache request
    # skips it and clears a false claim.
    d = decide(p, "GET", [], parse_cache_control(None), None, NOW)
    assert (d.negative_lookup, d.negative_bypassed) == (True, False)
    d = decide(p, "GET", [], parse_cache_control(b"no-cache"), None, NOW)
    assert (d.negative_lookup, d.negative_bypassed) == (False, True)
    d = decide(policy(mode="origin"), "GET", [], parse_cache_control(None), None, NOW)
    assert (d.negative_lookup, d.negative_bypassed) == (False, False)  # §4.2: the entry is it


def answer(
    entry: Stored | None,
    status: int | None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    pol: CachePolicyConfig | None = None,
    validating: bool = False,
) -> tuple[Outcome, str, str | None]:
    s = settle(
        pol or policy(mode="origin"), [], entry, status, headers or [], 10, NOW,
        validating=validating,
    )  # fmt: skip
    return s.outcome, s.label, s.detail


def cc(value: bytes, *more: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(CC, value), *more]


SETTLE = [
    ("§4.3.4 a 304 to a revalidation freshens the entry", Stored(fresh=-5, headers=ETAG), 304,
     ETAG, {"validating": True}, (Outcome.FRESHEN, "REVALIDATED", None)),
    ("RFC 5861 §4 upstream failed inside stale-if-error", Stored(fresh=-5, sie=60), None, None,
     {}, (Outcome.SERVE_STALE, "STALE", "stale-if-error")),
    ("RFC 5861 §4 a 5xx inside stale-if-error", Stored(fresh=-5, sie=60), 503, None, {},
     (Outcome.SERVE_STALE, "STALE", "stale-if-error")),
    ("RFC 5861 §4 failed, no window left", Stored(fresh=-5), None, None, {},
     (Outcome.ERROR, "MISS", "upstream-error")),
    ("§3 fresh for 60 s: stored", None, 200, cc(b"max-age=60"), {}, (Outcome.STORE, "MISS", None)),
    ("§5.2.2.5 no-store: relayed", None, 200, cc(b"no-store"), {},
     (Outcome.RELAY, "MISS", "no_store")),
    ("§5.2.2.7 private: a shared cache relays it", None, 200, cc(b"private"), {},
     (Outcome.RELAY, "MISS", "private")),
    ("§5.2.2.4 no-cache with a validator: stored, revalidated on every use", None, 200,
     cc(b"no-cache", *ETAG), {}, (Outcome.STORE, "MISS", None)),
    ("§4.2.1 max-age=0 without a validator: of no use", None, 200, cc(b"max-age=0"), {},
     (Outcome.RELAY, "MISS", "expired_on_arrival")),
    ("§4.2.1 an Expires in the past on a 404: of no use", None, 404,
     [(b"expires", b"Thu, 01 Jan 1970 00:00:00 GMT")], {},
     (Outcome.RELAY, "MISS", "expired_on_arrival")),
    ("§4.1 Vary: * never matches", None, 200, cc(b"max-age=60", (b"vary", b"*")), {},
     (Outcome.RELAY, "MISS", "vary_star")),
    ("RFC 9213 §2.1 CDN-Cache-Control governs this cache", None, 200,
     cc(b"no-store", (b"cdn-cache-control", b"max-age=60")), {}, (Outcome.STORE, "MISS", None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "entry", "status", "headers", "kwargs", "expected"), SETTLE,
    ids=[r[0] for r in SETTLE],
)  # fmt: skip
def test_settle(
    section: str,
    entry: Stored | None,
    status: int | None,
    headers: list[tuple[bytes, bytes]] | None,
    kwargs: dict[str, Any],
    expected: tuple[Outcome, str, str | None],
) -> None:
    assert answer(entry, status, headers, **kwargs) == expected


def test_keep_window_needs_a_validator_and_a_policy_window() -> None:
    times = EntryTimes(NOW + 10, NOW + 20, NOW + 30)
    assert keep_until(policy(keep_seconds=600), times, ETAG) == NOW + 30 + 600
    assert keep_until(policy(keep_seconds=600), times, []) == 0.0
    assert keep_until(policy(keep_seconds=0), times, ETAG) == 0.0
    assert expires_at(Stored(fresh=10, swr=10, sie=20, keep=600, headers=ETAG)) == NOW + 630
