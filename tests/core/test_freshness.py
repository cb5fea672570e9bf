"""Cache decisions: storability, entry times, lookup states, conditionals and headers."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from heliox.core import freshness
from heliox.core.cachecontrol import EMPTY, format_http_date, parse_cache_control
from heliox.core.freshness import (
    NEVER_STORED_STATUSES,
    EntryTimes,
    LookupState,
    age_header,
    cache_status,
    cacheable_request,
    can_serve_stale_on_error,
    conditional_headers,
    entry_times,
    freshen_headers,
    headers_to_store,
    hit_status,
    initial_age,
    lookup_bypass,
    lookup_state,
    not_modified,
    not_modified_headers,
    storable,
    ttl_seconds,
)
from heliox.snapshot import CachePolicyConfig

H = list[tuple[bytes, bytes]]
NOW = 1_700_000_000.0
POLICY = CachePolicyConfig(
    id=1, name="p", ttl_seconds=60, stale_while_revalidate_seconds=30, stale_if_error_seconds=300
)
ORIGIN = replace(POLICY, mode="origin")
NO_WINDOWS = replace(ORIGIN, stale_while_revalidate_seconds=0, stale_if_error_seconds=0)


def date(offset: float = 0.0) -> bytes:
    return format_http_date(NOW + offset)


def store(
    policy: CachePolicyConfig = POLICY,
    *,
    method: str = "GET",
    status: int = 200,
    response: H | None = None,
    body_len: int | None = 10,
    request: H | None = None,
    now: float | None = None,
) -> tuple[bool, str]:
    decision = storable(policy, method, status, response or [], body_len, request or [], now=now)
    return decision.ok, decision.reason


# --- lookup_bypass --------------------------------------------------------------------------
COOKIES_OPT_IN = replace(POLICY, cache_with_cookies=True)
COOKIE_KEYED = replace(POLICY, vary_headers=("accept", "cookie"))


@pytest.mark.parametrize(
    ("policy", "headers", "reason"),
    [
        (POLICY, [], None),
        (POLICY, [(b"accept", b"*/*"), (b"authorization", b"Bearer x")], None),
        (POLICY, [(b"cookie", b"session=a")], "cookie"),
        (POLICY, [(b"cookie", b"")], "cookie"),
        (POLICY, [(b"set-cookie", b"a=1"), (b"cookies", b"a=1")], None),
        (COOKIES_OPT_IN, [(b"cookie", b"session=a")], None),
        (COOKIE_KEYED, [(b"cookie", b"session=a")], None),
        (POLICY, [(b"range", b"bytes=0-1")], "range"),
        (COOKIES_OPT_IN, [(b"range", b"bytes=0-1")], "range"),
        (POLICY, [(b"cookie", b"a=1"), (b"range", b"bytes=0-1")], "range"),
        (POLICY, [(b"range", b"bytes=0-1"), (b"cookie", b"a=1")], "range"),
    ],
)
def test_lookup_bypass(policy: CachePolicyConfig, headers: H, reason: str | None) -> None:
    assert lookup_bypass(policy, headers) == reason


# --- storable -------------------------------------------------------------------------------


def test_plain_response_is_storable() -> None:
    assert store() == (True, "ok")
    assert store(ORIGIN, response=[(b"cache-control", b"max-age=10")]) == (True, "ok")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"method": "HEAD"}, "method"),  # a HEAD never stores (nor replaces) the GET entry
        ({"method": "POST"}, "method"),
        ({"status": 206}, "partial"),
        ({"status": 302}, "status"),  # off the allowlist
        ({"body_len": None}, "unknown_length"),
        ({"body_len": POLICY.max_object_bytes + 1}, "too_large"),
        ({"response": [(b"cache-control", b"no-store")]}, "no_store"),
        ({"response": [(b"cache-control", b"private, max-age=60")]}, "private"),
        ({"response": [(b"cache-control", b'private="x"')]}, "private"),
        ({"request": [(b"cache-control", b"no-store")]}, "request_no_store"),
        ({"response": [(b"set-cookie", b"sid=1")]}, "set_cookie"),
        ({"response": [(b"vary", b"*")]}, "vary_star"),
        # Vary beyond the policy's headers is stored per variant, unless it names too many.
        ({"response": [(b"vary", b",".join(b"x-h%d" % i for i in range(17)))]}, "vary_unkeyed"),
        ({"request": [(b"authorization", b"Bearer x")]}, "authorization"),
    ],
)
def test_not_storable(kwargs: dict[str, object], reason: str) -> None:
    assert store(**kwargs) == (False, reason)  # type: ignore[arg-type]


def test_policy_mode_still_respects_upstream_no_store_and_private() -> None:
    for value in (b"no-store", b"private"):
        assert store(POLICY, response=[(b"cache-control", value)])[0] is False
    # ...but not the upstream's freshness: policy TTL rules.
    assert store(POLICY, response=[(b"cache-control", b"max-age=0, must-revalidate")]) == (
        True,
        "ok",
    )


@pytest.mark.parametrize("status", [400, 413, 414, 431, 500, 502, 503, 504])
def test_client_triggered_errors_are_never_stored_even_if_allowed(status: int) -> None:
    assert status in NEVER_STORED_STATUSES
    permissive = replace(POLICY, cacheable_statuses=frozenset({200, status}))
    assert store(permissive, status=status) == (False, "error_status")


def test_methods_off_the_policy() -> None:
    head_only = replace(POLICY, cacheable_methods=frozenset({"HEAD"}))
    assert store(head_only) == (False, "method")
    assert cacheable_request(POLICY, "GET") and cacheable_request(POLICY, "HEAD")
    assert not cacheable_request(head_only, "GET")
    assert not cacheable_request(replace(POLICY, cacheable_methods=frozenset({"POST"})), "POST")


def test_vary_on_keyed_headers_is_fine() -> None:
    keyed = replace(POLICY, vary_headers=("accept-encoding", "accept"))
    assert store(keyed, response=[(b"vary", b"Accept-Encoding, accept")]) == (True, "ok")
    # Beyond the policy's headers: stored as a variant of the URL (heliox.core.variants).
    assert store(keyed, response=[(b"vary", b"accept, origin")]) == (True, "ok")


@pytest.mark.parametrize(
    ("cache_control", "ok"),
    [
        (b"public", True),
        (b"s-maxage=60", True),
        (b"must-revalidate, max-age=60", True),
        (b"max-age=60", False),
    ],
)
def test_authorization_needs_explicit_permission(cache_control: bytes, ok: bool) -> None:
    # RFC 9111 §3.5
    result = store(
        ORIGIN,
        request=[(b"authorization", b"Basic x")],
        response=[(b"cache-control", cache_control)],
    )
    assert result[0] is ok


def test_authorization_in_the_key_makes_it_safe() -> None:
    keyed = replace(POLICY, vary_headers=("authorization",))
    assert store(keyed, request=[(b"authorization", b"Bearer x")]) == (True, "ok")


def test_origin_mode_needs_some_freshness_information() -> None:
    explicit = replace(ORIGIN, cacheable_statuses=frozenset({200, 302}))
    assert store(explicit, status=302) == (False, "no_freshness")
    assert store(explicit, status=302, response=[(b"cache-control", b"max-age=5")]) == (True, "ok")
    assert store(explicit, status=302, response=[(b"expires", date(60))]) == (True, "ok")


def test_zero_ttl_policy_stores_nothing() -> None:
    zero = replace(
        POLICY, ttl_seconds=0, stale_while_revalidate_seconds=0, stale_if_error_seconds=0
    )
    assert store(zero) == (False, "zero_ttl")


def test_expired_on_arrival_needs_now() -> None:
    stale = [(b"cache-control", b"max-age=10"), (b"age", b"20")]
    assert store(NO_WINDOWS, response=stale) == (True, "ok")
    assert store(NO_WINDOWS, response=stale, now=NOW) == (False, "expired_on_arrival")
    no_cache = [(b"cache-control", b"no-cache"), (b"etag", b'"v1"')]
    assert store(ORIGIN, response=no_cache, now=NOW) == (False, "expired_on_arrival")


# --- entry_times ----------------------------------------------------------------------------


def times(policy: CachePolicyConfig, headers: H, status: int = 200) -> tuple[float, float, float]:
    t = entry_times(policy, status, headers, NOW)
    return t.fresh_until - NOW, t.stale_until - NOW, t.error_until - NOW


def test_policy_mode_times() -> None:
    assert times(POLICY, []) == (60, 90, 360)
    # Upstream freshness does not matter in policy mode.
    assert times(POLICY, [(b"cache-control", b"max-age=5, must-revalidate")]) == (60, 90, 360)
    assert isinstance(entry_times(POLICY, 200, [], NOW), EntryTimes)


@pytest.mark.parametrize(
    ("headers", "fresh"),
    [
        ([(b"cache-control", b"max-age=100, s-maxage=20")], 20),  # §4.2.1: s-maxage first
        ([(b"cache-control", b"max-age=100"), (b"expires", date(10))], 100),  # then max-age
        ([(b"expires", date(50)), (b"date", date(0))], 50),  # then Expires - Date
        ([(b"expires", date(50))], 50),  # no Date: time received
        ([(b"expires", date(80)), (b"date", date(-20))], 100),  # skew-free Expires - Date
        ([(b"expires", b"0")], 0),  # §5.3: invalid Expires is already expired
        ([(b"expires", date(-10))], 0),
        ([(b"cache-control", b"max-age=100"), (b"age", b"30")], 70),  # age on arrival counts
        ([(b"cache-control", b"max-age=10"), (b"age", b"30")], -20),
        ([(b"cache-control", b"no-cache, max-age=100")], 0),  # §5.2.2.4
        ([], 0),  # nothing at all and no Last-Modified: no heuristic
        ([(b"last-modified", date(-1000)), (b"date", date(0))], 60),  # 10% = 100, capped at TTL
        ([(b"last-modified", date(-300)), (b"date", date(0))], 30),  # 10% of 300
    ],
)
def test_origin_freshness_lifetime(headers: H, fresh: float) -> None:
    assert times(NO_WINDOWS, headers)[0] == fresh


def test_heuristic_only_for_heuristically_cacheable_statuses() -> None:
    lm = [(b"last-modified", date(-300)), (b"date", date(0))]
    assert times(NO_WINDOWS, lm, status=404)[0] == 30
    assert times(NO_WINDOWS, lm, status=302)[0] == 0
    assert times(NO_WINDOWS, [*lm, (b"cache-control", b"public")], status=302)[0] == 30


def test_origin_windows() -> None:
    max_age = (b"cache-control", b"max-age=10")
    assert times(ORIGIN, [max_age]) == (10, 40, 310)  # the route's defaults
    longer = (b"cache-control", b"max-age=10, stale-while-revalidate=100, stale-if-error=1000")
    assert times(ORIGIN, [longer]) == (10, 110, 1010)  # RFC 5861 extends them
    shorter = (b"cache-control", b"max-age=10, stale-while-revalidate=5")
    assert times(ORIGIN, [shorter]) == (10, 40, 310)  # but never shortens the route's own
    for directive in (b"must-revalidate", b"proxy-revalidate", b"no-cache"):
        cc = (b"cache-control", b"max-age=10, stale-while-revalidate=100, " + directive)
        fresh = 0 if directive == b"no-cache" else 10
        assert times(ORIGIN, [cc]) == (fresh, fresh, fresh)  # no stale serving at all


def test_s_maxage_implies_proxy_revalidate_unless_origin_opens_a_window() -> None:
    assert times(ORIGIN, [(b"cache-control", b"s-maxage=10")]) == (10, 10, 10)
    cc = (b"cache-control", b"s-maxage=10, stale-while-revalidate=20")
    assert times(ORIGIN, [cc]) == (10, 30, 10)


def test_initial_age() -> None:
    assert initial_age([(b"age", b"15")]) == 15
    assert initial_age([(b"age", b"junk")]) == 0
    assert initial_age([(b"date", date(-500))]) == 0  # Date alone: no apparent age (skew)


# --- lookup_state ---------------------------------------------------------------------------


@dataclass
class Entry:
    stored_at: float = NOW
    fresh_until: float = NOW + 60
    stale_until: float = NOW + 90
    error_until: float = NOW + 360
    age_at_store: int = 0


@pytest.mark.parametrize(
    ("at", "state"),
    [
        (0, LookupState.HIT),
        (59.9, LookupState.HIT),
        (60, LookupState.STALE),
        (89.9, LookupState.STALE),
        (90, LookupState.MUST_REVALIDATE),  # inside the error window only
        (359.9, LookupState.MUST_REVALIDATE),
        (360, LookupState.EXPIRED),
        (10_000, LookupState.EXPIRED),
    ],
)
def test_lookup_state_over_time(at: float, state: LookupState) -> None:
    assert lookup_state(Entry(), NOW + at) is state


def test_no_windows_goes_straight_from_hit_to_expired() -> None:
    entry = Entry(stale_until=NOW + 60, error_until=NOW + 60)
    assert lookup_state(entry, NOW + 59) is LookupState.HIT
    assert lookup_state(entry, NOW + 60) is LookupState.EXPIRED


@pytest.mark.parametrize(
    ("request_cc", "at", "state"),
    [
        (b"no-cache", 0, LookupState.MUST_REVALIDATE),  # §5.2.1.4
        (b"max-age=0", 1, LookupState.MUST_REVALIDATE),  # §5.2.1.1
        (b"max-age=10", 5, LookupState.HIT),
        (b"max-age=10", 11, LookupState.MUST_REVALIDATE),
        (b"max-age=100", 70, LookupState.STALE),
        (b"min-fresh=30", 20, LookupState.HIT),  # §5.2.1.3
        (b"min-fresh=30", 40, LookupState.MUST_REVALIDATE),
        (b"only-if-cached", 0, LookupState.HIT),  # the 504 is the caller's
        (b"no-cache", 400, LookupState.EXPIRED),  # nothing left to revalidate
    ],
)
def test_request_directives(request_cc: bytes, at: float, state: LookupState) -> None:
    assert lookup_state(Entry(), NOW + at, parse_cache_control(request_cc)) is state


def test_request_max_age_counts_the_age_on_arrival() -> None:
    entry = Entry(age_at_store=50)
    assert lookup_state(entry, NOW + 5, parse_cache_control(b"max-age=30")) is (
        LookupState.MUST_REVALIDATE
    )
    assert lookup_state(entry, NOW + 5, EMPTY) is LookupState.HIT


def test_stale_on_error_window() -> None:
    entry = Entry()
    assert can_serve_stale_on_error(entry, NOW + 100)
    assert can_serve_stale_on_error(entry, NOW + 359)
    assert not can_serve_stale_on_error(entry, NOW + 360)
    assert not can_serve_stale_on_error(Entry(error_until=NOW + 60), NOW + 61)


def test_age_and_ttl() -> None:
    assert age_header(Entry(), NOW) == b"0"
    assert age_header(Entry(), NOW + 12.9) == b"12"
    assert age_header(Entry(age_at_store=100), NOW + 5) == b"105"
    assert age_header(Entry(), NOW - 5) == b"0"  # a clock step backwards never goes negative
    assert ttl_seconds(Entry(), NOW + 47.5) == 12
    assert ttl_seconds(Entry(), NOW + 60.5) == -1


# --- Cache-Status ---------------------------------------------------------------------------


def test_cache_status_values() -> None:
    assert cache_status(hit=True, ttl=12) == b"heliox; hit; ttl=12"
    assert cache_status(fwd="miss", fwd_status=200, stored=True) == (
        b"heliox; fwd=miss; fwd-status=200; stored"
    )
    assert cache_status(fwd="stale", fwd_status=304, ttl=-3) == (
        b"heliox; fwd=stale; fwd-status=304; ttl=-3"
    )
    assert cache_status(fwd="uri-miss", collapsed=True) == b"heliox; fwd=uri-miss; collapsed"
    assert cache_status(fwd="bypass", detail="private") == b"heliox; fwd=bypass; detail=private"
    assert cache_status(hit=True, detail="stale if error") == (
        b'heliox; hit; detail="stale if error"'
    )
    assert cache_status(hit=True, key='c:"x"\\') == b'heliox; hit; key="c:\\"x\\"\\\\"'


def test_hit_status_is_cache_status_memoised_and_bounded() -> None:
    for ttl, detail in ((12, None), (-3, "stale if error"), (0, "negative"), (12, None)):
        assert hit_status(ttl, detail) == cache_status(hit=True, ttl=ttl, detail=detail)
    for ttl in range(10_000):  # one per second of a long TTL, and more
        assert hit_status(ttl) == b"heliox; hit; ttl=%d" % ttl
    assert len(freshness._HIT_STATUS) <= 4096


def test_cache_status_refuses_contradictions() -> None:
    with pytest.raises(ValueError):
        cache_status(hit=True, fwd="miss")
    with pytest.raises(ValueError):
        cache_status(fwd="nonsense")


# --- headers --------------------------------------------------------------------------------


def test_headers_to_store_drops_what_must_not_be_replayed() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"keep-alive", b"timeout=5"),
        (b"set-cookie", b"a=1"),
        (b"age", b"10"),
        (b"ratelimit-limit", b"100"),
        (b"ratelimit-policy", b"100;w=1"),
        (b"x-ratelimit-remaining", b"3"),
        (b"retry-after", b"5"),
        (b"x-cache", b"HIT"),
        (b"etag", b'"v1"'),
        (b"cache-control", b"max-age=60"),
        (b"x-request-id", b"abc"),
    ]
    assert headers_to_store(headers) == [
        (b"content-type", b"application/json"),
        (b"etag", b'"v1"'),
        (b"cache-control", b"max-age=60"),
        (b"x-request-id", b"abc"),
    ]


STORED = [
    (b"etag", b'W/"v1"'),
    (b"last-modified", date(-100)),
    (b"date", date(-10)),
    (b"content-type", b"text/plain"),
    (b"cache-control", b"max-age=60"),
]


@pytest.mark.parametrize(
    ("request_headers", "expected"),
    [
        ([], False),
        ([(b"if-none-match", b'"v1"')], True),  # weak comparison ignores W/
        ([(b"if-none-match", b'W/"v1"')], True),
        ([(b"if-none-match", b'"v2", "v1"')], True),
        ([(b"if-none-match", b'"v2"'), (b"if-none-match", b'"v1"')], True),
        ([(b"if-none-match", b'"v2"')], False),
        ([(b"if-none-match", b"*")], True),
        # RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since.
        ([(b"if-none-match", b'"v2"'), (b"if-modified-since", date(0))], False),
        ([(b"if-modified-since", date(0))], True),
        ([(b"if-modified-since", date(-100))], True),
        ([(b"if-modified-since", date(-101))], False),
        ([(b"if-modified-since", b"garbage")], False),
    ],
)
def test_not_modified(request_headers: H, expected: bool) -> None:
    assert not_modified(STORED, request_headers) is expected


def test_not_modified_edge_cases() -> None:
    inm = [(b"if-none-match", b'"a,b"')]
    assert not_modified([(b"etag", b'"a,b"')], inm)  # commas inside an entity-tag
    assert not not_modified([(b"etag", b'"a"')], inm)
    assert not not_modified([], [(b"if-none-match", b'"v1"')])  # nothing to compare
    # Without Last-Modified, the stored Date stands in (RFC 9111 §4.3.2).
    assert not_modified([(b"date", date(-10))], [(b"if-modified-since", date(0))])
    assert not not_modified([], [(b"if-modified-since", date(0))])
    # Preconditions only apply to 2xx: a stored 404 is never a 304.
    assert not not_modified(STORED, [(b"if-none-match", b"*")], status=404)


def test_not_modified_headers_and_validators() -> None:
    assert [n for n, _ in not_modified_headers(STORED)] == [
        b"etag",
        b"last-modified",
        b"date",
        b"cache-control",
    ]
    assert conditional_headers(STORED) == [
        (b"if-none-match", b'W/"v1"'),
        (b"if-modified-since", date(-100)),
    ]
    assert conditional_headers([(b"content-type", b"x")]) == []


def test_freshen_headers_from_a_304() -> None:
    from_304 = [
        (b"cache-control", b"max-age=120"),
        (b"date", date(0)),
        (b"content-length", b"0"),
        (b"set-cookie", b"x=1"),
        (b"connection", b"keep-alive"),
    ]
    merged = dict(freshen_headers(STORED, from_304))
    assert merged[b"cache-control"] == b"max-age=120"
    assert merged[b"date"] == date(0)
    assert merged[b"etag"] == b'W/"v1"'
    assert b"content-length" not in merged  # §3.2: the 304's own length is not the body's
    assert b"set-cookie" not in merged and b"connection" not in merged


# --- fields targeting this cache: CDN-Cache-Control (RFC 9213), Surrogate-Control -----------
CC = b"cache-control"
CDN = b"cdn-cache-control"
SC = b"surrogate-control"
ORIGIN_302 = replace(ORIGIN, cacheable_statuses=frozenset({302}))  # no heuristic freshness


@pytest.mark.parametrize(
    ("policy", "headers", "expected"),
    [
        # RFC 9213 §2.1: a valid targeted field replaces Cache-Control for this cache.
        (ORIGIN, [(CC, b"no-store"), (CDN, b"max-age=60")], (True, "ok")),
        (ORIGIN, [(CC, b"private"), (CDN, b"max-age=60")], (True, "ok")),
        (POLICY, [(CC, b"no-store"), (CDN, b"max-age=60")], (True, "ok")),
        # RFC 9213 §2.1 (no-store, private are directives it MUST implement), in both modes.
        (ORIGIN, [(CC, b"max-age=60"), (CDN, b"no-store")], (False, "no_store")),
        (POLICY, [(CC, b"max-age=60"), (CDN, b"no-store")], (False, "no_store")),
        (ORIGIN, [(CC, b"max-age=60"), (CDN, b"private")], (False, "private")),
        (POLICY, [(CC, b"max-age=60"), (CDN, b"private, max-age=60")], (False, "private")),
        # RFC 9213 §2.1: precedence CDN-Cache-Control, then Surrogate-Control, then Cache-Control.
        (ORIGIN, [(CC, b"no-store"), (SC, b"max-age=60")], (True, "ok")),
        (ORIGIN, [(CC, b"max-age=60"), (SC, b"no-store")], (False, "no_store")),
        (ORIGIN, [(SC, b"no-store"), (CDN, b"max-age=60")], (True, "ok")),
        (ORIGIN, [(SC, b"max-age=60"), (CDN, b"no-store")], (False, "no_store")),
        # RFC 9213 §2.2: an empty or unparsable field is ignored; Cache-Control applies.
        (ORIGIN, [(CC, b"no-store"), (CDN, b"")], (False, "no_store")),
        (ORIGIN, [(CC, b"no-store"), (CDN, b"Max-Age=60")], (False, "no_store")),
        (ORIGIN, [(CC, b"no-store"), (CDN, b"max-age=60,")], (False, "no_store")),
        (ORIGIN, [(CC, b"no-store"), (CDN, b'max-age="60')], (False, "no_store")),
        (ORIGIN, [(CC, b"max-age=60"), (CDN, b"no-store;")], (True, "ok")),
        # RFC 9213 §3.1: a valid field with no known directive still replaces Cache-Control.
        (ORIGIN, [(CC, b"no-store"), (CDN, b"none")], (True, "ok")),
        # RFC 9213 §2.2: a value of the wrong type is not consumed (the field stays valid).
        (ORIGIN, [(CC, b"no-store"), (CDN, b'max-age="60", no-store=?0')], (True, "ok")),
        # RFC 9213 §2.2: parameters on a directive are ignored.
        (ORIGIN, [(CC, b"no-store"), (CDN, b"max-age=60;foo=1")], (True, "ok")),
        # Edge Architecture §3: directives aimed at another named surrogate are not ours.
        (ORIGIN, [(CC, b"max-age=60"), (SC, b"no-store;otherbox")], (True, "ok")),
        # Surrogate-Control without a caching directive is ignored.
        (ORIGIN, [(CC, b"no-store"), (SC, b'content="ESI/1.0"')], (False, "no_store")),
        # RFC 9213 §2.1: Expires is ignored with the targeted field too, so a 302 has no
        # freshness information (RFC 9111 §3) from its Expires alone.
        (ORIGIN_302, [(CDN, b"must-revalidate"), (b"expires", date(60))], (False, "no_freshness")),
        (ORIGIN_302, [(CC, b"must-revalidate"), (b"expires", date(60))], (True, "ok")),
        # RFC 9111 §3.5 through RFC 9213 §2.1: s-maxage in the targeted field allows an
        # authorized response; s-maxage only in the ignored Cache-Control does not.
        (ORIGIN, [(CC, b"no-cache"), (CDN, b"s-maxage=60")], (True, "ok")),
        (ORIGIN, [(CC, b"s-maxage=60"), (CDN, b"max-age=60")], (False, "authorization")),
    ],
)
def test_storable_with_targeted_fields(
    policy: CachePolicyConfig, headers: H, expected: tuple[bool, str]
) -> None:
    status = 302 if any(name == b"expires" for name, _ in headers) else 200
    auth = [(b"authorization", b"Bearer t")] if "s-maxage" in repr(headers) else []
    assert store(policy, status=status, response=headers, request=auth, now=NOW) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # RFC 9213 §2.1: the targeted field's max-age decides, whatever Cache-Control says.
        ([(CC, b"no-store"), (CDN, b"max-age=600")], (600, 600, 600)),
        ([(CC, b"max-age=5, must-revalidate"), (CDN, b"max-age=600")], (600, 600, 600)),
        # RFC 9213 §2.1: Expires is ignored with Cache-Control.
        ([(b"expires", date(50)), (CDN, b"max-age=600")], (600, 600, 600)),
        ([(b"expires", date(50)), (CDN, b"no-cache")], (0, 0, 0)),
        # RFC 9213 §2.1: precedence CDN-Cache-Control, then Surrogate-Control, then Cache-Control.
        ([(CC, b"max-age=5"), (SC, b"max-age=300"), (CDN, b"max-age=600")], (600, 600, 600)),
        ([(CC, b"max-age=5"), (SC, b"max-age=300")], (300, 300, 300)),
        ([(CC, b"max-age=5"), (SC, b"max-age=300"), (CDN, b"")], (300, 300, 300)),
        # RFC 9213 §2.2: an unparsable targeted field is ignored, Cache-Control applies.
        ([(CC, b"max-age=5"), (CDN, b"max-age=1.5.2")], (5, 5, 5)),
        # RFC 9213 §2.1 with RFC 5861: stale directives in the targeted field open windows...
        (
            [
                (CC, b"max-age=5"),
                (CDN, b"max-age=60, stale-while-revalidate=30, stale-if-error=90"),
            ],
            (60, 90, 150),
        ),
        ([(SC, b"max-age=60, stale-while-revalidate=30, stale-if-error=90")], (60, 90, 150)),
        # ...and those in the ignored Cache-Control do not.
        ([(CC, b"max-age=5, stale-while-revalidate=30"), (CDN, b"max-age=60")], (60, 60, 60)),
        # RFC 9213 §2.1: must-revalidate (MUST implement) ends every window.
        ([(CDN, b"max-age=60, stale-if-error=90, must-revalidate")], (60, 60, 60)),
        # RFC 9111 §5.2.2.10 via RFC 9213 §2.1 ("same semantics"): s-maxage in the targeted
        # field wins over its max-age and implies proxy-revalidate...
        ([(CDN, b"max-age=600, s-maxage=30")], (30, 30, 30)),
        # ...while an s-maxage only in the ignored Cache-Control changes nothing.
        ([(CC, b"s-maxage=30"), (CDN, b"max-age=600")], (600, 600, 600)),
        # Age on arrival counts against the targeted lifetime as against any other.
        ([(CDN, b"max-age=600"), (b"age", b"100")], (500, 500, 500)),
    ],
)
def test_origin_times_with_targeted_fields(
    headers: H, expected: tuple[float, float, float]
) -> None:
    assert times(NO_WINDOWS, headers) == expected


def test_targeted_stale_directives_extend_the_route_windows() -> None:
    # RFC 5861 §3-4 through RFC 9213 §2.1, as with Cache-Control: never shorter than the route's.
    cdn = (CDN, b"max-age=10, stale-while-revalidate=100, stale-if-error=1000")
    assert times(ORIGIN, [(CC, b"no-store"), cdn]) == (10, 110, 1010)
    assert times(ORIGIN, [(CDN, b"max-age=10")]) == (10, 40, 310)


def test_policy_mode_times_ignore_targeted_freshness() -> None:
    # The route's TTL and windows decide in policy mode, targeted or not.
    assert times(POLICY, [(CDN, b"max-age=5, must-revalidate")]) == (60, 90, 360)
    assert times(POLICY, [(SC, b"max-age=5")]) == (60, 90, 360)
