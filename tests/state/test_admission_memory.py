"""Memory admission beyond the shared suite: every map stays bounded."""

from __future__ import annotations

from heliox.state.admission import SLIDING_WINDOW, TOKEN_BUCKET, AdmissionRequest, LimitSpec
from heliox.state.admission_memory import ExpiringMap, MemoryAdmission
from tests.support import FakeClock

T0 = 1_795_780_800.0


def test_many_distinct_subjects_stay_within_the_caps() -> None:
    clock = FakeClock(T0)
    b = MemoryAdmission(clock=clock, max_subjects=1000, max_quota_counters=2000, max_blocks=10)
    spec = LimitSpec(TOKEN_BUCKET, 1, 5)
    window = LimitSpec(SLIDING_WINDOW, 1, 1, 10)
    for i in range(100_000):
        clock.now += 0.0001
        s = f"ip:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        b.admit_sync(AdmissionRequest(s, spec if i % 2 else window, daily_quota=10))
    sizes = b.sizes()
    assert sizes["token_buckets"] == 1000
    assert sizes["sliding_windows"] == 1000
    assert sizes["quota_counters"] == 2000
    assert b.evictions == 2 * 49_000 + 98_000


def test_expired_entries_are_dropped_as_writes_pass_them() -> None:
    clock = FakeClock(T0)
    b = MemoryAdmission(clock=clock, max_subjects=10_000)
    spec = LimitSpec(TOKEN_BUCKET, 10, 10)  # one token taken: full again in 0.1 s
    for i in range(500):
        b.admit_sync(AdmissionRequest(f"old:{i}", spec))
    clock.now += 60
    for i in range(500):
        b.admit_sync(AdmissionRequest(f"new:{i}", spec))
    assert b.sizes()["token_buckets"] == 500
    assert b.evictions == 0


def test_an_expired_bucket_equals_a_full_one() -> None:
    clock = FakeClock(T0)
    b = MemoryAdmission(clock=clock)
    req = AdmissionRequest("k:1", LimitSpec(TOKEN_BUCKET, 1, 3))
    for _ in range(3):
        b.admit_sync(req)
    clock.now += 3600
    assert b.admit_sync(req).remaining == 2
    assert b.sizes()["token_buckets"] == 1


def test_expiring_map_get_forgets_expired_entries() -> None:
    m: ExpiringMap[str, int] = ExpiringMap(3)
    m.put("a", 1, expires_us=100, now_us=0)
    m.put("b", 2, expires_us=300, now_us=0)
    assert m.get("a", 99) == 1
    assert m.get("a", 100) is None
    assert len(m) == 1
    for k in "cde":
        m.put(k, 0, expires_us=1000, now_us=200)
    assert len(m) == 3
    assert m.get("b", 200) is None  # the least recently written went first
    assert m.evictions == 1
    assert [k for k, _, _ in m.live(999)] == ["c", "d", "e"]
    assert m.live(1000) == []
