"""Abuse detection per key: EWMA mean and variance of requests per fixed bucket, and a z-score.

Each key counts requests in buckets of `window_seconds`. When a bucket completes, its count
updates the EWMA mean and variance (incremental form: d = x - mean; mean += alpha*d;
var = (1 - alpha)*(var + alpha*d^2)). The bucket still filling is scored as it fills, so a spike is
caught inside its first bucket: its count only grows, so a steady bucket stays below its mean
until it completes.

z = (observed - mean) / sqrt(max(var, dispersion * max(mean, min_rate), 1)). With alpha = 0.3 the
EWMA variance rests on about six buckets and swings from a fifth to three times the truth, so it
cannot be the only scale: the floor treats traffic as at least `dispersion` times as variable as
Poisson (variance = mean). Measured on simulated steady Poisson traffic (fixed seeds, 150 days of
10 s buckets per case, threshold 3): dispersion 1 flags a 50-per-bucket key ~34 times a day;
dispersion 3 about once in ten days at 50; dispersion 5 (the default) never at 20 or more per
bucket. Real API traffic is burstier than Poisson, so the floor errs the right way.

A quiet key is the hard case: with a mean near 0 any scale estimated from its own history is
near 0 too, and its first handful of requests in one bucket would score "infinitely" high. So
the mean that sets the scale is at least `min_rate` (a prior: every key is credited with that
much ordinary variability before its history says more), and at the defaults a key idle until
now needs about 20 requests in one 10 s bucket to score 3 at all.

A z-score alone is not evidence. A verdict also needs:
- a baseline worth the name: `min_samples` completed buckets (the observed span) holding at least
  `min_baseline_requests` requests (the sample count);
- a spike large relative to the baseline: at least `min_rate` requests in the bucket and at least
  `min_ratio` times the baseline mean;
- a spike large in absolute terms: at least `limit_fraction` of what the key's own rate limit
  admits in one bucket (a key may use what it pays for; a 1000 req/s key at 8 req/s is no flood).
Only rises count (a quiet key is not abusive). Empty buckets decay the baseline (the same update
with x = 0, at most `max_idle_buckets` times); a key idle longer than that starts a new baseline,
because at the defaults seven empty buckets leave under 9 % of the old mean. A bucket's
contribution to the baseline is clipped at mean + threshold * sigma, so a flood does not teach the
baseline to accept the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    window_seconds: float = 10.0
    alpha: float = 0.3
    threshold: float = 3.0
    min_samples: int = 6
    min_rate: float = 5.0  # requests per bucket below which there is no verdict; the scale's prior
    dispersion: float = 5.0  # variance floor as a multiple of the mean
    max_idle_buckets: int = 6
    min_baseline_requests: float = 30.0  # requests the baseline must hold before any verdict
    min_ratio: float = 4.0  # the bucket must hold at least this multiple of the baseline mean
    limit_fraction: float = 0.05  # ... and at least this share of what the key's limit admits
    action: str = "block"  # "block" | "multiplier" | "shadow": what the caller should do

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if self.threshold <= 0 or self.min_samples < 1 or self.max_idle_buckets < 0:
            raise ValueError("threshold > 0, min_samples >= 1 and max_idle_buckets >= 0 required")
        if self.min_baseline_requests < 0 or self.min_ratio < 1 or self.limit_fraction < 0:
            raise ValueError(
                "min_baseline_requests >= 0, min_ratio >= 1 and limit_fraction >= 0 required"
            )


@dataclass(slots=True)
class Baseline:
    """One key's state. `bucket` is the index (floor(now / window)) of the bucket filling now."""

    bucket: int
    count: float = 0.0
    mean: float = 0.0
    var: float = 0.0
    samples: int = 0  # completed buckets in the baseline
    seen: float = 0.0  # requests in those buckets (before clipping)
    flagged_bucket: int = -1  # last bucket already reported, so one flood gives one verdict


@dataclass(frozen=True, slots=True)
class Verdict:
    key: str
    anomalous: bool
    score: float  # z
    observed: float  # requests so far in the current bucket
    baseline_mean: float  # requests per bucket
    baseline_std: float  # the scale z was divided by (after the floor)
    samples: int
    bucket_start: float  # epoch seconds
    window_seconds: float
    action: str | None  # the configured action when anomalous, else None
    threshold: float = 3.0  # the z the score was compared with (a key's own, or the default)
    baseline_requests: float = 0.0  # requests the baseline holds
    limit_rps: float | None = None  # the key's rate limit the absolute floor was taken from

    @property
    def ratio(self) -> float:
        """The bucket's count as a multiple of the baseline mean (inf when the mean is 0)."""
        return self.observed / self.baseline_mean if self.baseline_mean > 0 else math.inf


def scale(state: Baseline, cfg: DetectorConfig) -> float:
    return math.sqrt(max(state.var, cfg.dispersion * max(state.mean, cfg.min_rate), 1.0))


def update(state: Baseline, x: float, cfg: DetectorConfig) -> None:
    """Fold one completed bucket's count into the EWMA mean and variance."""
    state.seen += x
    if state.samples == 0:
        state.mean = x
        state.var = 0.0
        state.samples = 1
        return
    if state.samples >= cfg.min_samples:
        x = min(x, state.mean + cfg.threshold * scale(state, cfg))
    a = cfg.alpha
    d = x - state.mean
    state.mean += a * d
    state.var = (1.0 - a) * (state.var + a * d * d)
    state.samples += 1


