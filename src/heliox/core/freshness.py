"""Cache decisions: what may be stored, for how long, and what a stored entry is good for now.

Pure functions of (policy, headers, `now`); the section numbers in comments are RFC 9111 unless
another RFC is named. Two policy modes:

- "policy": the route's TTL and windows decide freshness; upstream `no-store`, `private`,
  `Set-Cookie` and `Vary` are still respected (they are about who may see the response, not how
  long it stays fresh).
- "origin": RFC 9111 shared-cache freshness from the response (s-maxage, max-age, Expires,
  a Last-Modified heuristic), RFC 5861 stale windows, must-revalidate and no-cache.

An entry carries three absolute times computed when it is stored: `fresh_until` (serve as HIT),
`stale_until` (serve STALE while one refresh runs) and `error_until` (serve stale when the
upstream fails). A store keeps it until the later of the last two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import NamedTuple, Protocol

from heliox.core.cachecontrol import (
    EMPTY,
    MAX_DELTA,
    CacheControl,
    cache_directives,
    joined,
    parse_age,
    parse_cache_control,
    parse_expires,
    parse_http_date,
    parse_vary,
)
from heliox.core.headers import HOP_BY_HOP, downstream_response_headers
from heliox.core.variants import response_vary
from heliox.snapshot import CachePolicyConfig

__all__ = [
    "HEURISTIC_STATUSES",
    "NEVER_STORED_STATUSES",
    "EntryTimes",
    "LookupState",
    "StoreDecision",
    "StoredTimes",
    "age_header",
    "age_seconds",
    "cache_status",
    "cacheable_request",
    "can_serve_stale_on_error",
    "conditional_headers",
    "entry_times",
    "freshen_headers",
    "headers_to_store",
    "initial_age",
    "lookup_bypass",
    "lookup_state",
    "must_ask_origin",
    "not_modified",
    "not_modified_headers",
    "remembers_404s",
    "request_accepts",
    "storable",
    "ttl_seconds",
]

Headers = Sequence[tuple[bytes, bytes]]

# RFC 9110 §15.1: statuses a cache may store without explicit freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses a client can provoke at will (or that say the upstream is failing): storing one would
# let a single request poison the entry for everyone, so no policy can allow them.
NEVER_STORED_STATUSES = frozenset({400, 413, 414, 431, *range(500, 600)})
HEURISTIC_FRACTION = 0.1  # §4.2.2: "10% of the interval since Last-Modified" is the usual rule

# Never replayed from a cache: per-connection, per-client or per-moment headers. `age` is
# recomputed on every hit; the rate-limit family describes the client of the moment.
_NEVER_STORED_HEADERS = frozenset(
    {
        b"set-cookie",
        b"set-cookie2",
        b"age",
        b"retry-after",
        b"x-cache",
    }
)
_NEVER_STORED_PREFIXES = (b"ratelimit", b"x-ratelimit-")
# RFC 9110 §15.4.5: what a 304 carries from the stored response.
_NOT_MODIFIED_FIELDS = (
    b"cache-control",
    b"content-location",
    b"date",
    b"etag",
    b"expires",
    b"last-modified",
    b"vary",
)
_BYPASS_FIELDS = frozenset({b"range", b"cookie"})
_CACHE_STATUS_FWD = frozenset(
    {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}
)


class LookupState(StrEnum):
    """What a stored entry is good for at the moment of a request."""

    HIT = "hit"  # fresh: serve it
    STALE = "stale"  # past freshness, inside stale-while-revalidate: serve it, refresh once
    MUST_REVALIDATE = "must_revalidate"  # go upstream (conditionally); the entry is a fallback
    EXPIRED = "expired"  # nothing usable: a miss


# The states under plain module names for the code every cache lookup runs: on Python 3.11 an
# Enum class's attributes are read through its metaclass's __getattr__ hook, about ten times the
# cost of a global.
STATE_HIT = LookupState.HIT
STATE_STALE = LookupState.STALE
STATE_MUST_REVALIDATE = LookupState.MUST_REVALIDATE
STATE_EXPIRED = LookupState.EXPIRED


class StoreDecision(NamedTuple):
    ok: bool
    reason: str  # "ok" or a short token for metrics and Cache-Status `detail`


class EntryTimes(NamedTuple):
    fresh_until: float
    stale_until: float
    error_until: float


class StoredTimes(Protocol):
    """The parts of a stored entry the decisions read (CacheEntry has them)."""

    @property
    def stored_at(self) -> float: ...
    @property
    def fresh_until(self) -> float: ...
    @property
    def stale_until(self) -> float: ...
    @property
    def error_until(self) -> float: ...
    @property
    def age_at_store(self) -> int: ...


def _value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def cacheable_request(policy: CachePolicyConfig, method: str) -> bool:
    """Whether a request may be looked up in the cache at all."""
    # §4: only GET and HEAD are answered from the cache; the key holds no request body.
    return method in policy.cacheable_methods and method in ("GET", "HEAD")


def remembers_404s(policy: CachePolicyConfig) -> bool:
    """Whether the route's 404s go into its Bloom filter of remembered 404s (the negative cache).

    Only in "policy" mode: a Bloom filter cannot forget one path early, and in "origin" mode a
    404 may be reused only while the origin's own freshness allows (§4.2; an `Expires` in the
    past allows nothing). There the stored 404 entry is the negative cache: it is kept, served
    as NEGATIVE and aged exactly like any other response.
    """
    return policy.negative_cache and policy.mode != "origin"


def lookup_bypass(policy: CachePolicyConfig, request_headers: Headers) -> str | None:
    """Why a GET or HEAD must go past the cache (answered by the upstream, nothing stored), or
    None; `request_headers` as the upstream would see them.

    "range": a partial answer must never stand in for, or replace, the full entry.
    "cookie": a request with a cookie asks for the answer of one session, which a cache keyed
    without it could hand to someone else, or answer with someone else's. Unless the policy
    keys on Cookie (each session its own entry) or opts in with `cache_with_cookies` (the
    answer does not depend on it: the cookie is then not forwarded on a fill).
    """
    cookie = False
    for name, _ in request_headers:
        if name in _BYPASS_FIELDS:  # one set probe per header: this runs on every HIT
            if name == b"range":
                return "range"
            cookie = True
    if cookie and not (policy.cache_with_cookies or "cookie" in policy.vary_headers):
        return "cookie"
    return None


def storable(
    policy: CachePolicyConfig,
    method: str,
    status: int,
    response_headers: Headers,
    body_len: int | None,
    request_headers: Headers,
    *,
    now: float | None = None,
) -> StoreDecision:
    """Whether a response may be stored, and if not why.

    With `now`, a response that would already be past every window is refused too
    ("expired_on_arrival"), so callers never report storing what the store drops.
    """
    if method != "GET":
        # A HEAD has no body to store and must never replace the GET entry it maps to; the key
        # holds no request body, so other methods could mix up requests.
        return StoreDecision(False, "method")
    if method not in policy.cacheable_methods:
        return StoreDecision(False, "method")
    if status == 206:
        return StoreDecision(False, "partial")  # §3.3: we never combine or store partial content
    if status in NEVER_STORED_STATUSES:
        return StoreDecision(False, "error_status")
    if status not in policy.cacheable_statuses:
        return StoreDecision(False, "status")
    if body_len is None:
        return StoreDecision(False, "unknown_length")  # an unfinished body is never stored
    if body_len > policy.max_object_bytes:
        return StoreDecision(False, "too_large")

    request_cc = parse_cache_control(joined(request_headers, b"cache-control"))
    if request_cc.no_store:
        return StoreDecision(False, "request_no_store")  # §5.2.1.5
    # RFC 9213 §2.1: a field targeting this cache replaces Cache-Control here, in both modes.
    cc, field = cache_directives(response_headers)
    if cc.no_store:
        return StoreDecision(False, "no_store")  # §5.2.2.5
    if cc.private:
        return StoreDecision(False, "private")  # §5.2.2.7: a shared cache must not store it
    if _value(response_headers, b"set-cookie") is not None:
        return StoreDecision(False, "set_cookie")

    vary = parse_vary(joined(response_headers, b"vary"))
    if "*" in vary:
        return StoreDecision(False, "vary_star")  # §4.1: never matches a later request
    if response_vary(policy.vary_headers, response_headers) is None:
        # Naming more headers than a variant key holds: stored, it could not be found again.
        return StoreDecision(False, "vary_unkeyed")

    if (
        _value(request_headers, b"authorization") is not None
        and "authorization" not in policy.vary_headers
        and not (cc.public or cc.must_revalidate or cc.s_maxage is not None)
    ):
        return StoreDecision(False, "authorization")  # §3.5

    targeted = field != b"cache-control"
    if policy.mode == "origin" and not _has_origin_freshness(
        status, cc, response_headers, targeted=targeted
    ):
        return StoreDecision(False, "no_freshness")  # §3: nothing says it may be reused
    if policy.mode != "origin" and (
        policy.ttl_seconds <= 0
        and policy.stale_while_revalidate_seconds <= 0
        and policy.stale_if_error_seconds <= 0
    ):
        return StoreDecision(False, "zero_ttl")
    if now is not None:
        times = entry_times(policy, status, response_headers, now)
        if max(times.stale_until, times.error_until) <= now:
            return StoreDecision(False, "expired_on_arrival")
    return StoreDecision(True, "ok")


def _has_origin_freshness(
    status: int, cc: CacheControl, headers: Headers, *, targeted: bool = False
) -> bool:
    # §3 (last bullet list): explicit freshness, `public`, or a heuristically cacheable status.
    # With `targeted` directives, Expires is ignored like Cache-Control (RFC 9213 §2.1).
    return (
        cc.max_age is not None
        or cc.s_maxage is not None
        or cc.public
        or (not targeted and _value(headers, b"expires") is not None)
        or status in HEURISTIC_STATUSES
    )


def initial_age(response_headers: Headers) -> int:
    """The age a response already had on arrival, from its Age header.

    §4.2.3 also derives an "apparent age" from Date; that term is left out so an upstream with
    a skewed clock cannot make every response arrive stale.
    """
    return parse_age(_value(response_headers, b"age")) or 0


def _origin_lifetime(
    policy: CachePolicyConfig, status: int, cc: CacheControl, headers: Headers, now: float
) -> float:
    # §4.2.1: s-maxage (shared caches), then max-age, then Expires minus Date.
    if cc.s_maxage is not None:
        return cc.s_maxage
    if cc.max_age is not None:
        return cc.max_age
    expires = parse_expires(joined(headers, b"expires"))
    date = parse_http_date(_value(headers, b"date"))
    if expires is not None:
        # §4.2.1: "Expires - Date"; without a Date, the time the response was received.
        return max(0.0, expires - (now if date is None else date))
    if status in HEURISTIC_STATUSES or cc.public:
        # §4.2.2: a heuristic only with Last-Modified, capped by the route's own TTL.
        modified = parse_http_date(_value(headers, b"last-modified"))
        if modified is not None:
            since = (now if date is None else date) - modified
            return min(max(0.0, since * HEURISTIC_FRACTION), float(policy.ttl_seconds))
    return 0.0


def entry_times(
    policy: CachePolicyConfig, status: int, response_headers: Headers, now: float
) -> EntryTimes:
    """(fresh_until, stale_until, error_until) in epoch seconds, for a response stored at `now`."""
    if policy.mode != "origin":
        fresh_until = now + max(0, policy.ttl_seconds)
        return EntryTimes(
            fresh_until,
            fresh_until + max(0, policy.stale_while_revalidate_seconds),
            fresh_until + max(0, policy.stale_if_error_seconds),
        )

    cc, field = cache_directives(response_headers)
    if field != b"cache-control":
        # RFC 9213 §2.1: a targeted field's directives replace Cache-Control and Expires alike.
        response_headers = [(n, v) for n, v in response_headers if n != b"expires"]
    lifetime = min(_origin_lifetime(policy, status, cc, response_headers, now), MAX_DELTA)
    if cc.no_cache:
        lifetime = 0.0  # §5.2.2.4: never reused without a successful validation
    fresh_until = now + lifetime - initial_age(response_headers)

    if cc.must_revalidate or cc.proxy_revalidate or cc.no_cache:
        # §4.2.4, §5.2.2.2, §5.2.2.8: no stale response may be served, not even on errors.
        return EntryTimes(fresh_until, fresh_until, fresh_until)
    if cc.s_maxage is not None:
        # §5.2.2.10: s-maxage implies proxy-revalidate; only the origin's own RFC 5861
        # directives (the more specific instruction) still open a stale window.
        swr = cc.stale_while_revalidate or 0
        sie = cc.stale_if_error or 0
    else:
        # RFC 5861 §3-4: the response's windows extend the route's defaults.
        swr = max(policy.stale_while_revalidate_seconds, cc.stale_while_revalidate or 0)
        sie = max(policy.stale_if_error_seconds, cc.stale_if_error or 0)
    return EntryTimes(fresh_until, fresh_until + swr, fresh_until + sie)


def age_seconds(entry: StoredTimes, now: float) -> float:
    """The entry's current age (§4.2.3: its age on arrival plus its time in the cache)."""
    age = entry.age_at_store + now - entry.stored_at
    return age if age > 0.0 else 0.0  # not max(): on every cache hit


