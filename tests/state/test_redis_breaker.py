"""The Redis client's guards against a real Redis the test owns: a request's budget of one
timeout, the circuit breaker and its background probe, and which errors count as trouble."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars

from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heliox.core.breaker import Breaker
from heliox.state.redis_pipe import (
    PipelinedRedis,
    RedisUnavailable,
    is_trouble,
    start_request_budget,
)
from tests.e2e.faults import OwnRedis
from tests.support import pipelined_redis


def test_replies_that_mean_redis_cannot_serve_are_trouble() -> None:
    assert is_trouble(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert is_trouble(ReadOnlyError("You can't write against a read only replica."))
    assert is_trouble(ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    assert is_trouble(RedisTimeoutError("Redis did not answer"))
    assert not is_trouble(NoScriptError("No matching script"))
    assert not is_trouble(ResponseError("WRONGTYPE Operation against a key"))
    assert not is_trouble(RedisUnavailable("breaker open"))


async def _request(client: PipelinedRedis) -> list[object]:
    """Three Redis steps of one request, in a context of its own."""
    start_request_budget()
    out: list[object] = []
    for _ in range(3):
        try:
            out.append(await client.get("k"))
        except Exception as exc:
            out.append(exc)
    return out


async def test_a_request_waits_once_and_the_breaker_probes_back(own_redis: OwnRedis) -> None:
    client = pipelined_redis(own_redis.url, socket_timeout=0.3, socket_connect_timeout=1)
    client.breaker = Breaker(threshold=2, base_open=0.2, max_open=1.0)
    try:
        assert await client.ping() is True
        own_redis.client().client_pause(1500, all=True)
        first = await asyncio.create_task(_request(client), context=contextvars.Context())
        assert isinstance(first[0], RedisTimeoutError)
        assert all(isinstance(r, RedisUnavailable) for r in first[1:]), first
        assert client.breaker.closed  # one failure: below the threshold
        # Outside that request nothing is spent; a second failure opens the breaker.
        second = await asyncio.create_task(_request(client), context=contextvars.Context())
        assert isinstance(second[0], RedisTimeoutError)
        assert not client.breaker.closed
        assert client.pipe is not None
        sent = client.pipe.commands_sent
        third = await asyncio.create_task(_request(client), context=contextvars.Context())
        assert all(isinstance(r, RedisUnavailable) for r in third), third
        assert client.pipe.commands_sent == sent  # refused without sending anything
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not client.breaker.closed:  # the probe closes it once the pause is over
            assert loop.time() < deadline, "the breaker never closed"
            await asyncio.sleep(0.05)
        assert await client.set("k", b"v") is True
    finally:
        await client.aclose()


async def test_out_of_memory_counts_for_the_breaker(own_redis: OwnRedis) -> None:
    client = pipelined_redis(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    client.breaker = Breaker(threshold=3, base_open=0.2, max_open=1.0)
    try:
        sync = own_redis.client()
        sync.config_set("maxmemory", "1")
        for _ in range(3):
            with contextlib.suppress(OutOfMemoryError):
                await client.set("k", b"v")
        assert not client.breaker.closed
        assert "maxmemory" in client.last_error
        sync.config_set("maxmemory", "0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not client.breaker.closed:
            assert loop.time() < deadline, "the breaker never closed"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
