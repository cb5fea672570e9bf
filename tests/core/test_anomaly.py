"""EWMA/z-score abuse detection on a fake clock."""

from __future__ import annotations

import math
import random

import pytest

from heliox.core.abuse_replay import poisson
from heliox.core.anomaly import (
    AbuseDetector,
    Baseline,
    DetectorConfig,
    Verdict,
    advance,
    update,
    zscore,
)

W = 10.0
T0 = 1_795_780_800.0  # a bucket boundary (divisible by 10)


def feed_steady(det: AbuseDetector, key: str, per_bucket: int, buckets: int, start: float) -> float:
    """Evenly spaced requests; returns the time of the next bucket's start."""
    t = start
    for _ in range(buckets):
        for i in range(per_bucket):
            assert det.record(key, t + i * W / per_bucket) is None
        t += W
    return t


def test_ewma_update_matches_the_incremental_formulas() -> None:
    cfg = DetectorConfig(alpha=0.5, min_samples=100)
    st = Baseline(0)
    update(st, 10, cfg)
    assert (st.mean, st.var, st.samples) == (10, 0, 1)
    update(st, 20, cfg)  # d = 10: mean 15, var 0.5 * (0 + 0.5 * 100) = 25
    assert (st.mean, st.var, st.samples) == (15, 25, 2)
    update(st, 15, cfg)  # d = 0: var 12.5
    assert (st.mean, st.var) == (15, 12.5)


def test_variance_floor_keeps_a_flat_baseline_finite() -> None:
    cfg = DetectorConfig()
    st = Baseline(0)
    for b in range(1, 10):
        st.count = 50
        advance(st, b, cfg)
    assert st.var == 0
    st.count = 60
    assert zscore(st, cfg) == pytest.approx(10 / math.sqrt(5 * 50))
    # A quiet key's scale is that of a min_rate key (the prior), not ~1: three requests are
    # 3 / sqrt(5 * 5) = 0.6 sigma, not 3.
    empty = Baseline(0, count=3)
    assert zscore(empty, cfg) == pytest.approx(3 / math.sqrt(5 * 5))


def test_a_5x_spike_is_flagged_within_its_first_bucket() -> None:
    det = AbuseDetector(DetectorConfig(window_seconds=W))
    t = feed_steady(det, "k:1", 50, 20, T0)
    verdict: Verdict | None = None
    spike = 250
    for i in range(spike):
        now = t + i * W / spike
        verdict = det.record("k:1", now)
        if verdict is not None:
            break
    assert verdict is not None
    assert now < t + W  # before the bucket completed
    assert verdict.anomalous
    assert verdict.score >= 3.0
    assert verdict.observed < spike
    assert verdict.baseline_mean == pytest.approx(50)
    assert verdict.action == "block"
    assert verdict.bucket_start == t
    assert verdict.samples == 20
    # One verdict per bucket: the rest of the flood is not reported again.
    assert all(det.record("k:1", now) is None for _ in range(100))


def test_a_day_of_steady_poisson_traffic_is_never_flagged() -> None:
    cfg = DetectorConfig(window_seconds=W, alpha=0.3, threshold=3.0, min_samples=6, min_rate=5)
    det = AbuseDetector(cfg)
    rng = random.Random(20261127)
    t = T0
    top = -math.inf
    for _ in range(8640):  # 24 h of 10 s buckets, mean 50 per bucket
        times = sorted(t + rng.random() * W for _ in range(poisson(rng, 50)))
        for now in times:
            assert det.record("k:steady", now) is None
        v = det.evaluate("k:steady", t + W - 1e-6)  # the bucket complete
        if v.samples >= cfg.min_samples:
            top = max(top, v.score)
        t += W
    assert 1.5 < top < 3.0  # scored all day (busy buckets reached z ≈ 2), never crossed 3


def test_no_verdict_before_min_samples() -> None:
    det = AbuseDetector(DetectorConfig(window_seconds=W, min_samples=6))
    t = feed_steady(det, "k:new", 10, 5, T0)  # five completed buckets
    assert all(det.record("k:new", t + i * 0.001) is None for i in range(500))
    assert det.evaluate("k:new", t).samples == 5


