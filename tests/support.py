"""Small helpers shared by tests of several packages (fixtures live in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from heliox.state.redis_pipe import PipelinedRedis


class FakeClock:
    """A clock that stands still until a test moves it: pass it where code takes `clock=`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pipelined_redis(url: str, **kwargs: Any) -> PipelinedRedis:
    """`PipelinedRedis.from_url`, typed: redis-py annotates `from_url` to return its base class."""
    client = PipelinedRedis.from_url(url, **kwargs)
    assert isinstance(client, PipelinedRedis)
    return client
