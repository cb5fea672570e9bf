"""Lock-out after failed admin authentications from one client address: pure, `now` passed in.

`max_failures` failures in a row are answered normally (401); the one that reaches it locks the
address out for `base_lockout` seconds, and every failure after that (only possible once a lock-out
has ended) doubles the lock-out, up to `max_lockout`. While locked out, every attempt from the
address is refused (429) without its credential being looked at, so guessing costs the attacker
time instead of the gateway work; a success ends the streak. A streak is forgotten `max_lockout`
seconds after its last lock-out (or last failure) ended.

`state/auth_throttle.py` keeps these records in process, or in Redis shared by every instance,
where `auth_failure.lua` repeats `lockout_seconds` with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2**62 seconds is beyond any max_lockout: larger exponents would only overflow the float.
_MAX_DOUBLINGS = 62


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures: int = 5
    base_lockout: float = 1.0
    max_lockout: float = 900.0

    def __post_init__(self) -> None:
        if self.max_failures < 1 or not 0 < self.base_lockout <= self.max_lockout:
            raise ValueError("need max_failures >= 1 and 0 < base_lockout <= max_lockout")


@dataclass(frozen=True, slots=True)
class FailureRecord:
    failures: int  # in a row, from one address
    locked_until: float  # epoch seconds; 0 when never locked
    last_failure: float


def lockout_seconds(failures: int, policy: ThrottlePolicy) -> float:
    """How long the `failures`-th failure in a row locks the address out (0: not at all)."""
    if failures < policy.max_failures:
        return 0.0
    doublings = min(failures - policy.max_failures, _MAX_DOUBLINGS)
    return float(min(policy.max_lockout, policy.base_lockout * 2**doublings))


def locked_for(record: FailureRecord | None, now: float) -> float:
    """Seconds the address stays locked out (0 when it may try)."""
    if record is None or record.locked_until <= now:
        return 0.0
    return record.locked_until - now


def record_failure(
    record: FailureRecord | None, now: float, policy: ThrottlePolicy
) -> FailureRecord:
    """The record after one more failure at `now`."""
    failures = 1 if record is None or forgotten(record, now, policy) else record.failures + 1
    lockout = lockout_seconds(failures, policy)
    return FailureRecord(failures, now + lockout if lockout else 0.0, now)


def forget_at(record: FailureRecord, policy: ThrottlePolicy) -> float:
    """When the record no longer matters: `max_lockout` after its lock-out or last failure."""
    return max(record.locked_until, record.last_failure) + policy.max_lockout


def forgotten(record: FailureRecord, now: float, policy: ThrottlePolicy) -> bool:
    return now >= forget_at(record, policy)
