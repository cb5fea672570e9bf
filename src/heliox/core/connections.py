"""Client connections of one gateway worker: which to close, and how many it may hold.

granian (2.8) starts its header read timeout only at a connection's first byte, so a connection
that never sends one stays open for good; it times an idle keep-alive connection with that same
timer; and its only connection limit (`backpressure`) makes the worker stop accepting, for every
client at once. The connection guard (`heliox.connection_guard`) closes such connections from
inside the worker; this module is its arithmetic, with the clock passed in.

The policy is nginx's, with Envoy's answer to a full listener:

- a connection on which no request has arrived yet is closed `header_timeout` after it was
  accepted (nginx's client_header_timeout also starts at accept);
- a connection with no request in progress is closed `idle_timeout` after its last request
  ended (nginx's keepalive_timeout); the head of its next request counts as idle time;
- a connection with a request in progress is never closed here: the request's own timeouts
  (body, upstream) bound it;
- above `max_connections`, connections with no request in progress are closed at once: first
  the newest of those that have not sent a whole request yet, then the longest idle (Envoy
  closes connections over a listener's limit right after accepting them; nginx, out of
  connections, closes idle ones to make room).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HEADER_TIMEOUT = "header_timeout"
IDLE_TIMEOUT = "idle_timeout"
OVER_LIMIT = "over_limit"

# granian's own default for `backpressure` (backlog 2048 over one worker): the ceiling on open
# client connections per worker unless a larger cap is asked for.
DEFAULT_CEILING = 2048
MIN_CEILING = 32
# Descriptors a worker keeps for itself besides its pools: listener, event loop, logs, files.
SPARE_DESCRIPTORS = 64


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    header_timeout: float
    idle_timeout: float
    max_connections: int


@dataclass(frozen=True, slots=True)
class ClientConnection:
    key: int  # what the caller knows the connection by (the socket's inode)
    seen_at: float  # when it was first seen open: at most one check after it was accepted
    busy: bool  # a request is in progress on it
    last_request_end: float | None  # when its last request ended; None: none has arrived yet


def to_close(
    connections: Iterable[ClientConnection], now: float, policy: ConnectionPolicy
) -> list[tuple[int, str]]:
    """(key, reason) of each connection to close now; the reasons are the constants above."""
    closing: list[tuple[int, str]] = []
    idle: list[ClientConnection] = []
    still_open = 0
    for conn in connections:
        if conn.busy:
            still_open += 1
            continue
        if conn.last_request_end is None:
            if now - conn.seen_at >= policy.header_timeout:
                closing.append((conn.key, HEADER_TIMEOUT))
                continue
        elif now - conn.last_request_end >= policy.idle_timeout:
            closing.append((conn.key, IDLE_TIMEOUT))
            continue
        still_open += 1
        idle.append(conn)
    excess = still_open - policy.max_connections
    if excess > 0:
        idle.sort(key=_shed_order)
        closing.extend((conn.key, OVER_LIMIT) for conn in idle[:excess])
    return closing


def _shed_order(conn: ClientConnection) -> tuple[int, float]:
    # Those without a request first, newest first; then the served ones, longest idle first.
    if conn.last_request_end is None:
        return (0, -conn.seen_at)
    return (1, conn.last_request_end)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    cap: int  # idle connections above this are closed (the guard)
    ceiling: int  # above this the worker stops accepting (granian's `backpressure`)


def reserved_descriptors(database_pool_size: int, redis_pool_size: int) -> int:
    """Descriptors a worker needs besides client connections and the upstream connections they
    lead to: its pools (the database pool may overflow by as many again) and a spare for
    everything else."""
    return 2 * database_pool_size + redis_pool_size + SPARE_DESCRIPTORS


def connection_limits(configured: int, open_files: int, reserved: int) -> ConnectionLimits:
    """The cap on client connections per worker and the ceiling above which it stops accepting.

    `configured` is CLIENT_MAX_CONNECTIONS (0: derive it), `open_files` the worker's open-file
    limit. The ceiling keeps client connections from using the descriptors the pools need (out
    of descriptors, accepting fails for everyone). Upstream pools are per route, so what bounds
    their connections is the client connections themselves: each may hold one upstream
    connection, in use or kept alive in a pool, hence half of what is left. The gap between cap
    and ceiling is room for new connections to arrive between two checks of the guard.
    """
    room = max((open_files - reserved) // 2, MIN_CEILING)
    wanted = configured + _headroom(configured) if configured else 0
    ceiling = min(room, max(DEFAULT_CEILING, wanted))
    if configured and wanted <= ceiling:
        return ConnectionLimits(configured, ceiling)
    return ConnectionLimits(max(ceiling - _headroom(ceiling), 1), ceiling)


def _headroom(n: int) -> int:
    return max(n // 8, 16)
