"""The dashboard's live figures, computed from successive scrapes of the gateway's counters.

Pure: a `Sample` is one scrape of /metrics/prometheus (cumulative counters, taken at `ts`); a
point is the difference between two samples, so it describes that interval alone (requests per
second, the hit rate and latency percentiles of those requests). Latency percentiles come from the
difference of the histogram buckets, interpolated inside the bucket as PromQL's
`histogram_quantile` does. Counters that went backwards mean the process restarted: the later
sample then counts from zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "heliox_requests"
LATENCY = "heliox_request_duration_seconds"
UPSTREAM = "heliox_upstream_duration_seconds"
CACHE = "heliox_cache_lookups"
# X-Cache values that mean "answered without calling the upstream" (as in metrics.py).
SERVED_FROM_CACHE = frozenset({"HIT", "STALE", "NEGATIVE", "UPDATING"})
# Lookups that could have been hits; BYPASS (not cacheable) is left out of the rate.
LOOKUPS = SERVED_FROM_CACHE | {"MISS", "EXPIRED", "REVALIDATED"}
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True, slots=True)
class Sample:
    ts: float
    requests: float = 0.0
    rejected_429: float = 0.0
    errors_5xx: float = 0.0
    errors_4xx: float = 0.0  # 429 and 401 included
    unauthorized: float = 0.0  # 401
    cache_served: float = 0.0
    cache_lookups: float = 0.0
    upstream_calls: float = 0.0
    latency_bounds: tuple[float, ...] = ()  # finite upper bounds, ascending
    latency_cumulative: tuple[float, ...] = ()  # per bound, then +Inf (one longer than bounds)
    blocked_keys: int | None = None


def parse_sample(text: str, ts: float, *, blocked_keys: int | None = None) -> Sample:
    """One sample from Prometheus exposition text (every route summed)."""
    requests = rejected = errors = client_errors = unauthorized = 0.0
    served = lookups = upstream = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == REQUESTS + "_total":
                requests += s.value
                status = s.labels.get("status", "")
                if status == "429":
                    rejected += s.value
                elif status == "401":
                    unauthorized += s.value
                elif status.startswith("5"):
                    errors += s.value
                if status.startswith("4"):
                    client_errors += s.value
            elif s.name == CACHE + "_total":
                result = s.labels.get("result", "")
                if result in SERVED_FROM_CACHE:
                    served += s.value
                if result in LOOKUPS:
                    lookups += s.value
            elif s.name == UPSTREAM + "_count":
                upstream += s.value
            elif s.name == LATENCY + "_bucket":
                le = _bound(s.labels.get("le", ""))
                if le is not None:
                    buckets[le] = buckets.get(le, 0.0) + s.value
    finite = tuple(sorted(b for b in buckets if math.isfinite(b)))
    cumulative = (*(buckets[b] for b in finite), buckets.get(math.inf, 0.0))
    return Sample(
        ts=ts,
        requests=requests,
        rejected_429=rejected,
        errors_5xx=errors,
        errors_4xx=client_errors,
        unauthorized=unauthorized,
        cache_served=served,
        cache_lookups=lookups,
        upstream_calls=upstream,
        latency_bounds=finite,
        latency_cumulative=cumulative if finite or buckets else (),
        blocked_keys=blocked_keys,
    )


def interval(a: Sample, b: Sample) -> dict[str, Any]:
    """What happened between two samples (b later than a), as the dashboard shows it."""
    if _restarted(a, b):
        a = Sample(ts=a.ts, latency_bounds=b.latency_bounds)
    seconds = max(b.ts - a.ts, 1e-9)
    requests = b.requests - a.requests
    lookups = b.cache_lookups - a.cache_lookups
    served = b.cache_served - a.cache_served
    latency = latency_quantiles_ms(a, b)
    return {
        "ts": round(b.ts, 3),
        "seconds": round(seconds, 3),
        "requests": requests,
        "rps": round(requests / seconds, 3),
        "rejected_429": b.rejected_429 - a.rejected_429,
        "errors_5xx": b.errors_5xx - a.errors_5xx,
        "errors_4xx": b.errors_4xx - a.errors_4xx,
        "unauthorized_401": b.unauthorized - a.unauthorized,
        "hit_rate": round(served / lookups, 4) if lookups > 0 else None,
        "upstream_calls": b.upstream_calls - a.upstream_calls,
        "upstream_saved": served,
        "blocked_keys": b.blocked_keys,
        **latency,
    }


def points(samples: Sequence[Sample], *, after: float | None = None) -> list[dict[str, Any]]:
    """One point per consecutive pair of samples, those ending after `after` (if given)."""
    out = []
    for a, b in itertools.pairwise(samples):
        # Compared as sent (rounded): the browser hands back the id of the last point it got.
        if after is None or round(b.ts, 3) > after:
            out.append(interval(a, b))
    return out


def window(samples: Sequence[Sample], *, now: float, seconds: float) -> dict[str, Any] | None:
    """The interval from the oldest sample within `seconds` of `now` to the newest one."""
    recent = [s for s in samples if s.ts >= now - seconds]
    if len(recent) < 2:
        # Fall back to the last two samples, however far apart, rather than show nothing.
        recent = list(samples[-2:])
    if len(recent) < 2:
        return None
    # A restart inside the window: only the part after it can be compared.
    start = 0
    for i in range(1, len(recent)):
        if _restarted(recent[i - 1], recent[i]):
            start = i
    if start >= len(recent) - 1:
        start = len(recent) - 2
    return interval(recent[start], recent[-1])


def latency_quantiles_ms(a: Sample, b: Sample) -> dict[str, float | None]:
    """p50/p95/p99 (milliseconds) of the requests between the two samples."""
    empty: dict[str, float | None] = {name: None for name, _ in QUANTILES}
    if not b.latency_cumulative:
        return empty
    if a.latency_cumulative and a.latency_bounds != b.latency_bounds:
        return empty  # the bucket layout changed (an upgrade): not comparable
    before = a.latency_cumulative or (0.0,) * len(b.latency_cumulative)
    deltas = [max(0.0, y - x) for x, y in zip(before, b.latency_cumulative, strict=False)]
    return {
        name: _ms(quantile_from_cumulative(b.latency_bounds, deltas, q)) for name, q in QUANTILES
    }


def quantile_from_cumulative(
    bounds: Sequence[float], cumulative: Sequence[float], q: float
) -> float | None:
    """The q-quantile from cumulative bucket counts (`cumulative[-1]` is the +Inf bucket)."""
    if not cumulative or not bounds:
        return None
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    lower = 0.0
    previous = 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank and count > previous:
            return lower + (bound - lower) * ((rank - previous) / (count - previous))
        lower, previous = bound, count
    # Beyond the last finite bucket: all we know is "more than the largest bound".
    return bounds[-1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _restarted(a: Sample, b: Sample) -> bool:
    return b.requests < a.requests or b.upstream_calls < a.upstream_calls


def _bound(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def count_items(payload: Any) -> int | None:
    """The number of entries in an admin listing (a JSON list or `{"items": [...]}`)."""
    items = list_items(payload)
    return None if items is None else len(items)


def list_items(payload: Any) -> list[Any] | None:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for name in ("items", "blocked", "results", "data"):
            value = payload.get(name)
            if isinstance(value, list):
                return value
    return None
