"""Replay a traffic corpus through the abuse detector on a fake clock.

A corpus is JSON: {"shapes": [shape, ...]}. A shape is one key's traffic, described so that it
replays identically every time (a fixed seed):

    {"name": "steady-jitter", "kind": "ordinary" | "attack", "limit_rps": 100,
     "burst": 200, "seed": 7, "max_delay_seconds": 30, "description": "...",
     "segments": [segment, ...]}

Segments follow each other in time. A segment is one of
- {"seconds": S, "rate": R}: Poisson arrivals at R requests/s for S seconds, with optional
  "to_rate" (a linear ramp to that rate), "diurnal": A (the rate times 1 + A*sin(2*pi*t/day),
  t the time since the shape began), "jitter": J (the rate times a factor drawn uniformly from
  [1 - J, 1 + J], a new one every 10 s);
- {"at": [t, ...], "seconds": S}: requests at those offsets (seconds into the segment);
- {"repeat": N, "segments": [...]}: the inner segments N times over;
and any of them may carry "attack": true: the first such segment is where the attack begins.

Requests pass the key's token bucket (`limit_rps`, `burst`, default twice the rate) first, as in
the gateway, where a refused request is not fed to the detector. Ordinary shapes must give no
verdict at all; attack shapes must give none before the attack and one within
`max_delay_seconds` of its start.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heliox.core.anomaly import AbuseDetector, DetectorConfig

DAY = 86_400.0
JITTER_SLOT = 10.0


class CorpusError(ValueError):
    """The corpus is malformed; the message names the shape and what to fix."""


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    kind: str  # "ordinary" | "attack"
    limit_rps: float
    burst: float
    seed: int
    segments: tuple[Mapping[str, Any], ...]
    max_delay_seconds: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class ShapeResult:
    name: str
    kind: str
    duration: float  # the shape's length in seconds, silent stretches included
    requests: int
    admitted: int
    false_positives: int  # verdicts on ordinary traffic (for attacks: before the attack)
    attack_start: float | None
    detected_after: float | None  # seconds from the attack's start to the first verdict
    max_delay_seconds: float | None

    @property
    def passed(self) -> bool:
        if self.false_positives:
            return False
        if self.kind != "attack":
            return True
        limit = self.max_delay_seconds
        return self.detected_after is not None and (limit is None or self.detected_after <= limit)


def load_corpus(data: Mapping[str, Any]) -> list[Shape]:
    shapes = data.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        raise CorpusError('a corpus is {"shapes": [...]} with at least one shape')
    out = []
    for i, raw in enumerate(shapes):
        name = str(raw.get("name") or f"#{i}")
        kind = raw.get("kind", "ordinary")
        if kind not in ("ordinary", "attack"):
            raise CorpusError(f"shape {name}: kind must be 'ordinary' or 'attack'")
        try:
            limit = float(raw["limit_rps"])
            segments = tuple(raw["segments"])
        except (KeyError, TypeError, ValueError):
            raise CorpusError(f"shape {name}: needs limit_rps (a number) and segments") from None
        if limit <= 0 or not segments:
            raise CorpusError(f"shape {name}: limit_rps must be positive and segments non-empty")
        delay = raw.get("max_delay_seconds")
        out.append(
            Shape(
                name=name,
                kind=kind,
                limit_rps=limit,
                burst=float(raw.get("burst", 2 * limit)),
                seed=int(raw.get("seed", i)),
                segments=segments,
                max_delay_seconds=float(delay) if delay is not None else None,
                description=str(raw.get("description", "")),
            )
        )
    return out


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean `lam` (the fake clock's traffic and the tests')."""
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation: exact enough for traffic, and O(1)
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _expand(
    segments: Sequence[Mapping[str, Any]], start: float, rng: random.Random, shape: str
) -> Iterator[tuple[float, int, bool]]:
    """(time, requests, attack) in time order; Poisson segments give one entry per second."""
    t = start
    for seg in segments:
        attack = bool(seg.get("attack", False))
        if "repeat" in seg:
            inner = seg.get("segments") or []
            for _ in range(int(seg["repeat"])):
                end = t
                for when, n, a in _expand(inner, t, rng, shape):
                    end = when
                    yield when, n, a or attack
                t = max(end, t + _length(inner))
            continue
        seconds = float(seg.get("seconds", 0))
        if "at" in seg:
            offsets = sorted(float(x) for x in seg["at"])
            for off in offsets:
                yield t + off, 1, attack
            t += max(seconds, offsets[-1] if offsets else 0.0)
            continue
        if "rate" not in seg:
            raise CorpusError(f"shape {shape}: a segment needs rate, at or repeat")
        rate, to_rate = float(seg["rate"]), float(seg.get("to_rate", seg["rate"]))
        diurnal, jitter = float(seg.get("diurnal", 0)), float(seg.get("jitter", 0))
        factor = 1.0
        for s in range(int(seconds)):
            now = t + s
            r = rate + (to_rate - rate) * (s / seconds) if seconds else rate
            if diurnal:
                r *= 1 + diurnal * math.sin(2 * math.pi * (now - start) / DAY)
            if jitter and s % JITTER_SLOT == 0:
                factor = rng.uniform(1 - jitter, 1 + jitter)
            n = poisson(rng, r * factor)
            if n:
                yield now, n, attack
        t += seconds


