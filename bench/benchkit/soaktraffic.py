"""The soak's load: a mix of cached, hot, negative, pass-through and refused requests.

Every request that should reach the limiter takes its API key from a `KeyWalk`, so the first
N such requests use each of the N keys once; the rest of the mix uses fixed keys (a wrong one,
the noisy one). Cached responses come from the example upstream's `/respond/p<n>?size=<bytes>`,
each path with its own fixed size, so the working set of all paths can be made larger than the
cache's cap and eviction is exercised.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from benchkit.soakkeys import SLOW_EVERY, KeySet, KeyWalk


@dataclass
class Tally:
    """What the traffic saw since the last `take`."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def take(self) -> Tally:
        out = Tally(self.statuses, self.latencies, self.errors)
        self.statuses, self.latencies, self.errors = Counter(), [], Counter()
        return out


@dataclass
class Mix:
    keys: KeySet
    walk: KeyWalk
    paths: int
    body_min: int
    body_max: int
    # Paths of the cached route requested at least once, and loaded keys answered 401 (which
    # would mean the gateway's snapshot is missing keys that are in the database).
    cached_seen: bytearray = field(default_factory=bytearray)
    cached_seen_count: int = 0
    unknown_keys: int = 0

    def __post_init__(self) -> None:
        self.cached_seen = bytearray(self.paths)

    def body_size(self, p: int) -> int:
        """Fixed per path, spread evenly over [body_min, body_max]."""
        span = self.body_max - self.body_min + 1
        return self.body_min + (p * 2654435761) % (2**32) % span

    @property
    def noisy_key(self) -> str:
        # A key limited to 1 request/s, used far beyond that: mostly 429s.
        return self.keys.plaintext(min(SLOW_EVERY, self.keys.count) - 1)

    def next(self, rng: random.Random) -> tuple[str, str, bytes, str, int, int]:
        """(method, path, body, key, walked key index or -1, cached path or -1)."""
        p = rng.randrange(self.paths)
        roll = rng.random()
        if roll < 0.04:
            return "GET", f"/g/demo/respond/p{p}", b"", f"hx_wrong_{p}", -1, -1  # 401
        if roll < 0.07:
            return "GET", f"/g/demo/items/{p % 12}", b"", self.noisy_key, -1, -1  # mostly 429
        if roll < 0.10:
            return "GET", f"/g/demo/%2e%2e/p{p}", b"", self.noisy_key, -1, -1  # 400
        index = self.walk.draw()
        key = self.keys.plaintext(index)
        if roll < 0.55:  # cached, one entry per path, sizes spread over the range
            size = self.body_size(p)
            return "GET", f"/g/demo/respond/p{p}?size={size}", b"", key, index, p
        if roll < 0.70:
            return "GET", f"/g/products/items/{p % 12}", b"", key, index, -1  # hot, some 404s
        if roll < 0.80:
            return "GET", f"/g/demo/items/missing-{p}", b"", key, index, -1  # negative cache
        if roll < 0.92:
            query = f"?q={rng.randrange(10**6)}"
            return "GET", f"/g/webhooks/echo/p{p}{query}", b"", key, index, -1  # pass-through
        body = b"x" * rng.randrange(2048)
        return "POST", f"/g/webhooks/echo/p{p}", body, key, index, -1


async def traffic(
    url: str, mix: Mix, concurrency: int, done: Callable[[], bool], tally: Tally
) -> None:
    """`concurrency` clients in a loop until `done()`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while not done():
                method, path, body, key, index, cached = mix.next(rng)
                t0 = time.perf_counter()
                try:
                    async with session.request(
                        method, URL(url + path, encoded=True), data=body or None,
                        headers={"X-API-Key": key},
                    ) as r:  # fmt: skip
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.errors[type(exc).__name__] += 1
                    status = 0
                tally.latencies.append(time.perf_counter() - t0)
                if not status:
                    continue
                tally.statuses[status] += 1
                if index >= 0:
                    if status == 401:
                        mix.unknown_keys += 1
                    else:  # the request went through admission with this key
                        mix.walk.mark(index, time.monotonic())
                if cached >= 0 and not mix.cached_seen[cached]:
                    mix.cached_seen[cached] = 1
                    mix.cached_seen_count += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
