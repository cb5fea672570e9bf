"""Admission shared by every gateway instance through Redis: one EVALSHA per request.

`state/lua/admit.lua` does block check, rate limit and quotas atomically and takes its time from
Redis `TIME`, so instances with skewed clocks agree. Quota periods follow an IANA time zone, which
Lua cannot evaluate: Python names the period it expects (from its own clock plus the skew learned
from earlier replies) and the script refuses to act if Redis's clock says otherwise; the call is
then repeated with the period Redis's time falls in. That second EVALSHA happens only for requests
straddling a period boundary by less than the clock error.

Keys (prefix P, principal T = quota_subject or subject, braces in T escaped):
  P{T}:blk                 soft block: until (µs), TTL to until
  P{T}:tb:<subject>        token bucket {t, ts}, TTL to full + 1 s
  P{T}:sw:<subject>        sliding window {w, p, c}, TTL to the end of the next window + 1 s
  P{T}:q:d:2026-11-27      daily counter, TTL to the period's end + 1 h (monthly alike)
  P{blocks}:until, :info   the block list for the UI (sorted set, hash), TTL to the last until
All of one request's keys share the tag {T}, so the script is cluster-safe.

The cache's removal generation (when the in-process copies need it) is read by the same script on
one Redis. On a Redis Cluster it is a key of its own, in another slot: there it is read by its own
command sent together with the script (both before the request reads the cache, which is what
the copies need; see heliox.state.cache_l1).

Every Redis access goes through `RedisScripts` (EVALSHA with reload on NOSCRIPT, and TIME), so
the transport can be swapped for a pipelining one in one place. Redis errors become
`AdmissionUnavailable`.

`clock` is for tests only: when given, its time is sent to the scripts instead of Redis `TIME`,
so the conformance suite drives memory and Redis through identical scenarios.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from heliox.core.quota import QuotaCalendar, QuotaPeriod, daily_period, monthly_period
from heliox.core.ratelimit import US, to_us
from heliox.state.admission import (
    BLOCKED,
    DAILY_QUOTA,
    MONTHLY_QUOTA,
    QUOTA_TTL_MARGIN_SECONDS,
    STATE_TTL_MARGIN_SECONDS,
    TOKEN_BUCKET,
    AdmissionRequest,
    AdmissionResult,
    AdmissionUnavailable,
    BlockInfo,
    QuotaUsage,
    build_result,
)
from heliox.state.redis_pipe import PipelinedRedis, SplitCommand

_STATE_MARGIN_MS = str(STATE_TTL_MARGIN_SECONDS * 1000)
_QUOTA_MARGIN_MS = str(QUOTA_TTL_MARGIN_SECONDS * 1000)
_INDEX_MARGIN_MS = "60000"
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        source = resources.files("heliox.state").joinpath("lua", name).read_text("utf-8")
        return cls.from_source(name, source)

    @classmethod
    def from_source(cls, name: str, source: str) -> LuaScript:
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


ADMIT = LuaScript.load("admit.lua")
BLOCK = LuaScript.load("block.lua")
BLOCKS_INDEX = LuaScript.load("blocks_index.lua")
QUOTA_USAGE = LuaScript.load("quota_usage.lua")
GENERATION = LuaScript.load("generation.lua")


class RedisScripts:
    """The only place that talks to Redis: EVALSHA (loading the script on NOSCRIPT) and TIME,
    Redis errors raised as `AdmissionUnavailable`. Also the auth throttle's script runner."""

    __slots__ = ("client", "piped")

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        # The client again when it has a pipe, which commands encoded once (`run_encoded`)
        # go straight to; None otherwise (a Redis Cluster, a unix socket).
        self.piped = client if isinstance(client, PipelinedRedis) and client.pipe else None

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[str]) -> list[Any]:
        reply = await self._loaded(
            script, lambda: self.client.evalsha(script.sha, len(keys), *keys, *args)
        )
        return list(reply)

    async def run_encoded(self, script: LuaScript, command: bytes) -> list[Any]:
        """`run` for an EVALSHA of `script` already encoded (`SplitCommand`); needs `piped`."""
        piped = self.piped
        assert piped is not None
        reply: list[Any] = await self._loaded(script, lambda: piped.execute_encoded(command))
        return reply

    async def _loaded(self, script: LuaScript, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            try:
                return await call()
            except NoScriptError:
                # First use on this server, or after SCRIPT FLUSH / a restart / a failover.
                await self.client.script_load(script.source)
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise AdmissionUnavailable(f"redis: {exc!r}") from exc

    async def time(self) -> float:
        try:
            sec, usec = await self.client.time()
        except (RedisError, OSError, TimeoutError) as exc:
            raise AdmissionUnavailable(f"redis: {exc!r}") from exc
        return (int(sec) * US + int(usec)) / US


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _escape(name: str) -> str:
    if "{" in name or "}" in name or "%" in name:
        # A brace would move the hash tag; escape (and escape the escape) so names stay distinct.
        return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return name


class AdmitCall:
    """The admission script's keys and arguments for one request shape in one pair of quota
    periods (`RedisAdmission._admit_call`), and, once the shape is sent a second time through
    the pipe, the command encoded, with the clock override (tests only) as its open argument."""

    __slots__ = ("args", "command", "daily", "keys", "monthly", "owner", "sent")

    def __init__(
        self,
        owner: RedisAdmission,
        daily: QuotaPeriod | None,
        monthly: QuotaPeriod | None,
        keys: list[str],
        args: list[str],
    ) -> None:
        self.owner = owner
        self.daily = daily
        self.monthly = monthly
        self.keys = keys
        self.args = args  # without the first, the clock override
        self.command: SplitCommand | None = None
        self.sent = False

    def encoded(self) -> SplitCommand | None:
        """The command to send as it is, from the second use on: a request built for one use
        (no API key, or a key under a slowdown) is encoded once, as any command is."""
        if self.command is None:
            if not self.sent:
                self.sent = True
                return None
            self.command = SplitCommand(
                ("EVALSHA", ADMIT.sha, len(self.keys), *self.keys), tuple(self.args)
            )
        return self.command


class RedisAdmission:
    """Admission in Redis. `prefix` namespaces every key; `quota_tz` is the quota calendar's zone.

    `local_clock` only guesses the quota period before Redis confirms it; `clock` (tests only)
    replaces Redis TIME.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "heliox:",
        quota_tz: str | tzinfo = "UTC",
        clock: Callable[[], float] | None = None,
        local_clock: Callable[[], float] = time.time,
        cache_generation_key: str | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (they would become the hash tag)")
        self._redis = RedisScripts(client)
        self.prefix = prefix
        self._calendar = QuotaCalendar(quota_tz)
        self._clock = clock
        self._local_clock = local_clock
        self._skew = 0.0  # Redis time minus local time, learned from replies
        self._index_keys = (prefix + "{blocks}:until", prefix + "{blocks}:info")
        # Read with every admitted request (RedisCacheStore.generation_key): the cache's
        # in-process copies are checked against it. Outside the principal's hash tag: in the
        # script on one Redis, by a command of its own on a cluster.
        self._generation_key = cache_generation_key
        self._cluster = isinstance(client, RedisCluster)

    # --- keys ---------------------------------------------------------------------------------
    def _base(self, principal: str) -> str:
        return f"{self.prefix}{{{_escape(principal)}}}:"

    def block_key(self, principal: str) -> str:
        return self._base(principal) + "blk"

    def rate_key(self, principal: str, algorithm: str, subject: str) -> str:
        kind = "tb" if algorithm == TOKEN_BUCKET else "sw"
        return f"{self._base(principal)}{kind}:{_escape(subject)}"

    def quota_key(self, principal: str, period_id: str) -> str:
        return f"{self._base(principal)}q:{period_id}"

    # --- time ---------------------------------------------------------------------------------
    def _override(self) -> str:
        return "" if self._clock is None else str(to_us(self._clock()))

    def _guess(self) -> float:
        """Where Redis's clock probably is, to pick quota periods before the script confirms."""
        if self._clock is not None:
            return to_us(self._clock()) / US
        return self._local_clock() + self._skew

    def _learn(self, now_us: int, local_before: float) -> None:
        if self._clock is None:
            self._skew = now_us / US - local_before

    async def now(self) -> float:
        if self._clock is not None:
            return to_us(self._clock()) / US
        return await self._redis.time()

    # --- admission ----------------------------------------------------------------------------
    async def admit(self, req: AdmissionRequest) -> AdmissionResult:
        guess = self._guess()
        for _ in range(_ATTEMPTS):
            daily = monthly = None
            if req.daily_quota is not None:
                daily = self._calendar.daily(guess)
            if req.monthly_quota is not None:
                monthly = self._calendar.monthly(guess)
            call = self._admit_call(req, daily, monthly)
            local_before = self._local_clock()
            command = call.encoded() if self._redis.piped is not None else None
            if command is not None:
                override = b"" if self._clock is None else self._override().encode()
                reply = await self._redis.run_encoded(ADMIT, command.with_arg(override))
            elif self._cluster and self._generation_key is not None:
                reply = await self._admit_on_cluster(call.keys, [self._override(), *call.args])
            else:
                reply = await self._redis.run(ADMIT, call.keys, [self._override(), *call.args])
            status = _str(reply[0])
            now_us = int(float(reply[1]))
            self._learn(now_us, local_before)
            if status != "period":
                return self._result(req, status, reply, now_us, daily, monthly)
            guess = now_us / US
        raise AdmissionUnavailable("quota period changed on every attempt")

    async def _admit_on_cluster(self, keys: list[str], args: list[str]) -> list[Any]:
        """The script and the generation read, sent together; the reply as the script gives it
        on one Redis. The generation failing alone costs only the copies (None: not used)."""
        assert self._generation_key is not None
        replies: list[Any] = await asyncio.gather(
            self._redis.run(ADMIT, keys, args),
            self._redis.run(GENERATION, [self._generation_key], ["read"]),
            return_exceptions=True,
        )
        admitted, generation = replies
        if isinstance(admitted, BaseException):
            raise admitted
        reply = list(admitted)
        if _str(reply[0]) == "ok" and not isinstance(generation, BaseException):
            reply.append(generation[0])
        return reply

    def _admit_call(
        self, req: AdmissionRequest, daily: QuotaPeriod | None, monthly: QuotaPeriod | None
    ) -> AdmitCall:
        """The script's keys and arguments for `req` (all but the first argument, the clock
        override), kept on `req` while its quota periods last: the admission request of a key on
        a route is built once (heliox.gateway.admission_step), and so, here, is its command."""
        call = req.backend_memo
        if (
            type(call) is AdmitCall
            and call.owner is self
            and call.daily is daily
            and call.monthly is monthly
        ):
            return call
        call = req.backend_memo = self._build_admit_call(req, daily, monthly)
        return call

    def _build_admit_call(
        self, req: AdmissionRequest, daily: QuotaPeriod | None, monthly: QuotaPeriod | None
    ) -> AdmitCall:
        principal = req.principal
        keys = [self.block_key(principal)]
        args: list[str] = []
        spec = req.limit
        if spec is None:
            args += ["", "", "", "", str(req.cost)]
        else:
            keys.append(self.rate_key(principal, spec.algorithm, req.subject))
            args += [
                "tb" if spec.algorithm == TOKEN_BUCKET else "sw",
                repr(float(spec.rate)),
                str(spec.limit),
                str(spec.window_seconds * US),
                str(req.cost),
            ]
        for quota, period in ((req.daily_quota, daily), (req.monthly_quota, monthly)):
            if quota is None or period is None:
                args += ["", "", ""]
            else:
                keys.append(self.quota_key(principal, period.id))
                args += [str(quota), str(to_us(period.start)), str(to_us(period.end))]
        args += [_STATE_MARGIN_MS, _QUOTA_MARGIN_MS]
        if self._generation_key is not None and not self._cluster:
            keys.append(self._generation_key)
            args.append("1")
        return AdmitCall(self, daily, monthly, keys, args)

    def _result(
        self,
        req: AdmissionRequest,
        status: str,
        reply: list[Any],
        now_us: int,
        daily: QuotaPeriod | None,
        monthly: QuotaPeriod | None,
    ) -> AdmissionResult:
        now = now_us / US
        if status == BLOCKED:
            until_us = int(float(reply[2]))
            spec = req.limit
            return build_result(
                req, False, BLOCKED, spec.limit if spec else 0, 0, 0.0, (until_us - now_us) / US,
                until_us / US, daily, None, monthly, None, now,
            )  # fmt: skip
        limit, remaining = int(reply[2]), int(reply[3])
        reset_after, retry_after = float(reply[4]), float(reply[5])
        dused, mused = int(reply[6]), int(reply[7])
        generation = None
        if status == "ok":
            allowed, reason = True, None
            if len(reply) > 8 and reply[8]:
                generation = reply[8] if isinstance(reply[8], bytes) else _str(reply[8]).encode()
        else:
            allowed, reason = False, status
            period = {DAILY_QUOTA: daily, MONTHLY_QUOTA: monthly}.get(status)
            if period is not None:
                retry_after = (to_us(period.end) - now_us) / US
        return build_result(
            req, allowed, reason, limit, remaining, reset_after, retry_after, None,
            daily, dused, monthly, mused, now, generation,
        )  # fmt: skip

    # --- blocks -------------------------------------------------------------------------------
    async def block(self, subject: str, until: float, info: dict[str, Any]) -> None:
        until_us = str(to_us(until))
        reply = await self._redis.run(
            BLOCK, [self.block_key(subject)], ["set", self._override(), until_us]
        )
        if int(until_us) <= int(float(reply[0])):  # already over: that lifts any block
            await self._index("remove", subject)
            return
        payload = json.dumps(info, default=str, separators=(",", ":"))
        await self._index("add", subject, until_us, payload)

    async def unblock(self, subject: str) -> bool:
        # The block itself first: should the second call fail, the UI lists a lifted block (and a
        # retry clears it) rather than hiding one still in force.
        reply = await self._redis.run(BLOCK, [self.block_key(subject)], ["del", self._override()])
        await self._index("remove", subject)
        return int(reply[1]) == 1

    async def blocked(self) -> list[BlockInfo]:
        reply = await self._index("list")
        out = []
        for i in range(1, len(reply), 3):
            try:
                info = json.loads(_str(reply[i + 2]))
            except ValueError:
                info = {}
            out.append(BlockInfo(_str(reply[i]), float(reply[i + 1]) / US, info))
        return out

    async def _index(
        self, op: str, subject: str = "", until_us: str = "", info: str = ""
    ) -> list[Any]:
        args = [op, self._override(), subject, until_us, info, _INDEX_MARGIN_MS]
        return await self._redis.run(BLOCKS_INDEX, self._index_keys, args)

    # --- usage --------------------------------------------------------------------------------
    async def usage(
        self,
        quota_subject: str,
        *,
        daily_limit: int | None = None,
        monthly_limit: int | None = None,
    ) -> QuotaUsage:
        guess = self._guess()
        tz = self._calendar.tz
        for _ in range(_ATTEMPTS):
            daily, monthly = daily_period(guess, tz), monthly_period(guess, tz)
            keys = [
                self.quota_key(quota_subject, daily.id),
                self.quota_key(quota_subject, monthly.id),
            ]
            args = [self._override()] + [
                str(to_us(t)) for t in (daily.start, daily.end, monthly.start, monthly.end)
            ]
            local_before = self._local_clock()
            reply = await self._redis.run(QUOTA_USAGE, keys, args)
            now_us = int(float(reply[1]))
            self._learn(now_us, local_before)
            if _str(reply[0]) == "ok":
                return QuotaUsage(
                    quota_subject=quota_subject,
                    daily_used=int(reply[2]),
                    daily_limit=daily_limit,
                    daily_period=daily.id,
                    daily_reset=daily.end,
                    monthly_used=int(reply[3]),
                    monthly_limit=monthly_limit,
                    monthly_period=monthly.id,
                    monthly_reset=monthly.end,
                    now=now_us / US,
                )
            guess = now_us / US
        raise AdmissionUnavailable("quota period changed on every attempt")