def advance(state: Baseline, bucket: int, cfg: DetectorConfig) -> None:
    """Complete every bucket before `bucket`: the filling one, then the empty ones in between."""
    if bucket <= state.bucket:
        return
    update(state, state.count, cfg)
    idle = bucket - state.bucket - 1
    if idle > cfg.max_idle_buckets:
        state.mean = 0.0
        state.var = 0.0
        state.samples = 0
        state.seen = 0.0
    else:
        for _ in range(idle):
            update(state, 0.0, cfg)
    state.bucket = bucket
    state.count = 0.0


def zscore(state: Baseline, cfg: DetectorConfig) -> float:
    return (state.count - state.mean) / scale(state, cfg)


def is_anomalous(
    state: Baseline,
    cfg: DetectorConfig,
    limit_rps: float | None = None,
    threshold: float | None = None,
) -> bool:
    """Every test must pass: baseline span and size, relative size, absolute size, z-score."""
    count = state.count
    return (
        state.samples >= cfg.min_samples
        and state.seen >= cfg.min_baseline_requests
        and count >= cfg.min_rate
        and count >= cfg.min_ratio * state.mean
        and (limit_rps is None or count >= cfg.limit_fraction * limit_rps * cfg.window_seconds)
        and zscore(state, cfg) >= (cfg.threshold if threshold is None else threshold)
    )


def decisive(value: float, bound: float, digits: int = 1) -> str:
    """`value` printed with the fewest decimals (at least `digits`) that keep it distinct from
    `bound` printed the same way, so a reason never reads "z = 3.0 > 3.0"."""
    for d in range(digits, 10):
        if value == bound or f"{value:.{d}f}" != f"{bound:.{d}f}":
            return f"{value:.{d}f}"
    return repr(value)


def reason(v: Verdict, min_ratio: float, limit_fraction: float) -> str:
    """The numbers that decided a verdict, in words an operator can check."""
    w = v.window_seconds
    z = decisive(v.score, v.threshold, 2)
    # Three significant figures: a baseline of 0.012/s is not "0.0/s".
    rate, base = f"{v.observed / w:.3g}", f"{v.baseline_mean / w:.3g}"
    ratio = "over a zero baseline" if math.isinf(v.ratio) else f"{decisive(v.ratio, min_ratio)}x"
    text = (
        f"request rate {rate}/s against a baseline of {base}/s "
        f"(z = {z} >= {v.threshold:g}; {ratio} the baseline, at least {min_ratio:g}x needed; "
        f"{v.observed:g} requests so far in this {w:g} s window"
    )
    if v.limit_rps is not None:
        text += f", {v.observed / (v.limit_rps * w):.1%} of the key's {v.limit_rps:g}/s limit"
        text += f" (at least {limit_fraction:.0%} needed)"
    return text + f"; baseline of {v.samples} windows, {v.baseline_requests:g} requests)"


class AbuseDetector:
    """Baselines for many keys in a bounded map (least recently active evicted first)."""

    __slots__ = ("_states", "config", "evictions", "max_keys")

    def __init__(self, config: DetectorConfig | None = None, max_keys: int = 100_000) -> None:
        self.config = config or DetectorConfig()
        self.max_keys = max_keys
        self._states: dict[str, Baseline] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._states)

    def _state(self, key: str, bucket: int) -> Baseline:
        states = self._states
        st = states.get(key)
        if st is None:
            st = states[key] = Baseline(bucket)
            if len(states) > self.max_keys:
                del states[next(iter(states))]
                self.evictions += 1
        elif bucket > st.bucket:
            advance(st, bucket, self.config)
            # Re-insert so dict order is least recently active first; once per bucket, not per hit.
            del states[key]
            states[key] = st
        return st

    def record(
        self,
        key: str,
        now: float,
        count: int = 1,
        *,
        limit_rps: float | None = None,
        threshold: float | None = None,
    ) -> Verdict | None:
        """Count requests for `key`; a Verdict the first time its current bucket turns anomalous.

        `limit_rps` is the key's own rate limit (the absolute floor is a share of it);
        `threshold` a z threshold of the key's own instead of the configured one."""
        cfg = self.config
        bucket = math.floor(now / cfg.window_seconds)
        st = self._state(key, bucket)
        st.count += count
        if st.flagged_bucket == st.bucket or not is_anomalous(st, cfg, limit_rps, threshold):
            return None
        st.flagged_bucket = st.bucket
        return self._verdict(key, st, True, limit_rps, threshold)

    def evaluate(
        self,
        key: str,
        now: float,
        *,
        limit_rps: float | None = None,
        threshold: float | None = None,
    ) -> Verdict:
        """The verdict for `key`'s current bucket, whether or not it is anomalous."""
        cfg = self.config
        bucket = math.floor(now / cfg.window_seconds)
        st = self._states.get(key)
        if st is None:
            st = Baseline(bucket)
        elif bucket > st.bucket:
            st = self._state(key, bucket)
        anomalous = is_anomalous(st, cfg, limit_rps, threshold)
        return self._verdict(key, st, anomalous, limit_rps, threshold)

    def forget(self, key: str) -> None:
        """Drop a key's baseline (after an admin unblock, so it is not re-flagged at once)."""
        self._states.pop(key, None)

    def _verdict(
        self,
        key: str,
        st: Baseline,
        anomalous: bool,
        limit_rps: float | None,
        threshold: float | None,
    ) -> Verdict:
        cfg = self.config
        return Verdict(
            key=key,
            anomalous=anomalous,
            score=zscore(st, cfg),
            observed=st.count,
            baseline_mean=st.mean,
            baseline_std=scale(st, cfg),
            samples=st.samples,
            bucket_start=st.bucket * cfg.window_seconds,
            window_seconds=cfg.window_seconds,
            action=cfg.action if anomalous else None,
            threshold=cfg.threshold if threshold is None else threshold,
            baseline_requests=st.seen,
            limit_rps=limit_rps,
        )