def _length(segments: Sequence[Mapping[str, Any]]) -> float:
    total = 0.0
    for seg in segments:
        if "repeat" in seg:
            total += int(seg["repeat"]) * _length(seg.get("segments") or [])
        elif "at" in seg:
            offsets = [float(x) for x in seg["at"]]
            total += max(float(seg.get("seconds", 0)), max(offsets, default=0.0))
        else:
            total += float(seg.get("seconds", 0))
    return total


def replay(shape: Shape, config: DetectorConfig, start: float = 1_800_000_000.0) -> ShapeResult:
    """Run `shape` through a fresh detector; `start` is the fake clock's first reading."""
    rng = random.Random(shape.seed)
    det = AbuseDetector(config)
    key = f"k:{shape.name}"
    tokens, last = shape.burst, start
    requests = admitted = false_positives = 0
    attack_start: float | None = None
    detected: float | None = None
    for now, n, attack in _expand(shape.segments, start, rng, shape.name):
        if attack and attack_start is None:
            attack_start = now
        requests += n
        tokens = min(shape.burst, tokens + (now - last) * shape.limit_rps)
        last = now
        passed = min(n, int(tokens))
        tokens -= passed
        if not passed:
            continue
        admitted += passed
        verdict = det.record(key, now, passed, limit_rps=shape.limit_rps)
        if verdict is None:
            continue
        if attack_start is None or shape.kind != "attack":
            false_positives += 1
        elif detected is None:
            detected = now - attack_start
    return ShapeResult(
        name=shape.name,
        kind=shape.kind,
        duration=_length(shape.segments),
        requests=requests,
        admitted=admitted,
        false_positives=false_positives,
        attack_start=None if attack_start is None else attack_start - start,
        detected_after=detected,
        max_delay_seconds=shape.max_delay_seconds,
    )


def _duration(seconds: float) -> str:
    if seconds >= DAY:
        return f"{seconds / DAY:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def table(results: Sequence[ShapeResult]) -> str:
    """A Markdown table: one row per shape."""
    rows = [
        "| shape | kind | traffic | requests (admitted) | false positives | detected after |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in results:
        if r.kind == "attack":
            bound = f" (at most {r.max_delay_seconds:g} s)" if r.max_delay_seconds else ""
            got = "not detected" if r.detected_after is None else f"{r.detected_after:.0f} s"
            detect = got + bound
        else:
            detect = "-"
        rows.append(
            f"| {r.name} | {r.kind} | {_duration(r.duration)} | {r.requests} ({r.admitted}) "
            f"| {r.false_positives} | {detect}{'' if r.passed else ' **FAIL**'} |"
        )
    return "\n".join(rows)
