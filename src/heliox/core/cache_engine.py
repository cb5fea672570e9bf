"""The cache's two decisions, as pure functions of (policy, request, stored entry, response, now).

`decide` says what a request gets before anything goes upstream; `settle` says what an upstream
answer (or its failure) does to the stored entry and the client's answer. The cache layer
(`heliox.gateway.cache_layer`) performs them: it reads the store, runs fills, relays bodies. Each
outcome carries its `X-Cache` label; `Cache-Status` details are RFC 9211's. Section numbers are
RFC 9111 unless another RFC is named.

    decide:  unsafe method        → WRITE_THROUGH (invalidate after a success, §4.4)
             not cacheable here   → BYPASS (method, Range, Cookie)
             fresh, acceptable    → HIT (NEGATIVE for a remembered 404)
             stale, SWR window    → STALE (serve it, refresh once in the background; RFC 5861 §3)
             only-if-cached       → ONLY_IF_CACHED (504, §5.2.1.7)
             stored, validators   → REVALIDATE (a conditional fill, §4.3.1)
             nothing usable       → FILL
    settle:  304 to a revalidation→ FRESHEN (REVALIDATED, §4.3.4)
             error or 5xx, stale-if-error window → SERVE_STALE (RFC 5861 §4)
             storable             → STORE
             anything else        → RELAY (with the reason it was not stored)
             error, nothing stale → ERROR
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from heliox.core.cachecontrol import CacheControl
from heliox.core.freshness import (
    STATE_EXPIRED,
    STATE_HIT,
    STATE_STALE,
    EntryTimes,
    Headers,
    StoredTimes,
    cacheable_request,
    can_serve_stale_on_error,
    conditional_headers,
    entry_times,
    lookup_bypass,
    lookup_state,
    must_ask_origin,
    remembers_404s,
    storable,
)
from heliox.snapshot import CachePolicyConfig

__all__ = [
    "ACTION_HIT",
    "ACTION_ONLY_IF_CACHED",
    "ACTION_STALE",
    "ACTION_WRITE_THROUGH",
    "Action",
    "Decision",
    "Outcome",
    "Settlement",
    "StoredResponse",
    "classify",
    "decide",
    "expires_at",
    "judge",
    "keep_until",
    "live",
    "settle",
]

SAFE_METHODS = frozenset({"GET", "HEAD"})


class StoredResponse(StoredTimes, Protocol):
    """What `decide` and `settle` read of a stored entry (CacheEntry has it)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...
    @property
    def keep_until(self) -> float: ...


E = TypeVar("E", bound=StoredResponse)


def keep_until(policy: CachePolicyConfig, times: EntryTimes, headers: Headers) -> float:
    """Until when an entry is kept past its stale windows for revalidation: `keep_seconds` after
    them when it carries a validator (a conditional request then costs the upstream a 304
    instead of the body, §4.3.1), else not at all (0)."""
    if policy.keep_seconds <= 0 or not conditional_headers(headers):
        return 0.0
    return max(times.stale_until, times.error_until) + policy.keep_seconds


def expires_at(entry: StoredResponse) -> float:
    """When the entry is of no more use: past its stale windows and its keep window."""
    # Conditionals, not max(): this runs on every cache hit, and max() of three floats costs
    # several times as much.
    until = entry.stale_until
    error_until = entry.error_until
    if error_until > until:
        until = error_until
    keep_until = entry.keep_until
    return keep_until if keep_until > until else until


def live(entry: E | None, now: float) -> E | None:
    """`entry`, or None once it is past every window: the same as nothing, whatever the store
    still holds (a Redis TTL runs a little longer, for clocks that differ), so embedded and
    Redis decide alike."""
    if entry is not None and now >= expires_at(entry):
        return None
    return entry


class Action(StrEnum):
    WRITE_THROUGH = "write-through"
    BYPASS = "bypass"
    HIT = "hit"
    STALE = "stale"
    ONLY_IF_CACHED = "only-if-cached"
    REVALIDATE = "revalidate"
    FILL = "fill"


# For the request path, as freshness.STATE_*: an Enum class's attribute costs ten globals.
ACTION_HIT = Action.HIT
ACTION_STALE = Action.STALE
ACTION_WRITE_THROUGH = Action.WRITE_THROUGH
ACTION_ONLY_IF_CACHED = Action.ONLY_IF_CACHED


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class Decision:
    """What a request gets. For FILL and REVALIDATE: whether the negative cache (Bloom filter)
    may answer first (`negative_lookup`), whether the request skipped it and a found URL must
    clear it (`negative_bypassed`), whether what comes back may be stored (`store`), and
    whether the request may take another request's fill (`join`)."""

    action: Action
    label: str = "MISS"
    detail: str | None = None
    negative_lookup: bool = False
    negative_bypassed: bool = False
    store: bool = True
    join: bool = True


