"""Fixtures of the state tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.faults import OwnRedis


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: str) -> Iterator[OwnRedis]:
    """A redis-server of the test's own, started: to pause, fill or stop without disturbing
    the shared one (`redis_server` only skips the test where Redis is unavailable)."""
    own = OwnRedis(tmp_path)
    own.start()
    try:
        yield own
    finally:
        own.stop()
