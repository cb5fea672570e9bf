"""Process-local counters and latency histograms, exposed as JSON (/metrics) and Prometheus text.

The hot path only bumps plain dict counters after the response has been sent; the Prometheus
families are built from them at scrape time by a custom collector, so prometheus-client's own
locking never runs per request.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

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

    # --- several worker processes behind one port ---------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Every counter, JSON-serialisable, for another process of the same server to merge."""
        return {
            "started_at": self.started_at,
            "requests": [[r, s, n] for (r, s), n in self.requests.items()],
            "latency": {r: [h.counts, h.sum] for r, h in self.latency.items()},
            "upstream_latency": {r: [h.counts, h.sum] for r, h in self.upstream_latency.items()},
            "cache": [[r, c, n] for (r, c), n in self.cache.items()],
            "upstream_errors": [[r, s, n] for (r, s), n in self.upstream_errors.items()],
            "admission": [[r, o, why, n] for (r, o, why), n in self.admission.items()],
            "events": dict(self.events),
            "gauges": dict(self.gauges),
        }

    def absorb(self, d: dict[str, Any]) -> None:
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
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)


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

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.metrics.dump(), fh, separators=(",", ":"))
        os.replace(tmp, self.path)

    def merged(self) -> Metrics:
        self.write()
        total = Metrics()
        total.started_at = self.metrics.started_at
        for name in sorted(os.listdir(self.folder)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, name), encoding="utf-8") as fh:
                    total.absorb(json.load(fh))
            except (OSError, ValueError):
                continue  # a worker mid-write or gone: its next dump counts
        return total


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        req = CounterMetricFamily(
            "heliox_requests", "Data-plane requests answered", labels=["route", "status"]
        )
        for (route, status), n in sorted(m.requests.items()):
            req.add_metric([route, str(status)], n)
        yield req
        yield from _histograms(
            "heliox_request_duration_seconds", "Time to answer a data-plane request", m.latency
        )
        yield from _histograms(
            "heliox_upstream_duration_seconds",
            "Time to the upstream's response headers",
            m.upstream_latency,
        )
        cache = CounterMetricFamily(
            "heliox_cache_lookups", "Cache outcomes (X-Cache)", labels=["route", "result"]
        )
        for (route, result), n in sorted(m.cache.items()):
            cache.add_metric([route, result], n)
        yield cache
        adm = CounterMetricFamily(
            "heliox_admission", "Admission decisions", labels=["route", "outcome", "reason"]
        )
        for (route, outcome, reason), n in sorted(m.admission.items()):
            adm.add_metric([route, outcome, reason], n)
        yield adm
        ev = CounterMetricFamily("heliox_events", "Named gateway events", labels=["event"])
        for name, n in sorted(m.events.items()):
            ev.add_metric([name], n)
        yield ev
        for name, value in sorted(m.gauges.items()):
            g = GaugeMetricFamily(f"heliox_{name}", name.replace("_", " "))
            g.add_metric([], value)
            yield g


def _histograms(name: str, doc: str, hists: dict[str, Histogram]) -> Iterator[Metric]:
    fam = HistogramMetricFamily(name, doc, labels=["route"])
    for route, hist in sorted(hists.items()):
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for i, bound in enumerate(LATENCY_BUCKETS):
            cumulative += hist.counts[i]
            buckets.append((repr(bound), cumulative))
        cumulative += hist.counts[-1]
        buckets.append(("+Inf", cumulative))
        fam.add_metric([route], buckets, sum_value=hist.sum)
    yield fam
