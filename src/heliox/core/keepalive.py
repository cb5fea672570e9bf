"""How long a pooled upstream connection may stay idle, and which failed requests may be sent again.

An upstream closes an idle keep-alive connection after its own timeout (Node.js: 5 s, Go's
net/http and most Python servers similar or shorter). A request the gateway sends on that
connection just as the upstream closes it fails although the upstream is healthy. Two defences:

- close pooled connections before the upstream would: after UPSTREAM_KEEPALIVE_TIMEOUT idle, or
  sooner when the upstream announced a shorter `Keep-Alive: timeout=T` (RFC 9112 leaves the header
  to HTTP/1.0 practice; Node, Apache and others send it). A connection is not reused once it has
  been idle T minus `KEEPALIVE_MARGIN` seconds: the upstream's timer starts when it has written
  the response, a little before the gateway has read it, and its close takes time to arrive;
- send a request once more, on a new connection, when a reused connection failed before any byte
  of the response arrived and the request can be replayed (`may_replay`).
"""

from __future__ import annotations

# Seconds taken off an announced keep-alive timeout (as the setting's default, 4 s, sits 1 s
# below Node's 5 s).
KEEPALIVE_MARGIN = 1.0

# RFC 9110 9.2.2: a client may send these again when the connection failed before the response.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def announced_timeout(value: str) -> float | None:
    """The `timeout=` parameter of a Keep-Alive header value (`timeout=5, max=100`) in seconds,
    or None when there is none or it is not a non-negative number. The first one counts."""
    for part in value.split(","):
        name, eq, number = part.partition("=")
        if eq and name.strip().lower() == "timeout":
            number = number.strip().strip('"')
            if not number.isdigit():  # delta-seconds: digits only (no sign, no fraction)
                return None
            return float(min(int(number), 86_400))
    return None


def idle_limit(setting: float, announced: float | None) -> float:
    """Seconds a connection may stay idle in the pool and still be reused: the setting, or less
    when the upstream announced a shorter timeout (0: never reuse it)."""
    if announced is None:
        return setting
    return max(0.0, min(setting, announced - KEEPALIVE_MARGIN))


def may_replay(method: str, *, body_streamed: bool | None) -> bool:
    """Whether a request whose reused connection failed before any response byte may be sent
    again. `body_streamed`: None when the request has no streamed body (none, or one held in
    memory), else whether any of it has been read for sending — a streamed body cannot be read
    twice. An idempotent method may be repeated (RFC 9110 9.2.2); another only when its body had
    not started, so the upstream cannot have received the whole request."""
    if body_streamed:
        return False
    if method in IDEMPOTENT_METHODS:
        return True
    return body_streamed is False