_WRITE_THROUGH = Decision(Action.WRITE_THROUGH, "BYPASS")
_METHOD = Decision(Action.BYPASS, "BYPASS", "method")
_HIT = Decision(Action.HIT, "HIT")
_NEGATIVE_HIT = Decision(Action.HIT, "NEGATIVE", "negative")
_STALE = Decision(Action.STALE, "STALE")
_UPDATING = Decision(Action.STALE, "UPDATING")
_NEGATIVE_STALE = Decision(Action.STALE, "NEGATIVE", "negative")
_ONLY_IF_CACHED = Decision(Action.ONLY_IF_CACHED, "MISS", "only-if-cached")


def classify(policy: CachePolicyConfig, method: str, request_headers: Headers) -> Decision | None:
    """The decisions taken before the store is read: WRITE_THROUGH or BYPASS, else None."""
    if method not in SAFE_METHODS:
        return _WRITE_THROUGH
    if not cacheable_request(policy, method):
        return _METHOD
    bypass = lookup_bypass(policy, request_headers)
    if bypass is not None:
        return Decision(Action.BYPASS, "BYPASS", bypass)
    return None


def judge(
    policy: CachePolicyConfig,
    method: str,
    request_cc: CacheControl,
    entry: StoredResponse | None,
    now: float,
    *,
    updating: bool = False,
) -> Decision:
    """The decision for a GET or HEAD the cache handles, given what the store holds (`entry`,
    None for nothing) and whether this process already refreshes it (`updating`)."""
    entry = live(entry, now)
    # Past the stale windows but in the keep window, lookup_state says EXPIRED: revalidate.
    state = STATE_EXPIRED if entry is None else lookup_state(entry, now, request_cc)
    if entry is not None and state is STATE_HIT:
        return _NEGATIVE_HIT if _negative(policy, entry) else _HIT
    if entry is not None and state is STATE_STALE:
        if _negative(policy, entry):
            return _NEGATIVE_STALE
        return _UPDATING if updating else _STALE
    if request_cc.only_if_cached:
        return _ONLY_IF_CACHED
    lookup = remembers_404s(policy) and (
        entry is None or state is STATE_EXPIRED or entry.status == 404
    )
    revalidate = entry is not None and bool(conditional_headers(entry.headers))
    return Decision(
        Action.REVALIDATE if revalidate else Action.FILL,
        "MISS",
        negative_lookup=lookup and not request_cc.no_cache,
        negative_bypassed=lookup and request_cc.no_cache,
        # §5.2.1.5: nothing of a no-store exchange is stored; a HEAD has no body to store.
        store=not request_cc.no_store and method != "HEAD",
        join=not must_ask_origin(request_cc),
    )


def decide(
    policy: CachePolicyConfig,
    method: str,
    request_headers: Headers,
    request_cc: CacheControl,
    entry: StoredResponse | None,
    now: float,
    *,
    updating: bool = False,
) -> Decision:
    """`classify`, then `judge`: the whole decision (the request path runs the halves apart, so
    a bypassed request never reads the store)."""
    return classify(policy, method, request_headers) or judge(
        policy, method, request_cc, entry, now, updating=updating
    )


def _negative(policy: CachePolicyConfig, entry: StoredResponse) -> bool:
    return entry.status == 404 and policy.negative_cache


class Outcome(StrEnum):
    FRESHEN = "freshen"
    SERVE_STALE = "serve-stale"
    STORE = "store"
    RELAY = "relay"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Settlement:
    """What an upstream answer does: the outcome, the client's X-Cache and the Cache-Status
    detail (why it was not stored, or stale-if-error)."""

    outcome: Outcome
    label: str
    detail: str | None = None


_FRESHEN = Settlement(Outcome.FRESHEN, "REVALIDATED")
_SERVE_STALE = Settlement(Outcome.SERVE_STALE, "STALE", "stale-if-error")
_ERROR = Settlement(Outcome.ERROR, "MISS", "upstream-error")
_STORE = Settlement(Outcome.STORE, "MISS")
_EXPIRED_ON_ARRIVAL = Settlement(Outcome.RELAY, "MISS", "expired_on_arrival")


def settle(
    policy: CachePolicyConfig,
    request_headers: Headers,
    entry: StoredResponse | None,
    status: int | None,
    response_headers: Headers,
    content_length: int | None,
    now: float,
    *,
    method: str = "GET",
    validating: bool = False,
) -> Settlement:
    """What the upstream's answer to a fill does. `status` None: the upstream failed (refused,
    timed out, broke off before the headers). `validating`: the fill sent `entry`'s validators."""
    if status is None:
        if entry is not None and can_serve_stale_on_error(entry, now):
            return _SERVE_STALE  # RFC 5861 §4
        return _ERROR
    if entry is not None and status == 304 and validating:
        return _FRESHEN  # §4.3.4
    if entry is not None and status >= 500 and can_serve_stale_on_error(entry, now):
        return _SERVE_STALE  # RFC 5861 §4
    decision = storable(
        policy, method, status, response_headers, content_length or 0, request_headers
    )
    if not decision.ok:
        return Settlement(Outcome.RELAY, "MISS", decision.reason)
    times = entry_times(policy, status, response_headers, now)
    if (
        max(times.stale_until, times.error_until, keep_until(policy, times, response_headers))
        <= now
    ):
        # Of no use even for revalidation (no validator, or no keep window): not stored.
        return _EXPIRED_ON_ARRIVAL
    return _STORE
