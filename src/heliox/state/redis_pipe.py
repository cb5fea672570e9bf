"""A redis-py client whose hot commands share one auto-pipelined connection.

redis-py spends ~90 µs of Python per call (pool checkout, per-call parser, locks); Redis itself
answers in a few. Here the commands the request path issues (GET, EVALSHA, SET, TIME, ...) are
encoded by hand, written together once per event-loop turn on ONE connection (a command sent
while nothing is in flight is written at once), and their replies parsed by `hiredis.Reader` and
matched in order: concurrent requests share round trips, and each command costs a few
microseconds. A command sent again and again with the same arguments (the admission script of a
key on a route) can be encoded once (`SplitCommand`) and sent as it is (`execute_encoded`), past
redis-py's command layers. Everything else (pub/sub, SCAN, admin work) goes through
redis-py's pool unchanged, and so do the hot commands when the URL is not TCP.

Failure semantics are the plain ones: a broken connection fails every command in flight with
`redis.exceptions.ConnectionError`; the next command reconnects, at most every RECONNECT_PAUSE
seconds so an outage costs callers nothing but an immediate error (the gateway then fails open
or closed per route).

A Redis that hangs is the costly fault: each command waits REDIS_TIMEOUT. Two guards, both in
`PipelinedRedis.execute_command`, which every command of the process passes through (the hot
ones and redis-py's alike):

- a per-request budget: once a request has seen one Redis timeout or connection failure, its
  later Redis steps fail at once (`RedisUnavailable`), so a request pays at most one timeout;
- a circuit breaker (`heliox.core.breaker`), shared by the process: after consecutive failures
  (timeouts, lost connections, and replies saying Redis cannot serve: OOM, READONLY, LOADING,
  MASTERDOWN, ...) every command fails at once until a probe in the background succeeds.

Both raise `RedisUnavailable`, a `ConnectionError`: every caller already treats that as Redis
being down (admission fails open or closed, the cache misses).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import ssl
import time
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.client import EMPTY_RESPONSE
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heliox.core.breaker import Breaker, RecentEvents

log = logging.getLogger("heliox.redis")

# Commands safe to pipeline: single reply, no blocking, no connection state.
PIPELINED = frozenset(
    {"GET", "SET", "EVALSHA", "EVAL", "TIME", "PING", "DEL", "EXISTS", "PEXPIRE", "PUBLISH",
     "SCRIPT LOAD", "INCR", "MGET"}
)  # fmt: skip
RECONNECT_PAUSE = 0.5

# Replies that say Redis cannot do its job (rather than "this command was wrong"): they count as
# Redis trouble, for the breaker and for /health, like a timeout.
_TROUBLE_REPLIES = (
    OutOfMemoryError, ReadOnlyError, BusyLoadingError, MasterDownError, ClusterDownError,
    TryAgainError,
)  # fmt: skip
_FAILURES = (RedisConnectionError, RedisTimeoutError, OSError, *_TROUBLE_REPLIES)
# The same, for codes redis-py's parser has no class for (it keeps the code in the text then).
_TROUBLE_PREFIXES = ("MISCONF", "NOREPLICAS", "BUSY ")

# The Redis budget of the request running in this context: NO_BUDGET outside requests
# (background work), INTACT from the start of a request, SPENT once it has seen one timeout or
# lost connection. Set per request by the gateway; a context variable, so the request's own task
# sees it (and tasks it starts inherit it) without threading a flag through every store.
NO_BUDGET, INTACT, SPENT = 0, 1, 2
_budget: contextvars.ContextVar[int] = contextvars.ContextVar(
    "heliox_redis_budget", default=NO_BUDGET
)


def start_request_budget() -> None:
    """Called at the start of each request: it may pay one Redis timeout, no more."""
    _budget.set(INTACT)


class RedisUnavailable(RedisConnectionError):
    """Not sent to Redis: the breaker is open, or the request has spent its Redis budget."""


def is_trouble(exc: BaseException) -> bool:
    """True for failures that mean Redis cannot serve (not a mistake in one command)."""
    if isinstance(exc, RedisUnavailable):
        return False
    if isinstance(exc, _FAILURES):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TROUBLE_PREFIXES)


def describe(exc: BaseException) -> str:
    """A short description for /health (redis-py strips the error code from the text)."""
    text = str(exc)[:200] or "no detail"
    return f"{type(exc).__name__}: {text}"


def encode_command(args: tuple[Any, ...]) -> bytes:
    """One command in RESP, by hiredis's C encoder (a third of the cost of doing it in Python;
    floats come out as `repr` spells them)."""
    if isinstance(args[0], str) and " " in args[0]:
        args = (*args[0].split(), *args[1:])  # "SCRIPT LOAD" is two words on the wire
    try:
        packed: bytes = hiredis.pack_command(args)
        return packed
    except TypeError:
        bad = next(a for a in args if not isinstance(a, str | bytes | int | float))
        raise TypeError(f"cannot send {type(bad).__name__} to Redis") from None


class SplitCommand:
    """A command encoded once and sent many times, with one argument left open: the parts
    before and after it in RESP. A request sends the same admission script with the same keys
    and arguments for as long as its key, route and quota periods stay the same; encoding them
    per request (21 arguments, a `sprintf` per length in hiredis) was a visible share of a HIT."""

    __slots__ = ("closed", "head", "tail")

    def __init__(self, before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
        count = len(before) + 1 + len(after)
        self.head = b"*%d\r\n" % count + _elements(before)
        self.tail = _elements(after) if after else b""
        self.closed = self.head + b"$0\r\n\r\n" + self.tail  # the open argument empty

    def with_arg(self, value: bytes) -> bytes:
        """The whole command, `value` as the open argument (b"": the one encoded once)."""
        if not value:
            return self.closed
        return b"%b$%d\r\n%b\r\n%b" % (self.head, len(value), value, self.tail)


def _elements(args: tuple[Any, ...]) -> bytes:
    """RESP of `args` without the array's count line."""
    packed = encode_command(args)
    return packed[packed.index(b"\n") + 1 :]


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: RedisPipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.transport: asyncio.BaseTransport | None = None

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.pipe.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:
                break  # a reply nobody asked for: the connection is out of step
            fut = waiting.popleft()[0]
            if fut.done():
                continue  # the caller went away (cancelled); its reply is simply dropped
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
            else:
                fut.set_result(reply)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.lost(exc, self.transport)


