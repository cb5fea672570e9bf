"""Requests refused before an API key is known: bad keys limited per address, log rows sampled.

A request with a missing or unknown key costs the gateway a lookup and, unchecked, a log row: a
flood of them from one address would be free for the sender and fill the log table. So, per
client address (the same `client_ip` the rate limits use) and per process:

- Missing or unknown keys take a token from a bucket of AUTH_FAILURE_BURST tokens refilled at
  AUTH_FAILURE_RATE per second; with the bucket empty the answer is 429 with Retry-After instead
  of 401. Valid keys never touch it, so an address's good traffic is not slowed by its bad.
- Log rows of requests the gateway refused without a valid key (4xx it answered itself: bad key,
  unknown route, malformed request, public-route rate limit) follow a bucket of the same size per
  address, and REFUSED_LOG_RATE rows per second for the whole process. Rows over either are not
  written but counted (`refused_log_rows_dropped` in /metrics); request metrics count every one.

Both maps are capped (`max_addresses`, least recently written first out): addresses are the
client's to choose. Evicting an address hands it a fresh allowance, which only matters to a
sender already spread over more addresses than the cap, and the process-wide row budget still
holds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from heliox.config import Settings
from heliox.core.ratelimit import TokenBucketState, to_us, token_bucket, token_bucket_ttl_us
from heliox.gateway.exchange import Exchange
from heliox.metrics import Metrics
from heliox.state.admission_memory import ExpiringMap

DEFAULT_MAX_ADDRESSES = 65_536
CLIENT_GONE = 499
# The request log's `refused_by` for the 429 of too many requests without a valid key.
BAD_KEY = "bad_key"


class RefusalGuard:
    __slots__ = (
        "_clock", "_failures", "_log_burst", "_log_rate", "_rows", "_rows_all", "burst",
        "metrics", "rate",
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        self.metrics = metrics
        self.rate = settings.auth_failure_rate
        self.burst = settings.auth_failure_burst
        self._log_rate = settings.refused_log_rate
        self._log_burst = max(1, math.ceil(self._log_rate))
        self._clock = clock
        self._failures: ExpiringMap[str, TokenBucketState] = ExpiringMap(max_addresses)
        self._rows: ExpiringMap[str, TokenBucketState] = ExpiringMap(max_addresses)
        self._rows_all: TokenBucketState | None = None

    def _take(self, bucket: ExpiringMap[str, TokenBucketState], address: str, now_us: int) -> float:
        """Take a token for `address`: 0 when there was one, else seconds until there is."""
        out = token_bucket(bucket.get(address, now_us), self.rate, self.burst, now_us)
        if not out.decision.allowed:
            return max(out.decision.retry_after, 1e-6)
        state = out.state
        bucket.put(
            address, state, now_us + token_bucket_ttl_us(state, self.rate, self.burst), now_us
        )
        return 0.0

    def bad_key(self, address: str) -> int | None:
        """A request with a missing or unknown key: None to answer 401, else the Retry-After
        (whole seconds) of a 429."""
        wait = self._take(self._failures, address, to_us(self._clock()))
        if not wait:
            return None
        self.metrics.count("bad_key_limited")
        return max(1, math.ceil(wait))

    def note_bad_key(self, ex: Exchange, retry: int) -> None:
        """Record on `ex`, for its log row, that the bad-key limit refused it, with the numbers
        (the limit is per client address: AUTH_FAILURE_RATE per second, AUTH_FAILURE_BURST)."""
        ex.refused_by = BAD_KEY
        ex.refusal = json.dumps(
            {"retry_after": retry, "rate": self.rate, "burst": self.burst, "per": "address"},
            separators=(",", ":"),
        )

    def keep_row(self, ex: Exchange) -> bool:
        """Whether to write the log row of a request without a valid key (`ex.key` is None)."""
        status = ex.status
        if status < 400 or status >= 500 or status == CLIENT_GONE or ex.cache_status:
            return True  # served (public route, from cache or upstream), or not a refusal
        if ex.upstream_seconds is not None:
            return True  # the upstream's own answer on a public route
        now_us = to_us(self._clock())
        if self._take(self._rows, ex.client_ip, now_us) or not self._take_global(now_us):
            self.metrics.count("refused_log_rows_dropped")
            return False
        return True

    def _take_global(self, now_us: int) -> bool:
        if self._log_rate <= 0:
            return False
        out = token_bucket(self._rows_all, self._log_rate, self._log_burst, now_us)
        if out.decision.allowed:
            self._rows_all = out.state
        return out.decision.allowed
