"""Process-local counters and latency histograms, exposed as JSON (/metrics) and Prometheus text.

The hot path only bumps plain dict counters after the response has been sent; the exposition text
is written from them at scrape time, so no metrics library runs per request.

Every label takes its values from configuration or from a fixed set: the route label is the name
of a configured route (`UNKNOWN_ROUTE` for a request that matched none) and series of routes that
are removed from the configuration are dropped (`keep_routes`). So the maps, and the text, stay
as small as the configuration whatever clients send.
"""

from __future__ import annotations

import json
import os
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from math import inf, isnan
from typing import Any

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The route label of a request that matched no configured route (no route name can contain
# parentheses, so it never stands for a real one).
UNKNOWN_ROUTE = "(unknown)"

# Seconds; chosen around what a cache hit (sub-ms) and a slow upstream (seconds) cost.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile by linear interpolation inside its bucket (as PromQL does)."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        lower = 0.0
        for i, n in enumerate(self.counts):
            upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1]
            if seen + n >= rank and n > 0:
                return lower + (upper - lower) * ((rank - seen) / n)
            seen += n
            lower = upper
        return LATENCY_BUCKETS[-1]


class Metrics:
    def __init__(self) -> None:
        self.started_at = time.time()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)  # (route, status)
        self.latency: defaultdict[str, Histogram] = defaultdict(Histogram)  # by route
        self.upstream_latency: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.cache: defaultdict[tuple[str, str], int] = defaultdict(int)  # (route, X-Cache value)
        self.upstream_errors: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.admission: defaultdict[tuple[str, str, str], int] = defaultdict(
            int
        )  # route, outcome, reason
        # Named event counters: config reloads, log queue drops, Redis errors, coalesced waiters...
        self.events: defaultdict[str, int] = defaultdict(int)
        self.gauges: dict[str, float] = {}

    def observe_request(
        self,
        route: str,
        status: int,
        seconds: float,
        cache_status: str,
        upstream_seconds: float | None,
    ) -> None:
        self.requests[(route, status)] += 1
        self.latency[route].observe(seconds)
        if cache_status:
            self.cache[(route, cache_status)] += 1
        if upstream_seconds is not None:
            self.upstream_latency[route].observe(upstream_seconds)

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    def keep_routes(self, names: Collection[str]) -> None:
        """Drop the series of every route not in `names` (the configured ones): route labels come
        from configuration, and this keeps each map as small as the configuration too."""
        keep = {*names, UNKNOWN_ROUTE}
        counters: tuple[dict[Any, int], ...] = (
            self.requests,
            self.cache,
            self.upstream_errors,
            self.admission,
        )
        for series in counters:
            for k in [k for k in series if k[0] not in keep]:
                del series[k]
        for hists in (self.latency, self.upstream_latency):
            for r in [r for r in hists if r not in keep]:
                del hists[r]

    # --- several worker processes behind one port ---------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Every counter, JSON-serialisable, for another process of the same server to merge.

        A copy that shares nothing with the live counters: it can be read in another thread
        while requests keep counting."""
        return {
            "started_at": self.started_at,
            "requests": [[r, s, n] for (r, s), n in self.requests.items()],
            "latency": {r: [list(h.counts), h.sum] for r, h in self.latency.items()},
            "upstream_latency": {
                r: [list(h.counts), h.sum] for r, h in self.upstream_latency.items()
            },
            "cache": [[r, c, n] for (r, c), n in self.cache.items()],
            "upstream_errors": [[r, s, n] for (r, s), n in self.upstream_errors.items()],
            "admission": [[r, o, why, n] for (r, o, why), n in self.admission.items()],
            "events": dict(self.events),
            "gauges": dict(self.gauges),
        }

    def absorb(self, d: Mapping[str, Any]) -> None:
        """Add another process's dump to this one. Gauges take the largest value: they describe
        shared things (the Redis cache's size, the config version) that every worker reports."""
        self.started_at = min(self.started_at, float(d.get("started_at", self.started_at)))
        for r, s, n in d.get("requests", []):
            self.requests[(r, int(s))] += n
        for target, src in (
            (self.latency, d.get("latency", {})),
            (self.upstream_latency, d.get("upstream_latency", {})),
        ):
            for r, (counts, total) in src.items():
                h = target[r]
                for i, n in enumerate(counts[: len(h.counts)]):
                    h.counts[i] += n
                h.sum += total
        for r, c, n in d.get("cache", []):
            self.cache[(r, c)] += n
        for r, s, n in d.get("upstream_errors", []):
            self.upstream_errors[(r, int(s))] += n
        for r, o, why, n in d.get("admission", []):
            self.admission[(r, o, why)] += n
        for name, n in d.get("events", {}).items():
            self.events[name] += n
        for name, v in d.get("gauges", {}).items():
            self.gauges[name] = max(self.gauges.get(name, v), v)

    # --- views ---------------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        by_route: dict[str, dict[str, Any]] = {}
        total = 0
        for (route, status), n in self.requests.items():
            entry = by_route.setdefault(route, {"requests": 0, "by_status": {}, "cache": {}})
            entry["requests"] += n
            entry["by_status"][str(status)] = entry["by_status"].get(str(status), 0) + n
            total += n
        for (route, cache_status), n in self.cache.items():
            by_route.setdefault(route, {"requests": 0, "by_status": {}, "cache": {}})["cache"][
                cache_status
            ] = n
        merged = Histogram()
        for route, hist in self.latency.items():
            entry = by_route.setdefault(route, {"requests": 0, "by_status": {}, "cache": {}})
            entry["latency_ms"] = _quantiles_ms(hist)
            for i, n in enumerate(hist.counts):
                merged.counts[i] += n
            merged.sum += hist.sum
        cache_totals: defaultdict[str, int] = defaultdict(int)
        for (_, cache_status), n in self.cache.items():
            cache_totals[cache_status] += n
        served_from_cache = sum(
            n
            for s, n in cache_totals.items()
            if s in ("HIT", "STALE", "NEGATIVE", "UPDATING", "REVALIDATED")
        )
        lookups = served_from_cache + cache_totals.get("MISS", 0) + cache_totals.get("EXPIRED", 0)
        upstream_calls = sum(h.count for h in self.upstream_latency.values())
        return {
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "requests_total": total,
            "upstream_requests_total": upstream_calls,
            "latency_ms": _quantiles_ms(merged),
            "cache": {
                **dict(cache_totals),
                "hit_rate": round(served_from_cache / lookups, 4) if lookups else None,
            },
            "admission": {
                f"{route}|{outcome}|{reason}": n
                for (route, outcome, reason), n in self.admission.items()
            },
            "events": dict(self.events),
            "gauges": dict(self.gauges),
            "routes": by_route,
        }

    def prometheus_text(self) -> bytes:
        """The Prometheus text exposition format (0.0.4) of every counter, histogram and gauge."""
        out: list[str] = []
        _family(
            out, "heliox_requests_total", "counter", "Data-plane requests answered",
            ((("route", r), ("status", str(s)), n) for (r, s), n in sorted(self.requests.items())),
        )  # fmt: skip
        _histograms(
            out,
            "heliox_request_duration_seconds",
            "Time to answer a data-plane request",
            self.latency,
        )
        _histograms(
            out,
            "heliox_upstream_duration_seconds",
            "Time to the upstream's response headers",
            self.upstream_latency,
        )
        _family(
            out, "heliox_cache_lookups_total", "counter", "Cache outcomes (X-Cache)",
            ((("result", c), ("route", r), n) for (r, c), n in sorted(self.cache.items())),
        )  # fmt: skip
        _family(
            out, "heliox_admission_total", "counter", "Admission decisions",
            (
                (("outcome", o), ("reason", why), ("route", r), n)
                for (r, o, why), n in sorted(self.admission.items())
            ),
        )  # fmt: skip
        _family(
            out, "heliox_events_total", "counter", "Named gateway events",
            ((("event", name), n) for name, n in sorted(self.events.items())),
        )  # fmt: skip
        for name, value in sorted(self.gauges.items()):
            _family(out, f"heliox_{name}", "gauge", name.replace("_", " "), [(value,)])
        return "".join(out).encode("utf-8")

    @classmethod
    def merged(cls, dumps: Iterable[Mapping[str, Any]]) -> Metrics:
        """The sum of several dumps (processes of one server)."""
        total = cls()
        for d in dumps:
            total.absorb(d)  # started_at: the earliest of them
        return total


def _quantiles_ms(hist: Histogram) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        v = hist.quantile(q)
        out[name] = None if v is None else round(v * 1000, 3)
    out["count"] = hist.count
    return out


class SharedMetrics:
    """Metrics of every worker process of one `heliox serve`, through files in a shared folder.

    Each worker writes its dump every 0.5 s (and just before it answers a scrape); a scrape
    merges them all, so /metrics and /metrics/prometheus are right whichever worker serves them.
    """

    def __init__(self, metrics: Metrics, folder: str) -> None:
        self.metrics = metrics
        self.folder = folder
        self.path = os.path.join(folder, f"{os.getpid()}.json")

    def write(self, dump: dict[str, Any] | None = None) -> None:
        """Write this process's dump (`dump`, else one taken now from the live counters)."""
        # One temporary file per thread: the periodic dump and a scrape may write at once.
        tmp = f"{self.path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.metrics.dump() if dump is None else dump, fh, separators=(",", ":"))
        os.replace(tmp, self.path)

    def merged(self, dump: dict[str, Any] | None = None) -> Metrics:
        """Every worker's counters summed; `dump` (taken on the event loop) lets this run in
        another thread without touching the live counters."""
        own = self.metrics.dump() if dump is None else dump
        self.write(own)
        total = Metrics.merged(read_dumps(self.folder))
        total.started_at = float(own["started_at"])
        return total


def read_dumps(folder: str) -> Iterator[dict[str, Any]]:
    """The dumps the worker processes left in `folder`."""
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                yield json.load(fh)
        except (OSError, ValueError):
            continue  # a worker mid-write or gone: its next dump counts


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    """A sample value as prometheus-client (and Go) writes it: 3.0, 1.5e+07, +Inf, NaN."""
    d = float(value)
    if d == inf:
        return "+Inf"
    if d == -inf:
        return "-Inf"
    if isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go switches to exponents sooner than Python.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _family(
    out: list[str], name: str, kind: str, doc: str, samples: Iterable[tuple[Any, ...]]
) -> None:
    """One metric family; each sample is (label, value) pairs, sorted by label name, followed
    by the value. Written as prometheus-client writes it, byte for byte."""
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
    for sample in samples:
        *labels, value = sample
        if labels:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            out.append(f"{name}{{{text}}} {_number(value)}\n")
        else:
            out.append(f"{name} {_number(value)}\n")


_BOUNDS = tuple(repr(b) for b in LATENCY_BUCKETS)


def _histograms(out: list[str], name: str, doc: str, hists: Mapping[str, Histogram]) -> None:
    out.append(f"# HELP {name} {doc}\n# TYPE {name} histogram\n")
    for route, hist in sorted(hists.items()):
        label = f'route="{_escape(route)}"'
        cumulative = 0
        for bound, n in zip(_BOUNDS, hist.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound}",{label}}} {cumulative}.0\n')
        cumulative += hist.counts[-1]
        out.append(f'{name}_bucket{{le="+Inf",{label}}} {cumulative}.0\n')
        out.append(f"{name}_count{{{label}}} {cumulative}.0\n")
        out.append(f"{name}_sum{{{label}}} {_number(hist.sum)}\n")