class RedisPipe:
    """One TCP (or TLS) connection; `execute` queues a command and awaits its reply."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password, self.ssl_context = username, password, ssl_context
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        # Futures awaiting replies, in send order, with the loop time by which each must have one.
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Future[None] | None = None
        self._failed_at = 0.0
        self.commands_sent = 0
        self.writes = 0

    async def _connect(self) -> None:
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            return
        if time.monotonic() - self._failed_at < RECONNECT_PAUSE:
            raise RedisConnectionError(f"Redis at {self.host}:{self.port} is unreachable")
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self.ssl_context
                )
            self._transport = transport
            setup: list[tuple[Any, ...]] = []
            if self.password:
                auth = (self.username, self.password) if self.username else (self.password,)
                setup.append(("AUTH", *auth))
            if self.db:
                setup.append(("SELECT", self.db))
            for cmd in setup:
                await self._send(encode_command(cmd))
            self._connecting.set_result(None)
        except Exception as exc:
            self._failed_at = time.monotonic()
            self._transport = None
            err = RedisConnectionError(f"cannot connect to Redis at {self.host}:{self.port}: {exc}")
            self._connecting.set_exception(err)
            self._connecting.exception()  # mark retrieved
            raise err from exc
        finally:
            self._connecting = None

    def lost(self, exc: Exception | None, transport: asyncio.BaseTransport | None) -> None:
        if transport is not self._transport:
            return  # an old connection, already given up on (its commands failed then)
        self._transport = None
        self._buffer.clear()
        err = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self._fail_all(err)

    def _fail_all(self, err: Exception) -> None:
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(err)

    def _check_deadlines(self) -> None:
        """One timer per pipe instead of one per command. Replies come in order, so when the
        oldest is overdue the connection is stuck: drop it and fail everything in flight."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiting[0][1]
        if deadline > loop.time():
            self._watchdog = loop.call_at(deadline, self._check_deadlines)
            return
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._buffer.clear()
        self._fail_all(RedisTimeoutError(f"Redis did not answer within {self.timeout}s"))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buffer and self._transport is not None:
            self._transport.write(b"".join(self._buffer))
            self.writes += 1
        self._buffer.clear()

    async def _send(self, wire: bytes) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._buffer.append(wire)
        self.waiting.append((fut, loop.time() + self.timeout))
        self.commands_sent += 1
        if len(self.waiting) == 1 and len(self._buffer) == 1:
            # Nothing else in flight or queued: write now rather than on the next loop turn
            # (at low concurrency that turn is pure latency). Under load commands are in flight
            # and whatever arrives meanwhile shares the next turn's write.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_deadlines)
        return await fut

    async def execute(self, *args: Any) -> Any:
        return await self.execute_encoded(encode_command(args))

    async def execute_encoded(self, wire: bytes) -> Any:
        """A command already in RESP (one command, a single reply)."""
        if self._transport is None or self._transport.is_closing():
            await self._connect()
        return await self._send(wire)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class PipelinedRedis(aioredis.Redis):
    """redis.asyncio.Redis that sends the hot commands through a RedisPipe."""

    pipe: RedisPipe | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kw = self.connection_pool.connection_kwargs
        self.pipe = None
        if "host" in kw and not kw.get("decode_responses"):
            ctx = None
            if issubclass(self.connection_pool.connection_class, aioredis.SSLConnection):
                # redis-py's own context: CA file, client certificate and verify mode from the URL.
                ctx = aioredis.SSLConnection(**kw).ssl_context.get()
            self.pipe = RedisPipe(
                kw["host"],
                int(kw.get("port", 6379)),
                db=int(kw.get("db", 0) or 0),
                username=kw.get("username"),
                password=kw.get("password"),
                ssl_context=ctx,
                connect_timeout=float(kw.get("socket_connect_timeout") or 1.0),
                timeout=float(kw.get("socket_timeout") or 2.0),
            )
        self.breaker = Breaker()
        self.trouble = RecentEvents(60)  # failures that count as Redis trouble, last minute
        self.last_error = ""  # the latest of them, described for /health
        self.last_error_at = 0.0  # its wall-clock time
        self.probe_key = "heliox:probe"  # written by check(): a write shows OOM and READONLY
        self._probe: asyncio.Task[None] | None = None

    # Both entry points spell out the same try: a shared coroutine wrapping the send was one
    # more coroutine per command, 5k instructions on every Redis cache hit. What the outcome
    # means for the breaker and the budget lives in `_failed` and `_answered`.
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self._may_send()
        try:
            result = await self._send(args, options)
        except Exception as exc:
            self._failed(exc)
            raise
        self._answered()
        return result

    async def execute_encoded(self, wire: bytes) -> Any:
        """A pipelined command already in RESP (`SplitCommand`), under the same guards as
        every other command; its reply as Redis gave it (no response callback). Only with a
        pipe (`self.pipe` not None)."""
        pipe = self.pipe
        assert pipe is not None, "encoded commands need the pipe (a TCP URL)"
        self._may_send()
        try:
            result = await pipe.execute_encoded(wire)
        except Exception as exc:
            self._failed(exc)
            raise
        self._answered()
        return result

    def _may_send(self) -> None:
        """Refuse at once while the breaker is open or the request has spent its budget."""
        if not self.breaker.closed or _budget.get() == SPENT:
            raise RedisUnavailable(
                "Redis circuit breaker is open" if not self.breaker.closed
                else "this request already waited for Redis once"
            )  # fmt: skip

    def _answered(self) -> None:
        """A reply came: the breaker's run of consecutive failures, if any, ends."""
        if self.breaker.consecutive:
            self.breaker.ok()

    async def _send(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        pipe = self.pipe
        name = args[0] if isinstance(args[0], str) else args[0].decode()
        if pipe is None or name.upper() not in PIPELINED:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        raw = await pipe.execute(*args)
        callback = self.response_callbacks.get(name)
        if callback is None:
            return raw
        options.pop("keys", None)
        options.pop(EMPTY_RESPONSE, None)
        return callback(raw, **options)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, RedisUnavailable):
            return
        if isinstance(exc, RedisConnectionError | RedisTimeoutError) and _budget.get() == INTACT:
            _budget.set(SPENT)  # this request's later Redis steps are skipped
        if not self._note_trouble(exc):
            return  # a mistake in one command (a missing script, a wrong type): not an outage
        if self.breaker.failure(time.monotonic()):
            log.warning(
                "Redis circuit breaker open for %.1f s after %s", self.breaker.open_for,
                self.last_error,
            )  # fmt: skip
            self._start_probe()

    def _note_trouble(self, exc: BaseException) -> bool:
        """Counts `exc` and keeps it for /health when it means Redis cannot serve (True)."""
        if not is_trouble(exc):
            return False
        self.trouble.add(time.monotonic())
        self.last_error = describe(exc)
        self.last_error_at = time.time()
        return True

    def _start_probe(self) -> None:
        if self._probe is not None and not self._probe.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: closing down
            # An empty context: the probe is nobody's request and has no budget to spend.
            self._probe = asyncio.get_running_loop().create_task(
                self._run_probe(), name="heliox-redis-probe", context=contextvars.Context()
            )

    async def _run_probe(self) -> None:
        breaker = self.breaker
        while not breaker.closed:
            await asyncio.sleep(breaker.wait(time.monotonic()))
            if not breaker.probe_due(time.monotonic()):
                continue
            try:
                await self._check()
            except Exception as exc:
                self._note_trouble(exc)
                breaker.failure(time.monotonic())
                log.info("Redis probe failed (%s); next in %.1f s", exc, breaker.open_for)
            else:
                breaker.success(time.monotonic())
                log.warning("Redis answers again: circuit breaker closed")

    async def _check(self) -> None:
        """PING, then a small write with an expiry: a Redis that answers but cannot store
        (out of memory, a read-only replica) fails it too. Bypasses the breaker and budget."""
        await self._send(("PING",), {})
        await self._send(("SET", self.probe_key, b"1", "PX", 10_000), {})

    async def check(self) -> None:
        """The health check: `_check` unless the breaker is open (then it raises at once)."""
        if not self.breaker.closed:
            raise RedisUnavailable("Redis circuit breaker is open")
        try:
            await self._check()
        except Exception as exc:
            self._failed(exc)
            raise

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe
        if self.pipe is not None:
            self.pipe.close()
        await super().aclose(close_connection_pool)