def lookup_state(entry: StoredTimes, now: float, request_cc: CacheControl = EMPTY) -> LookupState:
    """What `entry` is good for at `now`, given the request's Cache-Control.

    Pass `EMPTY` as `request_cc` to ignore client directives (a route may refuse to let clients
    force upstream traffic). `only-if-cached` is left to the caller: on anything but HIT or
    STALE it answers 504 (§5.2.1.7) instead of going upstream.
    """
    if now >= entry.stale_until and now >= entry.error_until:
        return STATE_EXPIRED
    if request_cc is not EMPTY and not request_accepts(entry, now, request_cc):
        return STATE_MUST_REVALIDATE
    if now < entry.fresh_until:
        return STATE_HIT
    if now < entry.stale_until:
        return STATE_STALE  # RFC 5861 §3
    # Past the stale window but inside the error window: the upstream must be asked, and the
    # entry answers only if that fails.
    return STATE_MUST_REVALIDATE


def request_accepts(entry: StoredTimes, now: float, request_cc: CacheControl) -> bool:
    """Whether the request's own directives let it be answered with `entry` without asking the
    origin: also a fill's result that another request started (§5.2.1)."""
    if request_cc.no_cache:
        return False  # §5.2.1.4
    if request_cc.max_age is not None and age_seconds(entry, now) > request_cc.max_age:
        # §5.2.1.1: without max-stale the client does not want a stale response either.
        return False
    # §5.2.1.3
    return request_cc.min_fresh is None or entry.fresh_until - now >= request_cc.min_fresh


