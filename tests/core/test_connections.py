"""Which client connections a worker closes, and its connection cap (heliox.core.connections)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from heliox.core.connections import (
    DEFAULT_CEILING,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MIN_CEILING,
    OVER_LIMIT,
    ClientConnection,
    ConnectionPolicy,
    connection_limits,
    reserved_descriptors,
    to_close,
)

POLICY = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=1000)
NOW = 10_000.0


def conn(
    key: int, seen_ago: float, *, busy: bool = False, ended_ago: float | None = None
) -> ClientConnection:
    ended = None if ended_ago is None else NOW - ended_ago
    return ClientConnection(key, NOW - seen_ago, busy, ended)


def test_a_connection_without_a_request_closes_at_the_header_timeout_from_accept() -> None:
    assert to_close([conn(1, 29.9)], NOW, POLICY) == []
    assert to_close([conn(1, 30)], NOW, POLICY) == [(1, HEADER_TIMEOUT)]


def test_an_idle_connection_closes_at_the_idle_timeout_from_its_last_request() -> None:
    # Accepted long ago, but its last request ended recently: idle time counts from that end.
    assert to_close([conn(1, 500, ended_ago=74.9)], NOW, POLICY) == []
    assert to_close([conn(1, 500, ended_ago=75)], NOW, POLICY) == [(1, IDLE_TIMEOUT)]


def test_a_request_in_progress_is_never_closed() -> None:
    policy = ConnectionPolicy(header_timeout=1, idle_timeout=1, max_connections=0)
    assert (
        to_close(
            [conn(1, 10_000, busy=True), conn(2, 10_000, busy=True, ended_ago=5_000)], NOW, policy
        )
        == []
    )


def test_over_the_cap_the_newest_without_a_request_go_first_then_the_longest_idle() -> None:
    policy = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=3)
    conns = [
        conn(1, 5),  # no request yet, older
        conn(2, 1),  # no request yet, newest
        conn(3, 60, ended_ago=50),  # served, idle longest
        conn(4, 60, ended_ago=2),  # served, idle briefly
        conn(5, 60, busy=True),  # in progress: counts, never closed
        conn(6, 3),
    ]
    assert to_close(conns, NOW, policy) == [(2, OVER_LIMIT), (6, OVER_LIMIT), (1, OVER_LIMIT)]
    policy = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=1)
    closed = [key for key, _ in to_close(conns, NOW, policy)]
    assert closed == [2, 6, 1, 3, 4]


def test_timed_out_connections_count_towards_the_cap_no_more() -> None:
    policy = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=2)
    conns = [conn(1, 40), conn(2, 100, ended_ago=80), conn(3, 1), conn(4, 2)]
    assert to_close(conns, NOW, policy) == [(1, HEADER_TIMEOUT), (2, IDLE_TIMEOUT)]


@given(
    st.lists(
        st.tuples(st.floats(0, 200), st.booleans(), st.one_of(st.none(), st.floats(0, 200))),
        max_size=60,
    ),
    st.integers(0, 80),
)
def test_never_busy_and_at_most_the_cap_stays_open(
    specs: list[tuple[float, bool, float | None]], cap: int
) -> None:
    policy = ConnectionPolicy(header_timeout=30, idle_timeout=75, max_connections=cap)
    conns = [
        conn(i, seen, busy=busy, ended_ago=ended) for i, (seen, busy, ended) in enumerate(specs)
    ]
    decisions = to_close(conns, NOW, policy)
    closing = dict(decisions)
    assert len(closing) == len(decisions), "a connection closed twice"
    busy = {c.key for c in conns if c.busy}
    assert not busy & closing.keys()
    assert len(conns) - len(closing) <= max(cap, len(busy))


def test_limits_keep_the_pools_descriptors_and_leave_room_above_the_cap() -> None:
    reserved = reserved_descriptors(10, 64)
    assert reserved == 20 + 64 + 64
    # The usual `ulimit -n` of 1024: accept pauses before the descriptors run out, with one
    # upstream connection's worth kept for every client connection.
    limits = connection_limits(0, 1024, reserved)
    assert limits.ceiling == (1024 - reserved) // 2
    assert limits.cap < limits.ceiling
    # Plenty of descriptors: granian's own default ceiling, the cap below it.
    limits = connection_limits(0, 1_000_000, reserved)
    assert limits.ceiling == DEFAULT_CEILING
    assert DEFAULT_CEILING * 3 // 4 < limits.cap < DEFAULT_CEILING
    # A configured cap is kept when the descriptors allow, with room above it.
    limits = connection_limits(20, 1_000_000, reserved)
    assert (limits.cap, limits.ceiling) == (20, DEFAULT_CEILING)
    limits = connection_limits(50_000, 1_000_000, reserved)
    assert limits.cap == 50_000 and limits.ceiling > 50_000
    # ... and lowered when they do not.
    limits = connection_limits(5_000, 1024, reserved)
    assert limits.cap < limits.ceiling <= (1024 - reserved) // 2
    # Even a tiny limit leaves a worker something to serve with.
    limits = connection_limits(0, 100, reserved)
    assert limits.ceiling == MIN_CEILING and 1 <= limits.cap < MIN_CEILING
