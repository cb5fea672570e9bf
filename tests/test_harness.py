"""The test harness itself: what lets the suite run in several processes at once."""

from __future__ import annotations

import pytest

from tests.e2e.harness import PORTS, port_range


@pytest.mark.parametrize("count", [2, 3, 4])
def test_each_test_process_picks_ports_of_its_own(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    ranges = []
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        ranges.append(port_range())
    ports = [set(range(low, high + 1)) for low, high in ranges]
    for i, mine in enumerate(ports):
        assert len(mine) >= 1000, ranges
        assert min(mine) >= PORTS[0] and max(mine) <= PORTS[1] < 32768, ranges
        assert all(not mine & theirs for theirs in ports[i + 1 :]), ranges


def test_one_process_picks_from_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert port_range() == PORTS
