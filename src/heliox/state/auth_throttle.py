"""Failed admin authentications per client address: in process, or in Redis for every instance.

The arithmetic is `heliox.core.auth_throttle`; `lua/auth_failure.lua` repeats it on Redis, where a
lock-out is a key that expires with it, so instances need no shared clock. Keys (prefix P, address
A, braces escaped): `P auth:{A}:f` (failures in a row) and `P auth:{A}:l` (the lock-out), both with
TTLs.

When Redis fails, the in-process records take over (and keep counting) until it answers again: the
throttle fails open to a local one, and authentication itself never fails open. The in-process map
is capped (`max_addresses`, oldest written first out), since addresses are the client's to choose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from heliox.core.auth_throttle import (
    FailureRecord,
    ThrottlePolicy,
    forget_at,
    locked_for,
    lockout_seconds,
    record_failure,
)
from heliox.core.ratelimit import to_us
from heliox.state.admission import AdmissionUnavailable
from heliox.state.admission_memory import ExpiringMap
from heliox.state.admission_redis import LuaScript, RedisScripts

log = logging.getLogger("heliox.auth")

AUTH_FAILURE = LuaScript.load("auth_failure.lua")
AUTH_CHECK = LuaScript.load("auth_check.lua")
DEFAULT_MAX_ADDRESSES = 65_536


@dataclass(frozen=True, slots=True)
class Standing:
    """What the throttle knows of an address before its credential is checked."""

    locked_for: float  # seconds; 0 when it may try
    streak: bool  # it has failures on record (a success clears them)


class AuthThrottle:
    """Per-address failure streaks and lock-outs. `clock` is for tests."""

    def __init__(
        self,
        policy: ThrottlePolicy,
        *,
        redis: Any = None,
        prefix: str = "heliox:",
        clock: Callable[[], float] = time.time,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        on_redis_error: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self._redis = redis
        # The admission store's script runner: EVALSHA, loading the script on NOSCRIPT.
        self._scripts = RedisScripts(redis) if redis is not None else None
        self._prefix = prefix + "auth:"
        self._clock = clock
        self._records: ExpiringMap[str, FailureRecord] = ExpiringMap(max_addresses)
        self._on_redis_error = on_redis_error
        # auth_failure.lua's ARGV: max_failures, base and max lock-out in ms.
        self._script_args = (
            str(policy.max_failures),
            str(round(policy.base_lockout * 1000)),
            str(round(policy.max_lockout * 1000)),
        )

    def __len__(self) -> int:
        return len(self._records)

    # --- the three questions ---------------------------------------------------------------------
    async def standing(self, address: str) -> Standing:
        if self._scripts is not None:
            try:
                left_ms, streak = await self._scripts.run(AUTH_CHECK, self._keys(address), ())
                return Standing(int(left_ms) / 1000, bool(int(streak)))
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)
        now = self._clock()
        record = self._records.get(address, to_us(now))
        return Standing(locked_for(record, now), record is not None)

    async def failed(self, address: str) -> tuple[int, float]:
        """Count a failure; (failures in a row, the lock-out it starts in seconds, 0 for none)."""
        if self._scripts is not None:
            try:
                failures, lock_ms = await self._scripts.run(
                    AUTH_FAILURE, self._keys(address), self._script_args
                )
                return int(failures), int(lock_ms) / 1000
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)
        now = self._clock()
        now_us = to_us(now)
        record = record_failure(self._records.get(address, now_us), now, self.policy)
        self._records.put(address, record, to_us(forget_at(record, self.policy)), now_us)
        return record.failures, lockout_seconds(record.failures, self.policy)

    async def succeeded(self, address: str) -> None:
        """End the address's streak (call only when `standing` said it has one)."""
        self._records.pop(address)
        if self._redis is not None:
            try:
                await self._redis.delete(*self._keys(address))
            except _REDIS_ERRORS as exc:
                self._redis_failed(exc)

    # --- Redis ----------------------------------------------------------------------------------
    def _keys(self, address: str) -> tuple[str, str]:
        tag = address.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        base = f"{self._prefix}{{{tag}}}"
        return base + ":f", base + ":l"

    def _redis_failed(self, exc: BaseException) -> None:
        log.debug("auth throttle: redis unavailable, using the in-process records: %r", exc)
        if self._on_redis_error is not None:
            self._on_redis_error()


# AdmissionUnavailable: what the script runner raises for any of the others.
_REDIS_ERRORS = (AdmissionUnavailable, RedisError, OSError, TimeoutError)
