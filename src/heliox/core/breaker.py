"""A circuit breaker for one dependency, and a count of recent events. Pure: callers pass `now`.

Breaker states:

- closed: calls go through; `failures` consecutive failures (errors or timeouts) open it.
- open: calls fail at once, without touching the dependency, until `retry_at`.
- half-open: from `retry_at` on, one probe (run by the caller, in the background) decides:
  success closes the breaker, failure opens it again for twice as long, up to `max_open`.

Requests never probe: they keep failing fast until a probe has succeeded, so an outage costs a
request nothing. As Envoy's outlier detection (ejection after consecutive errors, for a time that
grows with each ejection up to `max_ejection_time`), with shorter times: the probe is cheap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    threshold: int = 5  # consecutive failures that open the breaker
    base_open: float = 1.0  # seconds open after the first trip
    max_open: float = 30.0  # the longest it stays open before a probe
    # Read on every call: True while calls may go through (one attribute read when healthy).
    closed: bool = True
    state: str = CLOSED
    consecutive: int = 0
    open_for: float = 0.0  # how long the current open interval lasts
    retry_at: float = 0.0
    trips: int = 0  # times it opened since it was last closed by a success

    def success(self, now: float) -> None:
        """A call (or probe) succeeded: closed, with the interval back at its start."""
        del now
        self.consecutive = 0
        self.trips = 0
        self.open_for = 0.0
        self.state = CLOSED
        self.closed = True

    def ok(self) -> None:
        """A call succeeded while closed: the run of failures is broken. (While open, only a
        probe closes the breaker: a call that was in flight when it opened proves little.)"""
        if self.state == CLOSED:
            self.consecutive = 0

    def failure(self, now: float) -> bool:
        """A call (or probe) failed; True when this failure opened the breaker."""
        if self.state == CLOSED:
            self.consecutive += 1
            if self.consecutive < self.threshold:
                return False
        elif self.state == OPEN:
            return False  # calls that were in flight when it opened: already counted
        self.trips += 1
        self.open_for = min(self.max_open, self.base_open * 2 ** (self.trips - 1))
        self.state = OPEN
        self.closed = False
        self.retry_at = now + self.open_for
        return True

    def probe_due(self, now: float) -> bool:
        """True when the open interval is over: the caller probes now (state: half-open)."""
        if self.state == OPEN and now >= self.retry_at:
            self.state = HALF_OPEN
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until the next probe is due (0 when it is)."""
        return max(0.0, self.retry_at - now) if self.state == OPEN else 0.0


@dataclass(slots=True)
class RecentEvents:
    """How many events happened in the last `window` seconds, in per-second buckets (bounded:
    at most `window` + 1 buckets, whatever the rate)."""

    window: int = 60
    _buckets: deque[list[int]] = field(default_factory=deque)  # [second, count], oldest first

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += n
        else:
            buckets.append([second, n])
            self._trim(second)

    def count(self, now: float) -> int:
        self._trim(int(now))
        return sum(c for _, c in self._buckets)

    def _trim(self, second: int) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self.window:
            buckets.popleft()
