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
import platform
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from math import inf, isnan
from typing import Any

from prometheus_client.process_collector import ProcessCollector

from heliox import __version__

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


# Each event counted with `Metrics.count` is exported twice: as heliox_events_total{event=...}
# (kept for the dashboards that use it) and as the named counter below, with its own help text.
# An event missing here is in heliox_events_total only (tests/test_metrics.py checks that every
# event the code counts is named). Named counters are written even at 0, so an alert or a panel
# never looks at a series that does not exist yet.
EVENT_METRICS: dict[str, tuple[str, str]] = {
    # request log (PostgreSQL): rows written, kept on disk, replayed, or given up
    "log_rows_written": ("heliox_log_rows_written_total", "Request log rows written"),
    "log_rows_spilled": (
        "heliox_log_rows_spilled_total",
        "Request log rows written to the spill file because the database did not take them",
    ),
    "log_rows_replayed": (
        "heliox_log_rows_replayed_total",
        "Spilled request log rows written to the database later",
    ),
    "log_rows_lost": (
        "heliox_log_rows_lost_total",
        "Request log rows given up: the spill file could not be written or read",
    ),
    "log_queue_dropped": (
        "heliox_log_rows_dropped_total",
        "Request log rows dropped because the in-memory log queue was full (LOG_QUEUE_SIZE)",
    ),
    "log_write_errors": (
        "heliox_log_write_errors_total",
        "Failed or timed-out request log writes to the database",
    ),
    "refused_log_rows_dropped": (
        "heliox_refused_log_rows_dropped_total",
        "Log rows of refused requests without a valid key not written (over the log budget)",
    ),
    "access_log_dropped": (
        "heliox_access_log_lines_dropped_total",
        "Access log lines (ACCESS_LOG) dropped because standard output did not keep up",
    ),
    # configuration
    "config_reloads": ("heliox_config_reloads_total", "Configuration snapshots loaded"),
    "config_poll_errors": (
        "heliox_config_poll_errors_total",
        "Configuration version polls that failed (the last snapshot stays in use)",
    ),
    "config_full_reloads": (
        "heliox_config_full_reloads_total",
        "Configuration snapshots loaded whole (at start-up, or when no change set applies)",
    ),
    "config_deltas_applied": (
        "heliox_config_deltas_applied_total",
        "Configuration changes applied to the snapshot in use without loading it whole",
    ),
    # cache
    "cache_l1_hits": (
        "heliox_cache_l1_hits_total",
        "Cache hits answered from the in-process copy (L1) without asking Redis",
    ),
    "coalesced": (
        "heliox_cache_coalesced_total",
        "Requests that waited for another request's upstream call instead of making their own",
    ),
    "stale_if_error": (
        "heliox_cache_stale_if_error_total",
        "Stale copies served because the upstream failed (stale-if-error)",
    ),
    "swr_refresh": (
        "heliox_cache_background_refreshes_total",
        "Background refreshes of stale entries (stale-while-revalidate)",
    ),
    "swr_refresh_failed": (
        "heliox_cache_background_refresh_failures_total",
        "Background refreshes that stored nothing (upstream error or answer not storable)",
    ),
    "cache_fills_outdated": (
        "heliox_cache_fills_outdated_total",
        "Cache fills not stored because a purge happened while they were in flight",
    ),
    "cache_purges": ("heliox_cache_purges_total", "Cache purges through the admin API"),
    "redis_errors": (
        "heliox_cache_redis_errors_total",
        "Cache operations that failed on Redis (the request went on without the cache)",
    ),
    # admission and upstream
    "admission_unavailable": (
        "heliox_admission_unavailable_total",
        "Admission checks the rate-limit store could not answer (fail-open or 503)",
    ),
    "bad_key_limited": (
        "heliox_bad_key_limited_total",
        "Requests refused 429 because their address sent too many invalid API keys",
    ),
    "upstream_retries": (
        "heliox_upstream_retries_total",
        "Upstream requests retried on a fresh connection after a stale keep-alive one failed",
    ),
    # abuse detection
    "abuse_blocks": ("heliox_abuse_blocks_total", "Keys blocked by the abuse detector"),
    "abuse_slowdowns": (
        "heliox_abuse_slowdowns_total",
        "Keys slowed down by the abuse detector (ABUSE_ACTION=multiplier)",
    ),
    "abuse_shadow_flags": (
        "heliox_abuse_shadow_flags_total",
        "Keys the abuse detector flagged without acting (ABUSE_ACTION=shadow)",
    ),
    "abuse_unblocks": ("heliox_abuse_unblocks_total", "Keys unblocked through the admin API"),
    "abuse_forgets": (
        "heliox_abuse_forgets_total",
        "Abuse detector baselines forgotten after an unblock (this instance's or another's)",
    ),
    # admin authentication
    "admin_auth_failures": (
        "heliox_admin_auth_failures_total",
        "Failed admin authentications (wrong X-Admin-Key or UI password)",
    ),
    "admin_auth_lockouts": (
        "heliox_admin_auth_lockouts_total",
        "Client addresses locked out after repeated failed admin authentications",
    ),
    "admin_auth_refused_locked": (
        "heliox_admin_auth_refused_locked_total",
        "Admin requests refused because their address was locked out",
    ),
    "admin_auth_failures_unaudited": (
        "heliox_admin_auth_failures_unaudited_total",
        "Failed admin authentications whose audit row could not be written",
    ),
    "admin_auth_throttle_unavailable": (
        "heliox_admin_auth_throttle_unavailable_total",
        "Admin authentication throttle checks Redis could not answer",
    ),
    # periodic jobs
    "jobs_run": ("heliox_jobs_run_total", "Periodic job runs"),
    "jobs_skipped": (
        "heliox_jobs_skipped_total",
        "Periodic job runs skipped because another process held the job's lock",
    ),
    "job_errors": ("heliox_job_errors_total", "Periodic job runs that failed"),
}

