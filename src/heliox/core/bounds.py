"""The numeric limits every rate-limit setting must stay within, wherever it comes from.

The admin API (schemas), the settings (DEFAULT_RATE_LIMIT_*) and the request path (`clamp_rate`,
for rates stored before MIN_RATE existed) all use these numbers, so a rate that reaches the
arithmetic is always one it can handle:

- `MIN_RATE` is one request per 1000 s (nginx's `limit_req` goes down to 1 request per minute).
  The longest state a token bucket can need is `MAX_BURST / MIN_RATE` ≈ 2.1e12 s; in milliseconds
  (2.1e15) that is still an exact integer in a double (< 2^53) and one Redis's Lua prints without an
  exponent (< 1e17), so every counter gets a finite TTL and every reset time fits in a date.
- `MAX_RATE` is 10^9 requests per second, far above what one key can send; with the longest
  sliding window it gives 8.64e13 requests per window, still exact.
"""

from __future__ import annotations

MIN_RATE = 0.001
MAX_RATE = 1e9
MAX_BURST = 2**31 - 1
MAX_WINDOW_SECONDS = 86_400


def clamp_rate(rate: float) -> float:
    """`rate`, raised to MIN_RATE if below it: what the request path applies to a rate stored
    before the admin API's floor existed (it took any rate above 0), and to a slowed-down rate
    (ABUSE_RATE_MULTIPLIER). The ceiling needs no clamp: MAX_RATE, like the bounds of burst and
    window, is as old as the admin API. NaN, which no API ever accepted, counts as too slow.
    """
    return rate if rate >= MIN_RATE else MIN_RATE
