"""The auto-pipelined Redis client against a real Redis: same answers as redis-py, concurrent
commands share writes, failures are immediate and recovery automatic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heliox.state.redis_pipe import (
    PipelinedRedis,
    RedisUnavailable,
    SplitCommand,
    encode_command,
    start_request_budget,
)
from tests.e2e.faults import OwnRedis
from tests.support import pipelined_redis


def test_encoding_splits_two_word_commands() -> None:
    assert encode_command(("SCRIPT LOAD", "return 1")) == (
        b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$8\r\nreturn 1\r\n"
    )
    assert encode_command(("SET", b"k", 1)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"


def test_a_split_command_is_the_whole_command_with_its_open_argument() -> None:
    before, after = ("EVALSHA", "ab" * 20, 2, "k1", "k2"), ("tb", "1.5", "", "10")
    split = SplitCommand(before, after)
    assert split.with_arg(b"") == encode_command((*before, "", *after))
    assert split.with_arg(b"1795780800000000") == encode_command(
        (*before, "1795780800000000", *after)
    )
    assert SplitCommand(("PING",), ()).with_arg(b"x") == encode_command(("PING", "x"))


async def test_encoded_commands_pass_the_same_guards(piped: PipelinedRedis) -> None:
    assert await piped.execute_encoded(encode_command(("PING",))) == b"PONG"
    start_request_budget()
    piped._failed(RedisTimeoutError("a timeout earlier in this request"))
    with pytest.raises(RedisUnavailable):
        await piped.execute_encoded(encode_command(("PING",)))


async def test_same_answers_as_redis_py(piped: PipelinedRedis, redis_prefix: str) -> None:
    k = redis_prefix + "a"
    assert await piped.set(k, b"\x00bin\xff", px=10_000) is True
    assert await piped.get(k) == b"\x00bin\xff"
    assert await piped.set(k, b"x", nx=True) is None
    assert await piped.get(redis_prefix + "missing") is None
    sec, usec = await piped.time()
    assert sec > 1_700_000_000 and 0 <= usec < 1_000_000
    assert await piped.ping() is True
    sha = await piped.script_load("return ARGV[1]")
    assert await piped.evalsha(sha, 0, "hello") == b"hello"
    with pytest.raises(NoScriptError):
        await piped.evalsha("0" * 40, 0)
    with pytest.raises(ResponseError):
        await piped.execute_command("EVAL", "return redis.error_reply('boom')", 0)
    assert await piped.delete(k) == 1
    assert piped.pipe is not None and piped.pipe.commands_sent >= 9


async def test_registered_scripts_reload_after_script_flush(own_redis: OwnRedis) -> None:
    # On a server of the test's own: SCRIPT FLUSH on the shared one would make the tests running
    # beside this one (the suite runs in two processes) meet NOSCRIPT where they count commands.
    piped = pipelined_redis(own_redis.url)
    try:
        script = piped.register_script("return 42")
        assert await script() == 42
        with own_redis.client() as sync:
            sync.script_flush()
        assert await script() == 42
    finally:
        await piped.aclose()


async def test_concurrent_commands_share_writes(piped: PipelinedRedis, redis_prefix: str) -> None:
    await piped.set(redis_prefix + "x", b"1")
    pipe = piped.pipe
    assert pipe is not None
    writes = pipe.writes
    results = await asyncio.gather(*(piped.get(redis_prefix + "x") for _ in range(200)))
    assert results == [b"1"] * 200
    assert pipe.writes - writes <= 2  # one write per event-loop turn, not per command


async def test_a_lone_command_is_written_without_waiting_for_a_loop_turn(
    piped: PipelinedRedis, redis_prefix: str
) -> None:
    # At concurrency 1 the turn a batched write waits for is pure latency.
    await piped.set(redis_prefix + "x", b"1")
    pipe = piped.pipe
    assert pipe is not None and not pipe.waiting
    writes = pipe.writes
    task = asyncio.ensure_future(piped.get(redis_prefix + "x"))
    await asyncio.sleep(0)  # one turn: the task runs up to waiting for its reply
    assert pipe.writes == writes + 1
    assert await task == b"1"


async def test_outage_fails_fast_and_recovers(
    own_redis: OwnRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = pipelined_redis(own_redis.url, socket_timeout=2, socket_connect_timeout=1)
    try:
        assert await client.ping() is True
        assert client.pipe is not None
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await client.get("k")
        loop = asyncio.get_running_loop()
        connects = 0
        create_connection = loop.create_connection

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal connects
            connects += 1
            return await create_connection(*args, **kwargs)

        monkeypatch.setattr(loop, "create_connection", counted)
        sent = client.pipe.commands_sent
        # Refused at once: one refused connection attempt, no retry, and no command left
        # waiting for a reply (which would fail only after socket_timeout).
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await client.get("k")
        assert (connects, client.pipe.commands_sent) == (1, sent)
        monkeypatch.undo()
        own_redis.start()

        async def recovered() -> bool:
            try:
                return bool(await client.ping())
            except RedisConnectionError:
                return False

        deadline = loop.time() + 10
        while not await recovered():
            assert loop.time() < deadline, "did not reconnect"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_stuck_server_times_out_every_command_then_recovers(own_redis: OwnRedis) -> None:
    client = pipelined_redis(own_redis.url, socket_timeout=0.3, socket_connect_timeout=1)
    try:
        assert await client.ping() is True
        own_redis.client().client_pause(1500, all=True)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(client.get("k") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        # One watchdog, not a wait per command: a single sweep failed them all with one error.
        assert len({id(r) for r in results}) == 1, results

        async def recovered() -> bool:
            try:
                return bool(await client.ping())
            except (RedisConnectionError, RedisTimeoutError):
                return False

        deadline = loop.time() + 10
        while not await recovered():
            assert loop.time() < deadline, "did not recover after the pause"
            await asyncio.sleep(0.05)
        assert await client.set("k", b"v") is True and await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_the_client_from_settings_closes_its_pool_on_aclose(redis_server: str) -> None:
    """redis-py leaves a pool handed to its constructor open on aclose (it may be shared);
    `redis_client`'s pool is its own, so aclose must disconnect it: no socket outlives it."""
    from heliox.config import load_settings
    from heliox.state.redis_client import redis_client

    client = redis_client(load_settings(redis_url=redis_server, deployment_mode="demo"))
    try:
        await client.pttl("heliox-test:aclose")  # not piped: it takes a pooled connection
        opened = [c for c in client.connection_pool._available_connections if c.is_connected]
        assert opened
    finally:
        await client.aclose()
    assert not any(c.is_connected for c in opened)