# Help text of the gauges set by name (Metrics.gauges[name] is exported as heliox_<name>).
GAUGE_HELP: dict[str, str] = {
    "database_up": "1 when the database answers its health check (/health ok), else 0",
    "redis_up": "1 when Redis answers and has had no recent trouble (/health ok), else 0",
    "redis_breaker_open": "1 while the Redis circuit breaker is open or half-open, else 0",
    "log_queue_length": "Request log rows waiting in memory for the database",
    "config_version": "Version of the configuration snapshot in use",
}
# A worker's process sample older than this (against the newest one) is a worker that is gone:
# workers rewrite theirs every 0.5 s (SharedMetrics).
PROCESS_STALE_SECONDS = 10.0
# process_* families as prometheus-client's ProcessCollector names them (name, type, help).
PROCESS_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds"),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes"),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes"),
    ("process_open_fds", "gauge", "Number of open file descriptors"),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors"),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch"),
)
_process_collector: ProcessCollector | None = None


def process_sample() -> dict[str, float]:
    """This process's process_* values (read from /proc by prometheus-client's ProcessCollector;
    about 50 us), empty where /proc is not available."""
    global _process_collector
    if _process_collector is None:
        _process_collector = ProcessCollector(registry=None)
    out: dict[str, float] = {}
    for family in _process_collector.collect():
        for sample in family.samples:
            out[sample.name] = float(sample.value)
    return out


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
        # process_* of each live worker process: (pid, taken at, values); filled by `absorb`.
        self.processes: list[tuple[int, float, dict[str, float]]] = []

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
            "process": {"pid": os.getpid(), "at": time.time(), "values": process_sample()},
        }

    def absorb(self, d: Mapping[str, Any]) -> None:
        """Add another process's dump to this one. Gauges take the largest value: they describe
        shared things (the Redis cache's size, the config version) that every worker reports;
        a `*_up` gauge takes the smallest (a dependency is up when every worker reaches it)."""
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
            pick = min if name.endswith("_up") else max
            self.gauges[name] = pick(self.gauges.get(name, v), v)
        proc = d.get("process")
        if proc and proc.get("values"):
            self.processes.append((int(proc["pid"]), float(proc["at"]), dict(proc["values"])))

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
            out, "heliox_upstream_errors_total", "counter",
            "Upstream calls that failed (connect error, timeout, broken answer) by the status sent",
            (
                (("route", r), ("status", str(s)), n)
                for (r, s), n in sorted(self.upstream_errors.items())
            ),
        )  # fmt: skip
        _family(
            out, "heliox_events_total", "counter", "Named gateway events",
            ((("event", name), n) for name, n in sorted(self.events.items())),
        )  # fmt: skip
        for event, (metric, doc) in sorted(EVENT_METRICS.items(), key=lambda kv: kv[1][0]):
            _family(out, metric, "counter", doc, [(self.events.get(event, 0),)])
        for name, value in sorted(self.gauges.items()):
            doc = GAUGE_HELP.get(name, name.replace("_", " "))
            _family(out, f"heliox_{name}", "gauge", doc, [(value,)])
        _family(
            out, "heliox_build_info", "gauge", "Heliox version and Python version (always 1)",
            [(("python", platform.python_version()), ("version", __version__), 1)],
        )  # fmt: skip
        self._process_text(out)
        return "".join(out).encode("utf-8")

    def _process_text(self, out: list[str]) -> None:
        """process_* of every live worker, one series per worker labelled `pid`, and
        heliox_worker_processes: how many there are. Per worker rather than summed: a sum of
        start times or descriptor limits means nothing, and sum() in PromQL gives the total."""
        if not self.processes:
            return
        newest = max(at for _, at, _ in self.processes)
        live = {
            pid: values
            for pid, at, values in sorted(self.processes, key=lambda p: p[1])
            if newest - at <= PROCESS_STALE_SECONDS
        }
        _family(
            out, "heliox_worker_processes", "gauge",
            "Gateway processes whose metrics this exposition merges", [(len(live),)],
        )  # fmt: skip
        for name, kind, doc in PROCESS_FAMILIES:
            _family(
                out, name, kind, doc,
                ((("pid", str(pid)), v[name]) for pid, v in sorted(live.items()) if name in v),
            )  # fmt: skip

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
