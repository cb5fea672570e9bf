"""Latency per second around the expiries of a hot cache entry (pure: records in, figures out).

A request for the hot key answered anything but `HIT` (STALE or UPDATING while a refresh runs,
MISS if the entry was gone) means the entry had expired when it arrived. Such answers close in
time form one expiry episode; the seconds it touches (from the first such request's start to the
last one's end, which is about when the refreshed entry was stored) are its "expiry seconds". Every
other full second is steady. The check: the p99 of each expiry second against the p99 of all the
steady seconds' requests together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

FRESH = "HIT"


class Sample(Protocol):
    @property
    def sent(self) -> float: ...
    @property
    def done(self) -> float: ...
    @property
    def x_cache(self) -> str: ...
    @property
    def ok(self) -> bool: ...


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of `values`; 0.0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Episode:
    start: float  # start of the first request that found the entry expired
    end: float  # end of the last one
    answers: dict[str, int] = field(default_factory=dict)  # X-Cache value -> count
    seconds: list[int] = field(default_factory=list)  # measured seconds it touches
    p99: float | None = None  # the worst p99 among those seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_s": round(self.start, 4),
            "end_s": round(self.end, 4),
            "answers": self.answers,
            "seconds": self.seconds,
            "p99_s": None if self.p99 is None else round(self.p99, 6),
        }


@dataclass
class Second:
    index: int
    requests: int
    errors: int
    p50: float
    p99: float
    expiry: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "second": self.index,
            "requests": self.requests,
            "errors": self.errors,
            "p50_s": round(self.p50, 6),
            "p99_s": round(self.p99, 6),
            "expiry": self.expiry,
        }


@dataclass
class Analysis:
    requests: int
    errors: int
    seconds: list[Second]
    episodes: list[Episode]
    steady_p50: float
    steady_p99: float
    limit: float  # the largest expiry-second p99 / steady p99 that meets the target
    # p99 of the requests started while an expiry was being handled (first non-HIT answer to
    # the refreshed entry), all expiries together: where a cost of the refresh itself would
    # show, without the rest of the second around it.
    refreshing_p99: float = 0.0

    @property
    def judged(self) -> list[Episode]:
        return [e for e in self.episodes if e.p99 is not None]

    @property
    def ratios(self) -> list[float]:
        if not self.steady_p99:
            return []
        return [e.p99 / self.steady_p99 for e in self.judged if e.p99 is not None]

    @property
    def worst_ratio(self) -> float | None:
        return max(self.ratios) if self.ratios else None

    @property
    def quiet_ratios(self) -> list[float]:
        """The same ratio for every steady second: how often noise alone crosses the limit."""
        if not self.steady_p99:
            return []
        return [s.p99 / self.steady_p99 for s in self.seconds if not s.expiry and s.requests]

    @property
    def quiet_over_limit(self) -> int:
        return sum(1 for r in self.quiet_ratios if r > self.limit)


def episodes_of(records: Sequence[Sample], gap: float) -> list[Episode]:
    """Group the answers that were not fresh hits: a new episode starts when one begins more
    than `gap` seconds after the previous one."""
    found: list[Episode] = []
    last_sent = -math.inf
    for r in sorted((r for r in records if r.ok and r.x_cache != FRESH), key=lambda r: r.sent):
        if r.sent - last_sent > gap or not found:
            found.append(Episode(r.sent, r.done))
        episode = found[-1]
        episode.end = max(episode.end, r.done)
        episode.answers[r.x_cache or "(none)"] = episode.answers.get(r.x_cache or "(none)", 0) + 1
        last_sent = r.sent
    return found


def analyse(
    records: Sequence[Sample], duration: float, *, gap: float, limit: float = 2.0
) -> Analysis:
    """Bucket `records` (times relative to the start of the measured run) by the second they
    completed in; the last partial second and anything after it are left out."""
    full = int(duration)
    latencies: list[list[float]] = [[] for _ in range(full)]
    errors = [0] * full
    for r in records:
        index = int(r.done)
        if 0 <= index < full:
            if r.ok:
                latencies[index].append(r.done - r.sent)
            else:
                errors[index] += 1
    episodes = episodes_of(records, gap)
    marked: set[int] = set()
    for e in episodes:
        e.seconds = [s for s in range(int(e.start), int(e.end) + 1) if 0 <= s < full]
        marked.update(e.seconds)
    seconds = [
        Second(i, len(lat), errors[i], percentile(lat, 50), percentile(lat, 99), i in marked)
        for i, lat in enumerate(latencies)
    ]
    steady = [x for i, lat in enumerate(latencies) if i not in marked for x in lat]
    for e in episodes:
        values = [seconds[s].p99 for s in e.seconds if seconds[s].requests]
        e.p99 = max(values) if values else None
    windows = [(e.start, e.end) for e in episodes]
    refreshing = [
        r.done - r.sent
        for r in records
        if r.ok and 0 <= r.done < full and any(a <= r.sent <= b for a, b in windows)
    ]
    return Analysis(
        refreshing_p99=percentile(refreshing, 99),
        requests=sum(len(lat) for lat in latencies) + sum(errors),
        errors=sum(errors),
        seconds=seconds,
        episodes=episodes,
        steady_p50=percentile(steady, 50),
        steady_p99=percentile(steady, 99),
        limit=limit,
    )
