"""Fixtures of the state tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

from heliox.state.redis_pipe import PipelinedRedis
from tests.e2e.faults import OwnRedis
from tests.loops import LoopFactory, loop_factories
from tests.support import pipelined_redis

ON_BOTH_LOOPS = ("test_redis_pipe.py", "test_redis_breaker.py")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    return loop_factories(item, ON_BOTH_LOOPS)


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


@pytest.fixture
async def piped(redis_server: str) -> AsyncIterator[PipelinedRedis]:
    """The gateway's own Redis client (hot commands through the pipe) on the shared Redis."""
    client = pipelined_redis(redis_server)
    assert client.pipe is not None
    try:
        yield client
    finally:
        await client.aclose()