def must_ask_origin(request_cc: CacheControl) -> bool:
    """A request no stored or shared answer can satisfy, whatever its age: `no-cache` (§5.2.1.4)
    or `max-age=0` (§5.2.1.1). It never waits on another request's fill."""
    return request_cc.no_cache or request_cc.max_age == 0


def can_serve_stale_on_error(entry: StoredTimes, now: float) -> bool:
    """Whether an upstream failure may be answered with `entry` (RFC 5861 §4)."""
    return now < entry.error_until


def ttl_seconds(entry: StoredTimes, now: float) -> int:
    """Seconds of freshness left; negative once stale (RFC 9211 §2.5 `ttl`)."""
    return math.floor(entry.fresh_until - now)


def age_header(entry: StoredTimes, now: float) -> bytes:
    """The Age value for a response served from `entry` (§5.1)."""
    return b"%d" % int(age_seconds(entry, now))


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sf_token_or_string(value: str) -> str:
    first = value[:1]
    if (
        first.isascii()
        and (first.isalpha() or first == "*")
        and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~:/") for c in value)
    ):
        return value
    return _sf_string(value)


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    key: str | None = None,
    detail: str | None = None,
    cache: str = "heliox",
) -> bytes:
    """One RFC 9211 Cache-Status member: `heliox; hit; ttl=12`, `heliox; fwd=miss; stored`."""
    if hit and fwd is not None:
        raise ValueError("Cache-Status: hit and fwd are mutually exclusive (RFC 9211 §2.1)")
    if fwd is not None and fwd not in _CACHE_STATUS_FWD:
        raise ValueError(f"Cache-Status: unknown fwd value {fwd!r}")
    parts = [cache]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={int(fwd_status)}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if key is not None:
        parts.append(f"key={_sf_string(key)}")
    if detail is not None:
        parts.append(f"detail={_sf_token_or_string(detail)}")
    return "; ".join(parts).encode("latin-1", "replace")


