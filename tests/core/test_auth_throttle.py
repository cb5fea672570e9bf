"""Lock-out arithmetic for failed admin logins: free attempts, doubling, cap, forgetting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from heliox.core.auth_throttle import (
    FailureRecord,
    ThrottlePolicy,
    forgotten,
    locked_for,
    lockout_seconds,
    record_failure,
)

POLICY = ThrottlePolicy(max_failures=5, base_lockout=1.0, max_lockout=900.0)
T0 = 1_795_780_800.0


def test_five_failures_then_a_doubling_lockout_up_to_the_cap() -> None:
    got = [lockout_seconds(n, POLICY) for n in range(1, 17)]
    assert got == [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


def test_a_streak_locks_from_the_fifth_failure_and_is_forgotten_later() -> None:
    record = None
    for i in range(5):
        record = record_failure(record, T0 + i, POLICY)
    assert record is not None and record.failures == 5
    assert locked_for(record, T0 + 4) == 1.0
    assert locked_for(record, T0 + 5) == 0.0
    record = record_failure(record, T0 + 5, POLICY)  # the first failure after the lock-out
    assert (record.failures, locked_for(record, T0 + 5)) == (6, 2.0)
    assert not forgotten(record, T0 + 7 + 899, POLICY)
    assert forgotten(record, T0 + 7 + 900, POLICY)
    assert record_failure(record, T0 + 7 + 900, POLICY).failures == 1


@given(st.integers(min_value=0, max_value=10**9))
def test_any_streak_length_gives_a_finite_capped_lockout(failures: int) -> None:
    assert 0 <= lockout_seconds(failures, POLICY) <= POLICY.max_lockout


def test_no_record_is_never_locked() -> None:
    assert locked_for(None, T0) == 0.0
    assert locked_for(FailureRecord(3, 0.0, T0), T0) == 0.0