def test_no_verdict_below_the_minimum_rate() -> None:
    # Tiny dispersion and no baseline-size rule: only min_rate stands between 19 and a verdict.
    cfg = DetectorConfig(window_seconds=W, min_rate=20, dispersion=0.01, min_baseline_requests=0)
    det = AbuseDetector(cfg)
    t = T0
    for _ in range(20):  # one request a bucket
        det.record("k:quiet", t)
        t += W
    results = [det.record("k:quiet", t + i * 0.1) for i in range(19)]  # 19x its usual rate
    assert results == [None] * 19
    assert det.evaluate("k:quiet", t + 5).score > 3.0
    assert det.record("k:quiet", t + 6) is not None  # the twentieth reaches min_rate


def test_short_gaps_decay_the_baseline_so_a_spike_after_a_pause_is_caught() -> None:
    cfg = DetectorConfig(window_seconds=W)
    det = AbuseDetector(cfg)
    t = feed_steady(det, "k:1", 100, 20, T0)
    t += 3 * W  # three empty buckets
    det.record("k:1", t)
    v = det.evaluate("k:1", t)
    # Each empty bucket keeps 70 % of the mean (alpha 0.3).
    assert v.baseline_mean == pytest.approx(100 * 0.7**3, rel=1e-9)
    assert v.samples == 23
    flagged = None
    for i in range(1, 500):
        flagged = det.record("k:1", t + i * 0.01)
        if flagged:
            break
    assert flagged is not None
    assert flagged.observed < 500


def test_a_long_idle_key_relearns_instead_of_flagging_its_usual_rate() -> None:
    cfg = DetectorConfig(window_seconds=W, max_idle_buckets=6)
    det = AbuseDetector(cfg)
    t = feed_steady(det, "k:1", 50, 20, T0)
    t += 30 * W  # five minutes of silence
    t = feed_steady(det, "k:1", 50, 10, t)
    assert det.evaluate("k:1", t).samples == 10


def test_decay_is_bounded_for_huge_gaps() -> None:
    cfg = DetectorConfig(window_seconds=W, max_idle_buckets=6)
    st = Baseline(0, count=50, mean=50, var=10, samples=30)
    advance(st, 10**12, cfg)  # a gap of 10^12 buckets returns at once
    assert (st.samples, st.mean, st.bucket) == (0, 0.0, 10**12)


def test_a_flood_does_not_teach_the_baseline_to_accept_the_next_one() -> None:
    cfg = DetectorConfig(window_seconds=W)
    det = AbuseDetector(cfg)
    t = feed_steady(det, "k:1", 50, 20, T0)
    det.record("k:1", t, count=5000)
    before = det.evaluate("k:1", t)
    after = det.evaluate("k:1", t + W)
    # Clipped at mean + 3 sigma: the mean moves by at most alpha * 3 sigma.
    assert after.baseline_mean <= before.baseline_mean + 0.3 * 3 * before.baseline_std + 1e-9
    assert det.record("k:1", t + W, count=5000) is not None


def test_late_samples_count_in_the_current_bucket() -> None:
    det = AbuseDetector(DetectorConfig(window_seconds=W))
    det.record("k:1", T0 + 25)
    det.record("k:1", T0 + 5)  # an older timestamp (reordered sample)
    v = det.evaluate("k:1", T0 + 25)
    assert v.observed == 2
    assert v.bucket_start == T0 + 20


def test_evaluate_reports_without_creating_state() -> None:
    det = AbuseDetector()
    v = det.evaluate("k:none", T0)
    assert not v.anomalous
    assert v.action is None
    assert v.observed == 0
    assert len(det) == 0


def test_forget_and_the_key_cap() -> None:
    det = AbuseDetector(DetectorConfig(window_seconds=W), max_keys=100)
    for i in range(1000):
        det.record(f"k:{i}", T0)
    assert len(det) == 100
    assert det.evictions == 900
    assert det.evaluate("k:999", T0).observed == 1
    assert det.evaluate("k:0", T0).observed == 0  # least recently active went first
    det.forget("k:999")
    assert det.evaluate("k:999", T0).observed == 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(alpha=0)
    with pytest.raises(ValueError):
        DetectorConfig(window_seconds=0)
    with pytest.raises(ValueError):
        DetectorConfig(min_samples=0)