_HIT_STATUS: dict[tuple[int, str | None], bytes] = {}


def hit_status(ttl: int, detail: str | None = None) -> bytes:
    """`cache_status(hit=True, ttl=ttl, detail=detail)`, memoised: every answer from the cache
    carries one, and building it (a list, a join, an encode) was a visible share of a HIT."""
    memo_key = (ttl, detail)
    found = _HIT_STATUS.get(memo_key)
    if found is None:
        if len(_HIT_STATUS) >= 4096:
            _HIT_STATUS.clear()  # bounded: ttls and details are few, but never trust that
        found = _HIT_STATUS[memo_key] = cache_status(hit=True, ttl=ttl, detail=detail)
    return found


def headers_to_store(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The response headers worth keeping: no hop-by-hop, cookies, Age or rate-limit fields."""
    return [
        (name, value)
        for name, value in downstream_response_headers(headers, drop=_NEVER_STORED_HEADERS)
        if not name.startswith(_NEVER_STORED_PREFIXES)
    ]


def _entity_tags(value: bytes) -> list[bytes]:
    """Opaque tags from an entity-tag list (weakness dropped: §13.1.2 uses weak comparison)."""
    tags: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in b" \t,":
            i += 1
        if i >= n:
            break
        if value.startswith(b"W/", i):
            i += 2
        if i < n and value[i] == 0x22:  # a quoted tag may itself contain commas
            end = value.find(b'"', i + 1)
            end = n if end < 0 else end
            tags.append(value[i + 1 : end])
            i = end + 1
            while i < n and value[i] != 0x2C:
                i += 1
        else:  # lenient: an unquoted tag runs to the next comma
            end = value.find(b",", i)
            end = n if end < 0 else end
            tags.append(value[i:end].strip(b" \t"))
            i = end
    return tags


def not_modified(entry_headers: Headers, request_headers: Headers, *, status: int = 200) -> bool:
    """Whether a conditional GET/HEAD can be answered 304 from the stored response.

    `status` is the stored response's: preconditions only apply to 2xx (RFC 9110 §13.2.1).
    """
    if not 200 <= status < 300:
        return False
    if_none_match = joined(request_headers, b"if-none-match")
    if if_none_match is not None:
        # RFC 9110 §13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored.
        if if_none_match.strip(b" \t") == b"*":
            return True
        etag = _value(entry_headers, b"etag")
        if etag is None:
            return False
        tags = _entity_tags(etag)
        if not tags:
            return False
        return tags[0] in _entity_tags(if_none_match)  # §13.1.2: weak comparison
    since = parse_http_date(_value(request_headers, b"if-modified-since"))
    if since is None:
        return False  # RFC 9110 §13.1.3: an invalid date is ignored
    # §4.3.2: compare with Last-Modified, else the stored response's Date.
    modified = parse_http_date(_value(entry_headers, b"last-modified"))
    if modified is None:
        modified = parse_http_date(_value(entry_headers, b"date"))
    return modified is not None and modified <= since


def not_modified_headers(entry_headers: Headers) -> list[tuple[bytes, bytes]]:
    """The stored headers a 304 repeats (RFC 9110 §15.4.5)."""
    return [(name, value) for name, value in entry_headers if name in _NOT_MODIFIED_FIELDS]


def conditional_headers(entry_headers: Headers) -> list[tuple[bytes, bytes]]:
    """Validators to send upstream when revalidating the entry (§4.3.1)."""
    out: list[tuple[bytes, bytes]] = []
    etag = _value(entry_headers, b"etag")
    if etag is not None:
        out.append((b"if-none-match", etag))
    modified = _value(entry_headers, b"last-modified")
    if modified is not None:
        out.append((b"if-modified-since", modified))
    return out


def freshen_headers(stored: Headers, from_304: Headers) -> list[tuple[bytes, bytes]]:
    """The stored headers updated by a 304 (§4.3.4): fields it carries replace stored ones."""
    # §3.2: Content-Length describes the 304 itself, never the stored body.
    fresh = [
        (name, value)
        for name, value in headers_to_store(from_304)
        if name != b"content-length" and name not in HOP_BY_HOP
    ]
    replaced = {name for name, _ in fresh}
    return [(name, value) for name, value in stored if name not in replaced] + fresh
