"""Bloom sizing, bit positions, measured false-positive rates and generation rotation."""

from __future__ import annotations

import math
import random

import pytest

from heliox.core.bloom import (
    BloomFilter,
    RotatingBloom,
    bloom_params,
    generation,
    generation_false_positive_rate,
    positions,
)

PROBES = 100_000


def test_sizing_follows_the_formulas() -> None:
    p = bloom_params(10_000, 0.01)
    assert p.bits == math.ceil(-10_000 * math.log(0.01) / math.log(2) ** 2) == 95_851
    assert p.hashes == round(95_851 / 10_000 * math.log(2)) == 7
    assert p.capacity == 10_000
    assert p.nbytes == 11_982
    assert bloom_params(1000, 0.001).hashes == 10
    assert p.false_positive_rate() == pytest.approx(0.01, rel=0.02)
    assert p.false_positive_rate(0) == 0.0


@pytest.mark.parametrize(("n", "rate"), [(0, 0.01), (10, 0.0), (10, 1.0), (10, 1.5)])
def test_sizing_rejects_nonsense(n: int, rate: float) -> None:
    with pytest.raises(ValueError):
        bloom_params(n, rate)


def test_positions_are_stable_in_range_and_keyed() -> None:
    params = bloom_params(1000, 0.01)
    first = positions("/items/1", params)
    assert first == positions(b"/items/1", params)  # str and its UTF-8 bytes agree
    assert len(first) == params.hashes
    assert all(0 <= p < params.bits for p in first)
    assert len(set(first)) == params.hashes  # double hashing with a non-zero step
    assert positions("/items/2", params) != first
    assert positions("/items/1", params, key=b"secret") != first
    # A fixed vector: filters already in Redis must keep meaning the same after an upgrade.
    assert first == [449, 2883, 5317, 7751, 599, 3033, 5467]


def _measured_rate(rate: float, n: int, seed: int) -> float:
    params = bloom_params(n, rate)
    bloom = BloomFilter(params)
    rnd = random.Random(seed)
    for _ in range(n):
        bloom.add(b"in:%d" % rnd.getrandbits(64))
    hits = sum(bloom.might_contain(b"out:%d" % rnd.getrandbits(64)) for _ in range(PROBES))
    return hits / PROBES


@pytest.mark.parametrize("rate", [0.01, 0.001])
def test_measured_false_positive_rate_matches_the_configured_one(rate: float) -> None:
    measured = _measured_rate(rate, 10_000, seed=7)
    assert rate / 1.5 <= measured <= rate * 1.5, measured


def test_no_false_negatives() -> None:
    bloom = BloomFilter(bloom_params(2000, 0.01))
    items = [f"/items/{i}" for i in range(2000)]
    for item in items:
        bloom.add(item)
    assert all(bloom.might_contain(item) for item in items)
    # An item whose bits were all set already (a false positive on insert) is not counted.
    assert 1950 <= bloom.count <= 2000


def test_add_reports_new_items_only() -> None:
    bloom = BloomFilter(bloom_params(100, 0.01))
    assert bloom.add("a") is True
    assert bloom.add("a") is False
    assert bloom.count == 1


def test_generations() -> None:
    assert generation(0, 60) == 0
    assert generation(59.999, 60) == 0
    assert generation(60, 60) == 1
    assert generation(1_700_000_000, 300) == 5_666_666


def test_items_age_out_after_one_to_two_rotations() -> None:
    bloom = RotatingBloom.sized(100, 0.01, rotation_seconds=60)
    t0 = 6000.0  # the start of generation 100
    bloom.add("late", t0 + 59)
    bloom.add("early", t0)
    assert bloom.might_contain("early", t0 + 1)
    # Written at the very end of its generation, an item lives barely over one rotation...
    assert bloom.might_contain("late", t0 + 60)
    # ...and one written at its start, almost two.
    assert bloom.might_contain("early", t0 + 119)
    assert not bloom.might_contain("early", t0 + 120)
    assert not bloom.might_contain("late", t0 + 120)


def test_re_adding_keeps_an_item_alive() -> None:
    bloom = RotatingBloom.sized(100, 0.01, rotation_seconds=60)
    bloom.add("x", 0)
    bloom.add("x", 70)
    assert bloom.might_contain("x", 170)
    assert not bloom.might_contain("x", 240)


def test_a_full_generation_refuses_more_items() -> None:
    bloom = RotatingBloom.sized(50, 0.01, rotation_seconds=60)
    added = [bloom.add(f"i{n}", 10) for n in range(80)]
    assert added.count(True) == 50
    assert added[50:] == [False] * 30
    assert not bloom.might_contain("i79", 10)  # refused, so not remembered
    assert bloom.add("fresh", 70)  # the next generation takes items again


def test_two_full_generations_stay_within_the_configured_rate() -> None:
    rate, n = 0.01, 5000
    bloom = RotatingBloom.sized(n, rate, rotation_seconds=60)
    assert bloom.params == bloom_params(n, generation_false_positive_rate(rate))
    rnd = random.Random(11)
    for t in (0.0, 60.0):
        for _ in range(n):
            bloom.add(b"in:%d" % rnd.getrandbits(64), t)
    hits = sum(bloom.might_contain(b"out:%d" % rnd.getrandbits(64), 61.0) for _ in range(PROBES))
    assert hits / PROBES <= rate * 1.5


def test_a_clock_going_backwards_only_forgets() -> None:
    bloom = RotatingBloom.sized(100, 0.01, rotation_seconds=60)
    bloom.add("x", 600)
    assert not bloom.might_contain("x", 0)
    assert not bloom.might_contain("x", 600)  # the future generation was dropped
    bloom.add("y", 600)
    bloom.clear()
    assert not bloom.might_contain("y", 600)


def test_rotation_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RotatingBloom.sized(100, 0.01, rotation_seconds=0)
