"""The fleet arithmetic behind docs/scaling.md (bench/benchkit/fleet.py): pure, no measuring."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from benchkit import fleet  # noqa: E402

COSTS = fleet.Costs(
    gateway_cpu_hit=100e-6,
    gateway_cpu_miss=400e-6,
    redis_cpu_hit=15e-6,
    redis_cpu_miss=50e-6,
    log_row_bytes=500,
    pg_cpu_per_row=25e-6,
)


def test_blend_weights_hits_and_misses() -> None:
    assert fleet.blend(0.9, 100.0, 400.0) == pytest.approx(130.0)
    assert fleet.blend(1.0, 100.0, 400.0) == 100.0
    with pytest.raises(ValueError, match="hit_ratio"):
        fleet.blend(1.5, 1.0, 2.0)


def test_units_round_up_at_the_target_utilisation() -> None:
    assert fleet.units(1.4, 0.7) == 2  # exactly two workers' worth, not three
    assert fleet.units(1.41, 0.7) == 3
    assert fleet.units(0.0, 0.8) == 1  # never fewer than one
    with pytest.raises(ValueError, match="utilisation"):
        fleet.units(1.0, 0.0)


def test_fleet_at_ten_thousand_requests_a_second() -> None:
    f = fleet.fleet(10_000, 0.9, COSTS)
    # 10,000 * (0.9 * 100 + 0.1 * 400) µs = 1.3 cores -> 2 workers at 70 %.
    assert f.gateway_cores == pytest.approx(1.3)
    assert f.gateway_workers == 2
    # 10,000 * (0.9 * 15 + 0.1 * 50) µs = 0.185 cores -> one master.
    assert f.redis_cores == pytest.approx(0.185)
    assert f.redis_masters == 1
    assert f.redis_hot_cores == pytest.approx(0.185)  # one Redis: the busiest is the only one
    assert f.redis_feasible
    assert f.log_rows_per_s == 10_000
    assert f.pg_cores == pytest.approx(0.25)
    assert f.log_bytes_per_day == pytest.approx(10_000 * 86_400 * 500)


def test_connections_multiply_by_processes() -> None:
    assert fleet.connections(10, 3, 3, extra_pg=4) == (30, 34)


def test_a_key_every_request_reads_caps_a_cluster() -> None:
    hot = fleet.Costs(100e-6, 400e-6, 60e-6, 400e-6, 500, 25e-6, 20e-6, 20e-6)
    small = fleet.fleet(30_000, 1.0, hot)
    assert small.redis_hot_cores == pytest.approx(0.6)
    assert small.redis_feasible
    big = fleet.fleet(100_000, 1.0, hot)
    assert big.redis_masters == 8  # 6 cores of Redis in all, at 80 %
    assert big.redis_hot_cores == pytest.approx(2.0)  # but one master would need two cores
    assert not big.redis_feasible


def test_without_a_hot_key_a_cluster_spreads_its_load() -> None:
    spread = fleet.Costs(100e-6, 400e-6, 60e-6, 400e-6, 500, 25e-6, 0.0, 0.0)
    f = fleet.fleet(100_000, 1.0, spread)
    assert f.redis_masters == 8
    assert f.redis_hot_cores == pytest.approx(6.0 / 8)
    assert f.redis_feasible
