"""The dashboard's live figures from successive scrapes of /metrics/prometheus."""

from __future__ import annotations

import pytest

from heliox.metrics import Metrics
from heliox.ui import livestats as ls


def _scrape(metrics: Metrics, ts: float, blocked: int | None = None) -> ls.Sample:
    return ls.parse_sample(metrics.prometheus_text().decode(), ts, blocked_keys=blocked)


def test_a_sample_sums_every_route() -> None:
    m = Metrics()
    m.observe_request("a", 200, 0.002, "HIT", None)
    m.observe_request("b", 200, 0.004, "MISS", 0.003)
    m.observe_request("b", 429, 0.0001, "", None)
    m.observe_request("b", 502, 0.5, "", 0.5)
    m.observe_request("a", 200, 0.001, "BYPASS", 0.001)
    sample = _scrape(m, 10.0, blocked=2)
    assert sample.requests == 5
    assert sample.rejected_429 == 1
    assert sample.errors_5xx == 1
    assert sample.cache_served == 1
    assert sample.cache_lookups == 2  # BYPASS is no lookup
    assert sample.upstream_calls == 3
    assert sample.latency_cumulative[-1] == 5
    assert sample.blocked_keys == 2


def test_an_interval_describes_only_what_happened_within_it() -> None:
    m = Metrics()
    for _ in range(10):
        m.observe_request("a", 200, 0.2, "MISS", 0.2)  # slow, before the interval
    first = _scrape(m, 100.0)
    for _ in range(30):
        m.observe_request("a", 200, 0.0007, "HIT", None)
    for _ in range(10):
        m.observe_request("a", 200, 0.0007, "MISS", 0.0005)
    m.observe_request("a", 429, 0.0001, "", None)
    point = ls.interval(first, _scrape(m, 104.0))
    assert point["requests"] == 41
    assert point["rps"] == pytest.approx(41 / 4)
    assert point["rejected_429"] == 1
    assert point["hit_rate"] == pytest.approx(0.75)
    assert point["upstream_calls"] == 10
    assert point["upstream_saved"] == 30
    # Every request of the interval took 0.7 ms: the earlier slow ones must not show.
    assert point["p50"] is not None and 0.5 <= point["p50"] <= 1.0
    assert point["p99"] is not None and point["p99"] <= 1.0


def test_an_idle_interval_has_no_rate_or_percentile() -> None:
    m = Metrics()
    m.observe_request("a", 200, 0.01, "HIT", None)
    a, b = _scrape(m, 1.0), _scrape(m, 3.0)
    point = ls.interval(a, b)
    assert point["requests"] == 0 and point["rps"] == 0
    assert point["hit_rate"] is None
    assert point["p50"] is None and point["p95"] is None and point["p99"] is None


def test_counters_that_went_backwards_count_from_zero() -> None:
    before = Metrics()
    for _ in range(100):
        before.observe_request("a", 200, 0.01, "HIT", None)
    after_restart = Metrics()
    for _ in range(4):
        after_restart.observe_request("a", 200, 0.01, "MISS", 0.01)
    point = ls.interval(_scrape(before, 0.0), _scrape(after_restart, 2.0))
    assert point["requests"] == 4
    assert point["hit_rate"] == 0
    assert point["upstream_calls"] == 4


@pytest.mark.parametrize(
    ("cumulative", "q", "expected"),
    [
        ((0, 10, 10), 0.5, 1.5),  # all in (1, 2]: the middle of that bucket
        ((10, 10, 10), 0.99, 0.99),  # all in (0, 1]
        ((5, 10, 10), 0.5, 1.0),  # exactly at a bucket boundary
        ((0, 0, 10), 0.5, 2.0),  # beyond the last finite bound: that bound
        ((0, 0, 0), 0.5, None),
    ],
)
def test_quantiles_interpolate_within_the_bucket(
    cumulative: tuple[int, ...], q: float, expected: float | None
) -> None:
    got = ls.quantile_from_cumulative((1.0, 2.0), cumulative, q)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_points_after_a_timestamp_are_only_the_newer_ones() -> None:
    m = Metrics()
    samples = []
    for ts in (0.0, 2.0, 4.0, 6.0):
        m.observe_request("a", 200, 0.001, "HIT", None)
        samples.append(_scrape(m, ts))
    assert [p["ts"] for p in ls.points(samples)] == [2.0, 4.0, 6.0]
    assert [p["ts"] for p in ls.points(samples, after=4.0)] == [6.0]


def test_the_window_spans_the_samples_of_the_last_seconds() -> None:
    m = Metrics()
    samples = []
    for ts in (0.0, 50.0, 100.0, 110.0):
        m.observe_request("a", 200, 0.001, "HIT", None)
        samples.append(_scrape(m, ts))
    window = ls.window(samples, now=110.0, seconds=60)
    assert window is not None
    assert window["seconds"] == 60  # from the sample at 50 to the one at 110
    assert window["requests"] == 2
    assert ls.window(samples[:1], now=110.0, seconds=60) is None


def test_listing_counts_accept_both_shapes() -> None:
    assert ls.count_items({"items": [1, 2], "total": 2}) == 2
    assert ls.count_items([1]) == 1
    assert ls.count_items({"unexpected": True}) is None


def test_points_after_the_id_of_a_point_exclude_that_point() -> None:
    m = Metrics()
    samples = [_scrape(m, 1.0001), _scrape(m, 2.0004), _scrape(m, 3.0004)]
    sent = ls.points(samples)
    # The id the browser returns is the rounded ts it was sent.
    assert [p["ts"] for p in ls.points(samples, after=sent[0]["ts"])] == [sent[1]["ts"]]


def test_refusals_are_counted_apart_for_the_dashboard_chart() -> None:
    m = Metrics()
    first = _scrape(m, 0.0)
    m.observe_request("a", 401, 0.001, "", None)
    m.observe_request("a", 401, 0.001, "", None)
    m.observe_request("a", 429, 0.001, "", None)
    m.observe_request("a", 404, 0.001, "MISS", 0.001)
    m.observe_request("a", 200, 0.001, "MISS", 0.001)
    m.observe_request("a", 503, 0.001, "", 0.001)
    point = ls.interval(first, _scrape(m, 2.0))
    assert point["unauthorized_401"] == 2
    assert point["rejected_429"] == 1
    assert point["errors_4xx"] == 4  # 401, 401, 429, 404: every 4xx
    assert point["errors_5xx"] == 1
